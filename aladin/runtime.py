"""Seeds, devices, threads and logging: the process-level setup every stage shares."""
from __future__ import annotations

import logging
import random
import signal
import sys
from typing import Callable

import numpy as np
import torch

from .errors import AladinError

log = logging.getLogger("aladin")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' -> CUDA when present, else CPU; anything else is passed to torch.device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise AladinError(f"device: unknown device {device!r}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AladinError(f"device: {device!r} requested but CUDA is not available")
    return dev


def set_threads(n: int) -> None:
    """The same thread count for torch (intra-op) and faiss (OpenMP); 0 leaves both defaults."""
    if n > 0:
        import faiss

        torch.set_num_threads(n)
        faiss.omp_set_num_threads(n)


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    # faiss logs each CPU-specific library it fails to load (ModuleNotFoundError ... swigfaiss_avx512)
    # at INFO before falling back: routine, yet it reads like an error.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)


def run_stage(main: Callable[[], None]) -> None:
    """Entry point wrapper for stages/*.py: user errors become one line on stderr and exit code 2."""
    setup_logging()
    signal.signal(signal.SIGINT, signal.default_int_handler)   # stages/__init__.py's covered the imports
    try:
        main()
    except AladinError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
