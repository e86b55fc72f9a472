"""End to end: the real DVC pipeline on tiny data in a temporary git repo, then an ablation.

Runs `dvc repro` (every stage of dvc.yaml), then two `dvc exp run -S distill.temperature=...`
experiments, and checks that `dvc exp show` lists both with different student metrics, that
each is an MLflow run, and that the teacher stage was not re-run by the ablation.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# Every size shrunk so that each stage takes seconds; the structure of params.yaml is kept.
TINY = {
    "data": {"n_train": 24, "n_val": 8, "n_test": 8, "image_size": 64, "family_size": 4, "workers": 1},
    "features": {"image_size": 64, "batch_size": 16, "num_workers": 0, "device": "cpu"},
    "teacher": {"optim": {"epochs": 2, "batch_size": 16, "lr_decay_epochs": []}, "device": "cpu", "threads": 1},
    "distill": {"optim": {"epochs": 2, "batch_size": 16}, "device": "cpu", "threads": 1},
    "cross": {"enabled": True, "optim": {"epochs": 1, "batch_size": 8}, "select_images": 8, "eval_images": 8,
              "eval_text_queries": 8, "eval_image_queries": 4, "device": "cpu", "threads": 1},
    "index": {"nlist": 2, "nprobe": 1, "pq_m": 8, "device": "cpu"},
    "evaluate": {"rerank_k": 10, "rerank_depths": [10], "cross_fold_images": 8, "cross_text_queries": 8,
                 "cross_image_queries": 4, "device": "cpu", "threads": 1},
    "latency": {"n_queries": 3, "n_image_queries": 2, "teacher_queries": 2, "warmup": 1,
                "throughput_queries": 8, "batch_size": 4, "sizes": [8, 64], "teacher_sizes": [8, 64],
                "image_query_sizes": [8, 64], "scaling_nlist": 4, "scaling_nprobe": 2,
                "cross_queries": 2, "cross_sizes": [8], "index_kinds": ["flat", "hnsw"]},
}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if k not in base:
            raise KeyError(f"TINY override {k!r} is not in params.yaml: update this test")
        out[k] = _merge(base[k], v) if isinstance(v, dict) else v
    return out


def _run(args: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc.stdout


@pytest.mark.slow
def test_dvc_pipeline_and_ablation(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("aladin", "stages", "plots/templates"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, repo / name)
    params = _merge(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(repo), "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@localhost",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@localhost"}
    dvc = [sys.executable, "-m", "dvc"]
    _run(["git", "init", "-q", "-b", "main"], repo, env)
    _run(dvc + ["init", "-q"], repo, env)
    _run(dvc + ["config", "core.analytics", "false"], repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "tiny pipeline"], repo, env)

    _run(dvc + ["repro"], repo, env)
    for f in ("data.json", "teacher.json", "student.json", "student_triplet.json", "cross.json",
              "eval.json", "latency.json"):
        assert (repo / "metrics" / f).is_file(), f
    evaluation = json.loads((repo / "metrics" / "eval.json").read_text())
    assert "teacher" in json.dumps(evaluation) and "student" in json.dumps(evaluation)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "baseline results"], repo, env)

    # The ablation: only the distillation stage and what follows it may run again.
    out = _run(dvc + ["exp", "run", "-n", "t005", "-S", "distill.temperature=0.05"], repo, env)
    assert "Running stage 'distill'" in out
    for untouched in ("data", "features", "teacher", "student_triplet", "cross"):
        assert f"Running stage '{untouched}'" not in out, untouched
    _run(dvc + ["exp", "run", "-n", "t100", "-S", "distill.temperature=1.0"], repo, env)

    rows = json.loads(_run(dvc + ["exp", "show", "--json"], repo, env))
    found = {}
    for row in rows:
        for exp in row.get("experiments") or []:
            for rev in exp.get("revs", []):
                name = rev.get("name")
                data = (rev.get("data") or {})
                metrics = data.get("metrics", {}).get("metrics/student.json", {}).get("data")
                if name in ("t005", "t100"):
                    found[name] = metrics
    assert set(found) == {"t005", "t100"}, rows
    assert found["t005"] != found["t100"]

    db = sqlite3.connect(repo / "mlflow.db")
    exp_tags = db.execute("select value from tags where key = 'dvc_exp_name'").fetchall()
    assert {"t005", "t100"} <= {v for (v,) in exp_tags}
