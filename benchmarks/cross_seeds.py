"""The cross-encoder's training-seed spread, the rest of the pipeline fixed (teacher, student, data).

    python benchmarks/cross_seeds.py --seeds 1 2      # in a scratch clone with cross.enabled: true

For each seed it runs the `cross` and `evaluate` stages outside DVC with `seed` set in
params.yaml (the seed fixes the cross-encoder's init, batch order and list draws; the teacher and
the student stay those of the checkout), and prints the re-ranking row of metrics/eval.json
beside the teacher re-ranking the same lists. It overwrites models/cross.pt, metrics/ and
params.yaml's seed (restored at the end): run it in a clone you can throw away.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

PARAMS = Path("params.yaml")


def run_seed(seed: int) -> dict[str, float]:
    params = yaml.safe_load(PARAMS.read_text())
    params["seed"] = seed
    PARAMS.write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("cross", "evaluate"):
        subprocess.run([sys.executable, "-m", f"stages.{stage}"], check=True)
    ev = json.loads(Path("metrics/eval.json").read_text())
    row, versus = ev["cross_rerank"]["fold0"], ev["cross_rerank"]["vs_teacher_rerank"]
    return {"seed": seed, "cross_rerank_rsum": row["rsum"], "rsum_difference": versus["rsum_difference"],
            "rsum_difference_interval_95": versus["rsum_difference_interval_95"],
            "family_r1": row["within_family"]["t2i_family_r1"],
            "family_r1_difference": versus["t2i_family_r1_difference"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", required=True)
    args = ap.parse_args()
    if not yaml.safe_load(PARAMS.read_text())["cross"]["enabled"]:
        sys.exit("params.yaml: cross.enabled is false (run it where the cross-encoder trains)")
    original = PARAMS.read_text()
    try:
        for seed in args.seeds:
            print(json.dumps(run_seed(seed)), flush=True)
    finally:
        PARAMS.write_text(original)


if __name__ == "__main__":
    main()
