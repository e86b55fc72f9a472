"""The headline figures (metrics/headline.json, what `dvc exp show` is limited to) and the results
tables rendered from whatever protocols the metrics hold."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests._params import ROOT, run_stage

SCRIPT = ROOT / "scripts" / "results_table.py"


def _metrics(tmp_path: Path) -> Path:
    """This checkout's metrics/ (a 5K test set), copied."""
    shutil.copytree(ROOT / "metrics", tmp_path / "metrics")
    return tmp_path / "metrics"


def _rename_protocols(obj, n: int):
    """`obj` as if the test set had `n` images: '5k' -> 'n<n>', no '1k'."""
    if isinstance(obj, dict):
        return {("n%d" % n if k == "5k" else k): _rename_protocols(v, n) for k, v in obj.items() if k != "1k"}
    return obj


def _table(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--metrics", str(tmp_path / "metrics"), *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)


def test_headline_stage_writes_the_comparison_figures(tmp_path):
    _metrics(tmp_path)
    proc = run_stage("headline", tmp_path)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads((tmp_path / "metrics" / "headline.json").read_text())["headline"]
    for key in ("teacher_5k_rsum", "student_1k_rsum", "two_stage_5k_rsum", "student_rsum_vs_teacher",
                "two_stage_rsum_vs_teacher", "student_family_r1", "latency_speedup_teacher_vs_student_5k",
                "latency_student_p50_ms"):
        assert isinstance(figures[key], float), key
    assert len(figures) < 60                                     # a headline, not the 876 columns


def test_table_renders_a_test_set_of_neither_protocol(tmp_path):
    metrics = _metrics(tmp_path)
    ev = _rename_protocols(json.loads((metrics / "eval.json").read_text()), 8)
    ev["protocol"]["n_images"] = 8
    (metrics / "eval.json").write_text(json.dumps(ev))
    (metrics / "data.json").write_text(json.dumps(_rename_protocols(json.loads((metrics / "data.json").read_text()), 8)))
    proc = _table(tmp_path, "--headline")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "rsum all 8" in lines[0] and "1K" not in lines[0]
    assert f"**{ev['student']['n8']['rsum']:.1f}**" in next(line for line in lines if line.startswith("| student (distilled)"))
    assert 8 <= len(lines) <= 14                                  # what ./run.sh ends on
    full = _table(tmp_path, "--scaling", str(ROOT / "plots" / "latency_scaling.csv"))   # every table
    assert full.returncode == 0, full.stderr
    assert "Oracle text->image at all 8" in full.stdout and "| 1K* | 5K* |" in full.stdout


def test_table_answers_help_without_reading_metrics(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0 and "--headline" in proc.stdout
