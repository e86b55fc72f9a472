"""Loading local Hugging Face model directories: offline, quietly, with errors naming the parameter."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

from ..errors import ConfigError


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """transformers draws a 'Loading weights' bar per model; keep stage logs clean."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def from_local(factory: Any, path: Path, param: str) -> Any:
    """``factory.from_pretrained(path)`` with local files only (never the Hub)."""
    try:
        with _no_progress_bars():
            return factory.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"{param}: cannot load a Hugging Face model from {path} ({e})") from None
