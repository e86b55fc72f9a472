"""The cross-encoder's training-seed spread, the rest of the pipeline fixed (teacher, student, data).

    python benchmarks/cross_seeds.py --seeds 1 2      # in a scratch clone, after `dvc repro`
    python benchmarks/cross_seeds.py --seeds 0 --set cross.model.residual=false   # the pure fusion

For each seed it runs the `cross` and `evaluate` stages outside DVC with `seed` (and any `--set`
key) set in params.yaml (the seed fixes the cross-encoder's init, batch order and list draws; the
teacher and the student stay those of the checkout), and prints the re-ranking row of
metrics/eval.json beside the teacher re-ranking the same lists, and the exhaustive row (fold 0,
sampled queries: the sample follows the seed too) with its interval. It overwrites models/cross.pt, metrics/ and params.yaml
(restored at the end): run it in a clone you can throw away.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

PARAMS = Path("params.yaml")


def set_key(params: dict[str, Any], assignment: str) -> None:
    """Apply one ``dotted.key=value`` (value read as YAML) to `params`; the key must exist."""
    key, sep, value = assignment.partition("=")
    *parents, leaf = key.split(".")
    node = params
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if not sep or not isinstance(node, dict) or leaf not in node:
        sys.exit(f"--set {assignment!r}: expected KEY=VALUE with KEY a key of params.yaml")
    node[leaf] = yaml.safe_load(value)


def run_seed(seed: int, assignments: list[str]) -> dict[str, Any]:
    params = yaml.safe_load(PARAMS.read_text())
    params["seed"] = seed
    for assignment in assignments:
        set_key(params, assignment)
    PARAMS.write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("cross", "evaluate"):
        subprocess.run([sys.executable, "-m", f"stages.{stage}"], check=True)
    ev = json.loads(Path("metrics/eval.json").read_text())
    row, versus = ev["cross_rerank"]["fold0"], ev["cross_rerank"]["vs_teacher_rerank"]
    exhaustive = ev["cross_encoder"]["fold0_sampled"]
    return {"seed": seed, "set": assignments, "cross_rerank_rsum": row["rsum"],
            "rsum_difference": versus["rsum_difference"],
            "rsum_difference_interval_95": versus["rsum_difference_interval_95"],
            "family_r1": row["within_family"]["t2i_family_r1"],
            "family_r1_difference": versus["t2i_family_r1_difference"],
            "exhaustive_rsum": exhaustive["rsum"], "exhaustive_rsum_interval_95": exhaustive["interval_95"]["rsum"],
            "exhaustive_queries": [exhaustive["t2i_queries"], exhaustive["i2t_queries"]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", required=True)
    ap.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                    help="a params.yaml key for every seed's run, e.g. cross.model.residual=false")
    args = ap.parse_args()
    if not yaml.safe_load(PARAMS.read_text())["cross"]["enabled"]:
        sys.exit("params.yaml: cross.enabled is false (run it where the cross-encoder trains)")
    original = PARAMS.read_text()
    try:
        for seed in args.seeds:
            print(json.dumps(run_seed(seed, args.assignments)), flush=True)
    finally:
        PARAMS.write_text(original)


if __name__ == "__main__":
    main()
