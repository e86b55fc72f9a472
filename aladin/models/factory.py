"""Build, save and load models by kind (open_clip-style registry).

Each model class has a ``Config`` dataclass and is constructed as ``cls(cfg, d_img, d_txt)``,
plus keyword components that are models themselves (the student's frozen ``token_encoder``).
A checkpoint stores the kind, the config, the input widths, each component's kind / config /
widths, and the weights of the whole, so :func:`load_model` needs nothing but the file. To add a
kind, add one line to ``MODELS``.
"""
from __future__ import annotations

import dataclasses
import logging
import importlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import from_dict
from ..errors import ConfigError, DataError
from ..io import atomic_path

log = logging.getLogger("aladin")

# kind -> "module:Class"; imported lazily so a stage only pays for the models it uses.
MODELS: dict[str, str] = {
    "alignment": "aladin.models.alignment:AlignmentModel",
    "matching": "aladin.models.matching:MatchingHead",
    "codebook": "aladin.models.codebook:CodebookHead",
    "cross": "aladin.models.cross_encoder:CrossEncoder",
}


def model_class(kind: str) -> type[nn.Module]:
    if kind not in MODELS:
        raise ConfigError(f"model kind {kind!r} unknown; known: {', '.join(sorted(MODELS))}")
    module, name = MODELS[kind].split(":")
    return getattr(importlib.import_module(module), name)


STUDENTS = ("codebook", "matching")             # the kinds a student checkpoint (models/student.pt) holds
COMPONENTS = {"token_encoder": "alignment"}     # constructor keyword -> the kind it holds

# Config fields added after checkpoints of a kind were first saved, with the value those
# checkpoints were trained with (a missing field must not take today's default).
LEGACY_FIELDS = {"alignment": {"words": "all"}}


def _saved_config(kind: str, cfg: dict[str, Any]) -> dict[str, Any]:
    return {**LEGACY_FIELDS.get(kind, {}), **cfg}


def build_model(kind: str, cfg: Any, d_img: int, d_txt: int, **components: nn.Module) -> nn.Module:
    """A fresh model of `kind`; `cfg` is its Config dataclass or a dict of the same fields."""
    cls = model_class(kind)
    if isinstance(cfg, dict):
        cfg = from_dict(cls.Config, cfg, kind)
    return cls(cfg, d_img, d_txt, **components)


def _spec(model: nn.Module, kind: str) -> dict[str, Any]:
    return {"kind": kind, "config": dataclasses.asdict(model.cfg), "d_img": model.d_img, "d_txt": model.d_txt}


def save_checkpoint(path: str | os.PathLike, model: nn.Module, kind: str, cfg: Any,
                    extra: dict[str, Any] | None = None) -> None:
    """Atomically write kind + config + input widths + components + weights (+ `extra`, e.g. metrics)."""
    cfg_dict = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    components = {name: _spec(getattr(model, name), sub) for name, sub in COMPONENTS.items()
                  if getattr(model, name, None) is not None}
    ckpt = {"kind": kind, "config": cfg_dict, "d_img": model.d_img, "d_txt": model.d_txt,
            "components": components, "state_dict": model.state_dict(), "extra": extra or {}}
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def save_skipped(path: str | os.PathLike, reason: str) -> None:
    """A model output of a stage that did not train (e.g. cross.enabled false)."""
    with atomic_path(path) as tmp:
        torch.save({"skipped": reason}, tmp)


def skipped_reason(path: str | os.PathLike) -> str | None:
    """Why the checkpoint at `path` is a skipped marker, or None for a real checkpoint."""
    if not Path(path).is_file():
        raise DataError(f"{path}: model checkpoint not found")
    try:
        marker = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:   # not our marker: load_model reports what is wrong with it
        return None
    return marker["skipped"] if isinstance(marker, dict) and "skipped" in marker else None


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: model checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt / foreign files
        raise DataError(f"{path}: not a readable model checkpoint ({e})") from e
    missing = {"kind", "config", "d_img", "d_txt", "state_dict"} - set(ckpt if isinstance(ckpt, dict) else ())
    if missing:
        raise DataError(f"{path}: not a model checkpoint (missing {', '.join(sorted(missing))})")
    return ckpt


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu",
               kind: str | tuple[str, ...] | None = None) -> nn.Module:
    """The model saved at `path`, on `device`, in eval mode. `kind` (optional: one or a tuple, e.g.
    STUDENTS) is checked."""
    ckpt = read_checkpoint(path)
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds is not None and ckpt["kind"] not in kinds:
        raise DataError(f"{path}: checkpoint holds a {ckpt['kind']!r} model, expected {' or '.join(map(repr, kinds))}")
    try:
        components = {name: build_model(c["kind"], _saved_config(c["kind"], c["config"]), c["d_img"], c["d_txt"])
                      for name, c in ckpt.get("components", {}).items()}
        model = build_model(ckpt["kind"], _saved_config(ckpt["kind"], ckpt["config"]), ckpt["d_img"],
                            ckpt["d_txt"], **components)
        model.load_state_dict(ckpt["state_dict"])
    except (ConfigError, RuntimeError) as e:
        raise DataError(f"{path}: checkpoint does not match its model ({e})") from e
    return model.to(device).eval()


def load_cross(path: str | os.PathLike, device: torch.device | str = "cpu") -> nn.Module | None:
    """The trained cross-encoder, or None when the `cross` stage was skipped (cross.enabled false)."""
    reason = skipped_reason(path)
    if reason is not None:
        log.info("%s: cross-encoder not trained (%s)", path, reason)
        return None
    return load_model(path, device, kind="cross")
