"""The cost of the pipeline, timed side by side in checkouts of two commits (e.g. before and after a
pipeline restructuring), one after the other on this machine.

    python benchmarks/ablation_cost.py /path/to/old /path/to/new            # a distill.* ablation
    python benchmarks/ablation_cost.py --full /path/to/old /path/to/new     # the whole `dvc repro`

Ablation (default): times `dvc exp run -S distill.temperature=...`. Each checkout must have run
`dvc repro` (so only what the parameter touches re-runs) and have no uncommitted changes to tracked
files; afterwards it is put back as it was (experiment removed, tracked files and DVC outputs
restored). `--full`: times `dvc repro -f` (every stage, nothing reused) and leaves its results in
the workspace; commit or discard them before timing an ablation there.

Prints, per checkout, the wall time, the CPU time of the child processes (user + system: what a
slower machine of the same kind stretches), the wall and CPU time of each stage that ran, then each
ratio to the first checkout. `--out FILE` also writes the rows as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

STAGE_LINE = "Running stage '"


def checkout_env(repo: Path) -> dict:
    # Each checkout imports its own `aladin`, even where another one is installed in editable mode.
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(repo)}


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` and of its children it has waited for (a DVC stage
    is such a child once DVC starts the next one); readable until `pid` is reaped."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")     # utime stime cutime cstime


def dvc_timed(repo: Path, *args: str) -> dict:
    """Run dvc in `repo`; note the wall clock and CPU time at each "Running stage" line, so each stage
    is charged what ran from its start to the next one (DVC's own hashing around it included)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "dvc", *args], cwd=repo, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=checkout_env(repo))
    marks: list[tuple[str, float, float]] = []          # (stage, wall, cpu) at its start
    tail: list[str] = []
    for line in proc.stdout:
        if line.startswith(STAGE_LINE):
            marks.append((line[len(STAGE_LINE):].split("'")[0], time.perf_counter() - t0, tree_cpu_s(proc.pid)))
        tail = (tail + [line])[-40:]
    end_cpu = tree_cpu_s(proc.pid)                       # output closed: dvc has exited, not yet reaped
    proc.wait()
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"{repo}: dvc {' '.join(args)} failed:\n{''.join(tail)}")
    ends = [(w, c) for _, w, c in marks[1:]] + [(wall, end_cpu)]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"repo": str(repo), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "stage_wall_s": {name: round(w1 - w0, 1) for (name, w0, _), (w1, _) in zip(marks, ends)},
            "stage_cpu_s": {name: round(c1 - c0, 1) for (name, _, c0), (_, c1) in zip(marks, ends)}}


def require_clean(repo: Path) -> None:
    changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                             capture_output=True, text=True, check=True).stdout.strip()
    if changed:
        sys.exit(f"{repo}: uncommitted changes to tracked files (commit or stash them first):\n{changed}")


def timed_experiment(repo: Path, value: str, name: str) -> dict:
    row = dvc_timed(repo, "exp", "run", "-n", name, "-S", f"distill.temperature={value}")
    subprocess.run([sys.executable, "-m", "dvc", "exp", "remove", name], cwd=repo, capture_output=True,
                   env=checkout_env(repo))
    subprocess.run(["git", "checkout", "-q", "--", "."], cwd=repo, check=True)   # params.yaml, dvc.lock, metrics
    subprocess.run([sys.executable, "-m", "dvc", "checkout", "-q"], cwd=repo, check=True, env=checkout_env(repo))
    if "distill" not in row["stage_wall_s"]:
        sys.exit(f"{repo}: distill did not run (DVC restored it from its run cache); pass a --value not run before")
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("repos", nargs="+", type=Path)
    p.add_argument("--value", help="the distill.temperature of the ablation (default: 0.05 plus under "
                   "1e-4 from the clock, a value not run before, so that DVC's run cache cannot restore "
                   "the stages instead of running them)")
    p.add_argument("--full", action="store_true", help="time `dvc repro -f` instead of an ablation")
    p.add_argument("--out", type=Path, help="also write the rows to this JSON file")
    a = p.parse_args()
    repos = [r.resolve() for r in a.repos]
    value = a.value or f"{0.05 + (time.time_ns() // 10**9 % 10**4) * 1e-8:.8f}"
    if a.full:
        rows = [dvc_timed(r, "repro", "-f") for r in repos]
    else:
        for r in repos:
            require_clean(r)
        rows = [{**timed_experiment(r, value, f"ablation-cost-{i}"), "temperature": value}
                for i, r in enumerate(repos)]
    for r in rows:
        r["wall_vs_first"] = round(r["wall_s"] / rows[0]["wall_s"], 3)
        r["cpu_vs_first"] = round(r["cpu_s"] / rows[0]["cpu_s"], 3)
        print(json.dumps(r), flush=True)
    if a.out:
        a.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
