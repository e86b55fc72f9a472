"""Spread over training seeds: every learned row re-trained on the same data with `seed` = each
of --seeds (data.seed, hence data/ and features/, stays), summarised into metrics/seeds.json.

    python scripts/seed_spread.py --seeds 0 1 2     # about 17 min per new seed on 2 CPU cores
    python scripts/seed_spread.py --seeds 0 1 2 --set data.family_size=1 --out metrics/seeds_family1.json

Each seed is one DVC experiment, ``dvc exp run -n seed-<s> -S seed=<s> [-S <--set>...] evaluate``
(teacher, both students, index, evaluation; the latency stages are not needed), so the runs are
also in ``dvc exp show`` and, as parent runs named ``seed-<s>``, in ``mlflow ui``. A seed already
computed (seed 0 after ``dvc repro``) is restored from the run cache in seconds. On the scenes
data each seed's models also get the foil test of benchmarks/binding_probe.py (a caption against
its verified foil with its own image; text-only control). After the last seed the workspace is
returned to its committed params and outputs (``git checkout`` of params.yaml, dvc.lock and the
metrics / plots / inputs folders, then ``dvc checkout``), so the script refuses to start with
uncommitted changes to those.

--out: the seeds, and per headline figure (aladin.evaluation.protocols.headline_metrics: 5K /
1K rsum of every row, the rsum ratios, within-family R@1, text->image recall vs the oracle; plus
`<model>_foil_accuracy`) its mean, sample standard deviation (ddof 1), min, max and the value of
each seed, and the `--set` overrides it was run with.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from aladin.evaluation.protocols import headline_metrics
from aladin.io import write_json

OUT, EVAL, SCENES = Path("metrics/seeds.json"), Path("metrics/eval.json"), Path("data/scenes.jsonl")
PIPELINE_FILES = ("params.yaml", "dvc.lock", "metrics", "plots", "inputs")     # what `dvc exp run` rewrites


def run(*cmd: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def foil_figures() -> dict[str, float]:
    """Foil accuracy of every model in the workspace (benchmarks/binding_probe.py); {} off the scenes data."""
    if not SCENES.is_file():
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "binding.json"
        run(sys.executable, "benchmarks/binding_probe.py", "--out", str(out))
        accuracy = json.loads(out.read_text())["foils"]["accuracy"]
    return {f"{name}_foil_accuracy": acc["all"] for name, acc in accuracy.items()}


def seed_figures(seed: int, overrides: list[str]) -> dict[str, float]:
    """Run (or restore) the pipeline up to `evaluate` with this training seed; its headline figures."""
    name = "-".join([f"seed-{seed}", *(o.replace(".", "_").replace("=", "-") for o in overrides)])
    sets = [arg for o in [f"seed={seed}", *overrides] for arg in ("-S", o)]
    print(f"seed {seed}: dvc exp run -n {name} {' '.join(sets)} evaluate", flush=True)
    run(sys.executable, "-m", "dvc", "exp", "run", "-n", name, *sets, "evaluate")
    return {**headline_metrics(json.loads(EVAL.read_text())), **foil_figures()}


def summarise(per_seed: dict[int, dict[str, float]], overrides: list[str]) -> dict:
    keys = sorted(set.intersection(*(set(v) for v in per_seed.values())))
    out = {"seeds": sorted(per_seed), "n_seeds": len(per_seed), "overrides": overrides, "figures": {}}
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
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a params.yaml override for every seed (dvc exp run -S), e.g. data.family_size=1")
    p.add_argument("--out", type=Path, default=OUT, help=f"the summary (default {OUT})")
    a = p.parse_args()
    if any("=" not in o or o.startswith("seed=") for o in a.set):
        sys.exit("--set: give KEY=VALUE params overrides other than seed")
    if len(set(a.seeds)) < 2:
        sys.exit("--seeds: give at least two distinct seeds (a spread needs them)")
    if run("git", "status", "--porcelain", "--untracked-files=no", "--", *PIPELINE_FILES).strip():
        sys.exit(f"uncommitted changes to {', '.join(PIPELINE_FILES)}: commit or stash them first (the script "
                 "restores their committed state at the end)")
    try:
        per_seed = {s: seed_figures(s, a.set) for s in dict.fromkeys(a.seeds)}
    finally:
        run("git", "checkout", "--", *PIPELINE_FILES)
        restore = subprocess.run([sys.executable, "-m", "dvc", "checkout", "--force"], capture_output=True, text=True)
        if restore.returncode:       # the figures are computed: report, and still write them below
            print(f"warning: dvc checkout --force failed ({restore.returncode}); restore the workspace's "
                  f"outputs by hand:\n{restore.stderr[-2000:]}", file=sys.stderr)
    summary = summarise(per_seed, a.set)
    write_json(a.out, summary)
    for key in ("teacher_5k_rsum", "student_5k_rsum", "student_triplet_5k_rsum", "two_stage_5k_rsum",
                "student_rsum_vs_teacher", "student_family_r1", "student_foil_accuracy"):
        if key in summary["figures"]:
            f = summary["figures"][key]
            print(f"{key:28s} {f['mean']:8.3f} +- {f['std']:.3f}  ({', '.join(f'{v:.3f}' for v in f['per_seed'].values())})")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
