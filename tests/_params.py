"""params.yaml for tests: the pinned defaults (tests/params.yaml, never the workspace's file, which
`dvc exp run -S` rewrites) with a few keys overridden (every key is required, so tests never write
partial files), and stage scripts run as the pipeline runs them."""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from aladin.config import from_dict
from aladin.params import SECTIONS

ROOT = Path(__file__).resolve().parents[1]
PINNED = ROOT / "tests" / "params.yaml"
DEFAULTS = yaml.safe_load(PINNED.read_text())


def merge(base: dict[str, Any], overrides: dict[str, Any], where: str = "") -> dict[str, Any]:
    """`base` with `overrides` applied key by key; an override of a key params.yaml lacks is a bug."""
    out = copy.deepcopy(base)
    for k, v in overrides.items():
        if k not in out:
            raise KeyError(f"override {where}{k!r} is not in {PINNED}: update the test")
        out[k] = merge(out[k], v, f"{where}{k}.") if isinstance(v, dict) and isinstance(out[k], dict) else v
    return out


def params(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    return merge(DEFAULTS, overrides or {})


def write_params(directory: Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    full = params(overrides)
    (Path(directory) / "params.yaml").write_text(yaml.safe_dump(full, sort_keys=False))
    return full


def section(name: str, **overrides: Any) -> Any:
    """Section `name` of params.yaml, with `overrides`, as its dataclass."""
    return from_dict(SECTIONS[name], merge(DEFAULTS[name], overrides, f"{name}."), name, strict=True)


def run_stage(name: str, cwd: Path, *args: str, env: dict[str, str] | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m stages.<name> args` in `cwd` (the repo on PYTHONPATH, one OpenMP thread), in
    `env` (default: this process's environment)."""
    env = {"OMP_NUM_THREADS": "1", **(os.environ if env is None else env)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", f"stages.{name}", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
