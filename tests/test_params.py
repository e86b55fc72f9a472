"""params.yaml is the one source of values: every key required, code defaults equal to it,
configs/coco.yaml complete, and dvc.yaml's params and deps in step with the code."""
from __future__ import annotations

import dataclasses
import typing

import pytest
import yaml

from aladin import params as P
from aladin.errors import ConfigError
from scripts.dvc_deps import ROOT, expected_deps
from tests._params import DEFAULTS, write_params

COCO = yaml.safe_load((ROOT / "configs" / "coco.yaml").read_text())
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def keys(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        out.add(prefix + k)
        if isinstance(v, dict):
            out |= keys(v, f"{prefix}{k}.")
    return out


def test_params_and_coco_config_have_the_same_keys():
    assert keys(DEFAULTS) == keys(COCO)


@pytest.mark.parametrize("path", [ROOT / "params.yaml", ROOT / "configs" / "coco.yaml"])
def test_every_section_loads(path):
    for name in P.SECTIONS:
        P.load(name, path)
    assert isinstance(P.seed(path), int)


def _defaults(cls: type, raw: dict, where: str):
    """(name, code default, params.yaml value) of every field with a default, nested included."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            yield f"{where}.{f.name}", f.default, raw[f.name]
        elif f.default_factory is not dataclasses.MISSING:
            yield f"{where}.{f.name}", f.default_factory(), raw[f.name]
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _defaults(hints[f.name], raw[f.name], f"{where}.{f.name}")


def test_code_defaults_equal_params_yaml():
    found = [(name, code, yaml_value) for section, cls in P.SECTIONS.items()
             for name, code, yaml_value in _defaults(cls, DEFAULTS[section], section)]
    assert len(found) > 30                                  # the model, loss and index components
    assert [f for f in found if f[1] != f[2]] == []


def test_a_missing_key_is_an_error_naming_it(tmp_path):
    full = write_params(tmp_path)
    del full["distill"]["optim"]["lr"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(full))
    with pytest.raises(ConfigError, match=r"distill\.optim\.lr: missing required parameter"):
        P.load("distill", tmp_path / "params.yaml")
    full["distill"]["optim"]["lr"] = 0.001
    del full["distill"]["temperature"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(full))
    with pytest.raises(ConfigError, match=r"distill\.temperature: missing required parameter"):
        P.load("distill", tmp_path / "params.yaml")


def test_triplet_baseline_params_are_the_declared_keys():
    declared = [p for p in DVC["student_triplet"]["params"] if p.startswith("distill.")]
    assert declared == [f"distill.{k}" for k in P.TRIPLET_BASELINE_KEYS]


@pytest.mark.parametrize("stage", sorted(DVC))
def test_stage_deps_are_its_import_closure(stage):
    assert DVC[stage]["deps"] == expected_deps(DVC[stage]), \
        f"{stage}: dvc.yaml deps differ from its import closure; run python scripts/dvc_deps.py"
