"""Spread over training seeds: every learned row re-trained on the same data with `seed` = each
of --seeds (data.seed, hence data/ and features/, stays), summarised into metrics/seeds.json.

    python scripts/seed_spread.py --seeds 0 1 2     # about 17 min per new seed on 2 CPU cores

Each seed is one DVC experiment, ``dvc exp run -n seed-<s> -S seed=<s> evaluate`` (teacher,
both students, index, evaluation; the latency stages are not needed), so the runs are also in
``dvc exp show`` and, as parent runs named ``seed-<s>``, in ``mlflow ui``. A seed already
computed (seed 0 after ``dvc repro``) is restored from the run cache in seconds. After the last
seed the workspace is returned to its committed params and outputs (``git checkout`` of
params.yaml, dvc.lock and the metrics / plots / inputs folders, then ``dvc checkout``), so the
script refuses to start with uncommitted changes to those.

metrics/seeds.json: the seeds, and per headline figure (aladin.evaluation.protocols.headline_metrics: 5K /
1K rsum of every row, the rsum ratios, within-family R@1, text->image recall vs the oracle) its
mean, sample standard deviation (ddof 1), min, max and the value of each seed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from aladin.evaluation.protocols import headline_metrics
from aladin.io import write_json

OUT, EVAL = Path("metrics/seeds.json"), Path("metrics/eval.json")
PIPELINE_FILES = ("params.yaml", "dvc.lock", "metrics", "plots", "inputs")     # what `dvc exp run` rewrites


def run(*cmd: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def seed_figures(seed: int) -> dict[str, float]:
    """Run (or restore) the pipeline up to `evaluate` with this training seed; its headline figures."""
    print(f"seed {seed}: dvc exp run -n seed-{seed} -S seed={seed} evaluate", flush=True)
    run(sys.executable, "-m", "dvc", "exp", "run", "-n", f"seed-{seed}", "-S", f"seed={seed}", "evaluate")
    return headline_metrics(json.loads(EVAL.read_text()))


def summarise(per_seed: dict[int, dict[str, float]]) -> dict:
    keys = sorted(set.intersection(*(set(v) for v in per_seed.values())))
    out = {"seeds": sorted(per_seed), "n_seeds": len(per_seed), "figures": {}}
    for key in keys:
        values = np.array([per_seed[s][key] for s in sorted(per_seed)], dtype=np.float64)
        out["figures"][key] = {"mean": float(values.mean()),
                               "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                               "min": float(values.min()), "max": float(values.max()),
                               "per_seed": {str(s): float(v) for s, v in zip(sorted(per_seed), values)}}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a = p.parse_args()
    if len(set(a.seeds)) < 2:
        sys.exit("--seeds: give at least two distinct seeds (a spread needs them)")
    if run("git", "status", "--porcelain", "--untracked-files=no", "--", *PIPELINE_FILES).strip():
        sys.exit(f"uncommitted changes to {', '.join(PIPELINE_FILES)}: commit or stash them first (the script "
                 "restores their committed state at the end)")
    try:
        per_seed = {s: seed_figures(s) for s in dict.fromkeys(a.seeds)}
    finally:
        run("git", "checkout", "--", *PIPELINE_FILES)
        run(sys.executable, "-m", "dvc", "checkout", "--force")
    summary = summarise(per_seed)
    write_json(OUT, summary)
    for key in ("teacher_5k_rsum", "student_5k_rsum", "student_triplet_5k_rsum", "two_stage_5k_rsum",
                "student_rsum_vs_teacher"):
        if key in summary["figures"]:
            f = summary["figures"][key]
            print(f"{key:28s} {f['mean']:8.3f} +- {f['std']:.3f}  ({', '.join(f'{v:.3f}' for v in f['per_seed'].values())})")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
