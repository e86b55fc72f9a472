"""params.yaml reading: the YAML dialect and the typed sections built from it."""
from dataclasses import dataclass

import pytest

from aladin.config import from_dict, load_params, section
from aladin.errors import ConfigError


@dataclass(frozen=True)
class Optim:
    lr: float = 0.1
    steps: int = 1


@pytest.mark.parametrize("text, value", [
    ("1e-3", 0.001), ("1E5", 100000.0), ("-2.5e-4", -0.00025), ("1.0e5", 100000.0), (".5e1", 5.0),
    ("1.0e-5", 1e-5), ("0.01", 0.01), ("3", 3),
])
def test_scientific_notation_is_a_number(tmp_path, text, value):
    """YAML 1.1 (PyYAML) reads 1e-3 as a string; DVC (YAML 1.2) and we read a number."""
    (tmp_path / "params.yaml").write_text(f"optim:\n  lr: {text}\n")
    raw = load_params(tmp_path / "params.yaml")["optim"]["lr"]
    assert raw == value and type(raw) is type(value)
    assert from_dict(Optim, section("optim", tmp_path / "params.yaml"), "optim").lr == value


@pytest.mark.parametrize("text", ["'1e-3'", "1e", "e5", "1e-3x"])
def test_strings_stay_strings(tmp_path, text):
    (tmp_path / "params.yaml").write_text(f"optim:\n  lr: {text}\n")
    assert isinstance(load_params(tmp_path / "params.yaml")["optim"]["lr"], str)
    with pytest.raises(ConfigError, match="optim.lr: expected a number"):
        from_dict(Optim, section("optim", tmp_path / "params.yaml"), "optim")
