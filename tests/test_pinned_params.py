"""Tests build their params on tests/params.yaml, not on the workspace's params.yaml: an
experiment applied to the workspace (`dvc exp run -S data.family_size=1`) changes no test."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import yaml

from aladin.tracking import flatten
from tests._params import DEFAULTS, PINNED, ROOT
from tests.test_params import keys


def test_pinned_params_have_the_keys_of_params_yaml():
    pinned, workspace = keys(DEFAULTS), keys(yaml.safe_load((ROOT / "params.yaml").read_text()))
    assert (sorted(workspace - pinned), sorted(pinned - workspace)) == ([], []), \
        f"(keys to add to, keys to remove from) {PINNED}"


def test_pinned_params_are_the_committed_defaults():
    """Values too, against the committed params.yaml (the workspace's may hold an experiment), on
    the keys both have (a key being added is not committed yet)."""
    proc = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip("not a git checkout")
    pinned, committed = flatten(DEFAULTS), flatten(yaml.safe_load(proc.stdout))
    assert {k: v for k, v in committed.items() if k in pinned and pinned[k] != v} == {}, \
        f"update {PINNED} from params.yaml"


def test_an_experiment_in_the_workspace_changes_no_test_params(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "tests", repo / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    experiment = yaml.safe_load((ROOT / "params.yaml").read_text())
    experiment["data"]["family_size"] = 1                 # what `dvc exp run -S data.family_size=1` leaves
    (repo / "params.yaml").write_text(yaml.safe_dump(experiment))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), str(ROOT)])}
    proc = subprocess.run([sys.executable, "-c", "from tests._params import section; print(section('data').family_size)"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(DEFAULTS["data"]["family_size"])
