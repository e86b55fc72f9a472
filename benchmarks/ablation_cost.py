"""The cost of a `distill.*` ablation: `dvc exp run -S distill.temperature=...` timed side by side
in reproduced checkouts of two commits (e.g. before and after a pipeline restructuring).

    python benchmarks/ablation_cost.py /path/to/old/checkout /path/to/new/checkout

Each checkout must have run `dvc repro` (so only what the parameter touches re-runs) and have no
uncommitted changes to tracked files. Prints, per checkout, the wall time, the CPU time of the
child processes (user + system: what a slower machine of the same kind stretches) and the stages
that ran, then each ratio to the first checkout. Afterwards each checkout is put back as it was:
the experiment removed (`dvc exp remove`), tracked files and DVC outputs restored.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path


def dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True,
                          env={**os.environ, "DVC_NO_ANALYTICS": "1"})


def require_clean(repo: Path) -> None:
    changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                             capture_output=True, text=True, check=True).stdout.strip()
    if changed:
        sys.exit(f"{repo}: uncommitted changes to tracked files (commit or stash them first):\n{changed}")


def timed_experiment(repo: Path, value: str, name: str) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = dvc(repo, "exp", "run", "-n", name, "-S", f"distill.temperature={value}")
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    dvc(repo, "exp", "remove", name)
    subprocess.run(["git", "checkout", "-q", "--", "."], cwd=repo, check=True)   # params.yaml, dvc.lock, metrics
    dvc(repo, "checkout", "-q")
    if proc.returncode != 0:
        sys.exit(f"{repo}: dvc exp run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"repo": str(repo), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "stages": re.findall(r"Running stage '([^']+)'", proc.stdout)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("repos", nargs="+", type=Path)
    p.add_argument("--value", default="0.05", help="the distill.temperature of the ablation")
    a = p.parse_args()
    for r in a.repos:
        require_clean(r.resolve())
    rows = [timed_experiment(r.resolve(), a.value, f"ablation-cost-{i}") for i, r in enumerate(a.repos)]
    for r in rows:
        r["wall_vs_first"] = round(r["wall_s"] / rows[0]["wall_s"], 3)
        r["cpu_vs_first"] = round(r["cpu_s"] / rows[0]["cpu_s"], 3)
        print(json.dumps(r))


if __name__ == "__main__":
    main()
