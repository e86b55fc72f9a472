"""End to end: the real DVC pipeline on tiny data in a temporary git repo, then an ablation.

Runs `dvc repro` (every stage of dvc.yaml), then two `dvc exp run -S distill.temperature=...`
experiments, and checks that `dvc exp show` lists both with different student metrics, that
MLflow's parent runs put the temperature beside the test rsum, that nothing which does not
depend on the student was re-run by the ablation, and that a clone in another directory
computes the same data and features hashes (a shared DVC cache hits).
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests._params import write_params

ROOT = Path(__file__).resolve().parents[1]

# Every size shrunk so that each stage takes seconds; the structure of params.yaml is kept.
TINY = {
    "data": {"n_train": 24, "n_val": 8, "n_test": 8, "image_size": 64, "family_size": 4, "workers": 1},
    "features": {"image_size": 64, "batch_size": 16, "num_workers": 0, "device": "cpu"},
    "teacher": {"optim": {"epochs": 2, "batch_size": 16, "lr_decay_epochs": []}, "device": "cpu", "threads": 1},
    "distill": {"codebook": {"codes": 16}, "optim": {"epochs": 2, "batch_size": 16}, "device": "cpu", "threads": 1},
    "cross": {"enabled": True, "optim": {"epochs": 1, "batch_size": 8}, "select_images": 8, "eval_images": 8,
              "eval_text_queries": 8, "eval_image_queries": 4, "device": "cpu", "threads": 1},
    "index": {"nlist": 2, "nprobe": 1, "pq_m": 8, "device": "cpu"},
    "evaluate": {"rerank_k": 10, "rerank_depths": [10], "cross_fold_images": 8, "cross_text_queries": 8,
                 "cross_image_queries": 4, "device": "cpu", "threads": 1},
    "latency": {"n_queries": 3, "n_image_queries": 2, "teacher_queries": 2, "warmup": 1,
                "throughput_queries": 8, "batch_size": 4, "sizes": [8, 64], "teacher_sizes": [8, 64],
                "image_query_sizes": [8, 64], "scaling_nlist": 4, "scaling_nprobe": 2,
                "cross_queries": 2, "cross_sizes": [8], "index_kinds": ["sparse", "flat", "hnsw"]},
}


def _run(args: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc.stdout


@pytest.mark.slow
def test_dvc_pipeline_and_ablation(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("aladin", "stages", "plots/templates", "inputs"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, repo / name)
    write_params(repo, TINY)

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
    for f in ("data.json", "teacher.json", "student.json", "student_triplet.json", "cross.json", "eval_teacher.json",
              "eval_student_triplet.json", "eval_oracle.json", "eval.json", "latency_encoders.json", "latency_teacher.json",
              "latency_scaling.json", "latency.json", "headline.json"):
        assert (repo / "metrics" / f).is_file(), f
    evaluation = json.loads((repo / "metrics" / "eval.json").read_text())
    assert "teacher" in json.dumps(evaluation) and "student" in json.dumps(evaluation)
    # The ceiling and the binding metric: every learned row against the oracle, within families.
    assert {"n8", "within_family", "t2i_random_ties", "ties"} <= set(evaluation["oracle"])
    for row in ("teacher", "student", "student_triplet", "two_stage"):
        assert 0 <= evaluation["summary"][f"{row}_family_r1"] <= 100
        assert evaluation["summary"][f"{row}_t2i_vs_oracle"] >= 0
    # The efficiency figure: a point per method, the cross-encoder's two among them.
    points = {r["method"] for r in csv.DictReader((repo / "plots" / "efficiency.csv").open())}
    assert {"student", "student_triplet", "teacher", "two_stage_k10", "cross_encoder", "cross_rerank_k10"} <= points
    assert (repo / "plots" / "efficiency.png").stat().st_size > 0
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "baseline results"], repo, env)

    # The ablation: only the distillation stage and what follows it may run again.
    out = _run(dvc + ["exp", "run", "-n", "t005", "-S", "distill.temperature=0.05"], repo, env)
    assert "Running stage 'distill'" in out
    # (the cross-encoder re-ranks the student's lists, so it follows the student)
    for untouched in ("data", "features", "teacher", "student_triplet", "evaluate_teacher",
                      "evaluate_triplet", "evaluate_oracle", "latency_encoders", "latency_teacher", "latency_scaling"):
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

    # MLflow: one parent run per experiment, the parameter beside the test metric it moved.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    exp_id = client.get_experiment_by_name("aladin").experiment_id
    parents = {r.info.run_name: r for r in client.search_runs([exp_id], "tags.pipeline = 'true'")}
    assert {"t005", "t100"} <= set(parents)
    for name, temperature in (("t005", "0.05"), ("t100", "1.0")):
        run = parents[name].data
        assert run.params["distill.temperature"] == temperature and "student_n8_rsum" in run.metrics, run
        children = client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parents[name].info.run_id}'")
        assert {"student", "evaluate", "latency"} <= {c.info.run_name for c in children}
    assert parents["t005"].data.metrics["student_n8_rsum"] != parents["t100"].data.metrics["student_n8_rsum"]

    # Another clone, another directory: the same data and features hashes.
    clone = tmp_path / "elsewhere" / "clone"
    _run(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
    _run(dvc + ["repro", "features"], clone, {**env, "PYTHONPATH": str(clone)})
    locks = [yaml.safe_load((d / "dvc.lock").read_text())["stages"] for d in (repo, clone)]
    for stage in ("data", "features"):
        assert locks[0][stage]["outs"] == locks[1][stage]["outs"], stage
