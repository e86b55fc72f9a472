"""Multi-process (DistributedDataParallel) training: the process group and the torchrun launch.

A training stage runs as one process by default: no process group at all, today's code path.
With ``nproc: N > 1`` in its params section it re-launches itself under ``torch.distributed.run``
(:func:`relaunch`); under torchrun (launched by hand or by :func:`relaunch`; WORLD_SIZE > 1)
:func:`setup` joins the process group (NCCL on CUDA, gloo on CPU) and returns the rank's device.
Rank 0 alone validates, checkpoints, tracks and writes outputs (:func:`is_main`).
"""
from __future__ import annotations

import atexit
import logging
import os
import subprocess
import sys
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from .errors import ConfigError
from .runtime import resolve_device

log = logging.getLogger("aladin")

# Rank 0 validates alone while the others wait at the next collective: allow a long validation
# (an exhaustive 5K teacher evaluation) before the wait counts as a hang.
TIMEOUT = timedelta(hours=1)
TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


def under_torchrun() -> bool:
    """Launched by torchrun with more than one process (torchrun's env is set in every worker)."""
    return all(k in os.environ for k in TORCHRUN_ENV) and int(os.environ["WORLD_SIZE"]) > 1


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    return rank() == 0


def check_nproc(nproc: int, device: torch.device, name: str = "nproc") -> None:
    """ConfigError for nproc < 1, or more processes than visible GPUs on CUDA (one GPU per process)."""
    if nproc < 1:
        raise ConfigError(f"{name}: must be >= 1, got {nproc}")
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise ConfigError(f"{name}: {nproc} processes but {torch.cuda.device_count()} visible GPU(s); "
                          "one GPU per process (set CUDA_VISIBLE_DEVICES or lower it)")


def relaunch(nproc: int, device: str, script: list[str], args: list[str], name: str = "nproc") -> None:
    """With nproc > 1 and not under torchrun: run `script args` (a path, or ``-m module``) as
    nproc torchrun workers and exit
    with their status. Otherwise return at once (one process, or already a torchrun worker)."""
    check_nproc(nproc, resolve_device(device), name)
    if nproc == 1 or under_torchrun():
        return
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           *script, *args]
    log.info("relaunching under torchrun: %s", " ".join(cmd[1:]))
    sys.exit(subprocess.run(cmd).returncode)


def setup(device: torch.device, nproc: int | None = None, name: str = "nproc") -> torch.device:
    """Join the torchrun process group when launched with WORLD_SIZE > 1 and return this rank's
    device (cuda:LOCAL_RANK on CUDA); in a single process return `device` unchanged.

    `nproc` (the stage's param) is only compared with the launch's world size: torchrun decides.
    Non-zero ranks log warnings only, so every line appears once. Idempotent.
    """
    if not under_torchrun():
        return device
    n, local_rank = int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        check_nproc(int(os.environ.get("LOCAL_WORLD_SIZE", n)), device, name)
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
        atexit.register(teardown)
    if not is_main():
        log.setLevel(logging.WARNING)
    elif nproc is not None and nproc != n:
        log.warning("%s is %d but torchrun launched %d processes: using %d", name, nproc, n, n)
    log.info("DDP: %d processes, backend %s, rank 0 on %s", n, dist.get_backend(), device)
    return device


def start(nproc: int, device: str, name: str = "nproc") -> torch.device:
    """A training stage's entry: relaunch this script under torchrun when `nproc` > 1 (the parent
    exits there), else join the process group if launched by torchrun; returns this rank's device."""
    main = sys.modules["__main__"]
    spec = getattr(main, "__spec__", None)            # `python -m stages.teacher`: relaunch the module
    script = ["-m", spec.name] if spec is not None and spec.name != "__main__" else [sys.argv[0]]
    relaunch(nproc, device, script, sys.argv[1:], name)
    return setup(resolve_device(device), nproc, name)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (pickled); identity in a single process."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_module(module: torch.nn.Module) -> None:
    """Overwrite every rank's parameters and buffers with rank 0's (in place); no-op in one process."""
    if is_distributed():
        for t in module.state_dict().values():
            dist.broadcast(t, src=0)
