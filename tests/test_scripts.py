"""Every script in benchmarks/ and scripts/ imports against today's package and answers --help
(argument parsing runs before any work), so a rename cannot leave one broken unnoticed."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for folder in ("benchmarks", "scripts") for p in (ROOT / folder).glob("*.py"))


def test_there_are_scripts_to_check():
    assert len(SCRIPTS) > 10


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_script_imports_and_answers_help(path, monkeypatch, capsys):
    module = importlib.import_module(f"{path.parent.name}.{path.stem}")
    assert callable(getattr(module, "main", None)), f"{path.name}: no main()"
    monkeypatch.setattr(sys, "argv", [path.name, "--help"])
    with pytest.raises(SystemExit) as exit_:
        module.main()
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out
