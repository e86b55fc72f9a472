"""Reading params.yaml into dataclasses: unknown keys, missing keys, wrong types and out-of-range
values fail early with the parameter's full name (e.g. ``teacher.optim.lr``). The sections
themselves are declared in :mod:`aladin.params`.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml

from .errors import ConfigError
from .yaml_load import load_yaml

T = TypeVar("T")
PARAMS_FILE = "params.yaml"


def load_params(path: str | os.PathLike = PARAMS_FILE) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: parameters file not found")
    try:
        params = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping of sections")
    return params


def section(name: str, path: str | os.PathLike = PARAMS_FILE) -> dict[str, Any]:
    """The raw dict of one section of params.yaml."""
    params = load_params(path)
    if name not in params:
        raise ConfigError(f"{path}: missing section '{name}'")
    value = params[name]
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: section '{name}' must be a mapping")
    return value


def _check_type(value: Any, tp: Any, name: str, strict: bool) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, name, strict)
            except ConfigError:
                pass
        raise ConfigError(f"{name}: expected {tp}, got {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{name}: expected one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        (arg, *_) = typing.get_args(tp) or (Any,)
        return [_check_type(v, arg, f"{name}[{i}]", strict) for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, name, strict)
    return value


def from_dict(cls: type[T], raw: dict[str, Any], name: str, strict: bool = False) -> T:
    """Build dataclass `cls` from `raw`, naming `name.field` in every error.

    Fields with defaults may be omitted unless `strict` (params.yaml: every key required). The
    dataclass may define ``validate(self)`` which raises ConfigError (use :func:`require`) for range checks.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{name}: unknown parameter(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    kwargs = {}
    for fname, f in fields.items():
        full = f"{name}.{fname}"
        if fname in raw:
            kwargs[fname] = _check_type(raw[fname], hints[fname], full, strict)
        elif strict or (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING):
            raise ConfigError(f"{full}: missing required parameter")
    obj = cls(**kwargs)
    validate: Callable[[], None] | None = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except ConfigError as e:
            raise ConfigError(f"{name}.{e}") from None
    return obj


def require(cond: bool, field: str, message: str) -> None:
    """Range check inside ``validate``: ``require(self.lr > 0, "lr", "must be > 0")``."""
    if not cond:
        raise ConfigError(f"{field}: {message}")

