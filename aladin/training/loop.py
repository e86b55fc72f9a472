"""The shared training loop: Adam, step decay, gradient clipping, per-epoch validation,
best-model selection and a resumable checkpoint. Teacher, student and cross-encoder stages
all call :func:`fit` with their own loss and validation.

Determinism: each epoch reseeds the shuffle and torch's RNG (dropout) from (seed, epoch), and
the ``last`` checkpoint holds model, optimiser, best state and history, so a run resumed at an
epoch boundary ends with exactly the weights of an uninterrupted run.

Multi-process (under torchrun, see :mod:`aladin.distributed`): every rank draws the same epoch
permutation and each global step gives rank r the r-th shard of ``batch_size x world_size``
pairs, so ``batch_size`` stays the per-process in-batch negative set and each rank's loss is the
single-process loss of its shard. DistributedDataParallel averages the gradients (clipping sees
the average); rank 0 alone validates, selects, checkpoints and logs, then shares the epoch's row
and finally the best weights with the other ranks. A single process takes none of these paths.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .. import distributed
from ..errors import AladinError, DataError
from ..io import atomic_path, write_json
from ..params import OptimConfig
from ..store import Batch, FeatureStore

log = logging.getLogger("aladin")

CHECKPOINTS, MODELS, METRICS, PLOTS = Path("checkpoints"), Path("models"), Path("metrics"), Path("plots")
LossFn = Callable[[nn.Module, Batch], tuple[torch.Tensor, dict[str, float]]]


class Tracker(Protocol):
    run_id: str | None

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def set_tags(self, tags: dict[str, Any]) -> None: ...


@dataclass
class FitResult:
    best_metrics: dict[str, float]
    best_epoch: int
    history: list[dict[str, float]]   # one row per epoch: epoch, lr, train_loss, train_*, val metrics


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    # Rank 0 keeps the single-process seed; other ranks draw their own dropout masks.
    entropy = [seed, epoch] if rank == 0 else [seed, epoch, rank]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def epoch_batches(order: np.ndarray, batch_size: int, world_size: int = 1, rank: int = 0) -> list[np.ndarray]:
    """This rank's batch of each global step: step i splits ``order[i*B*W:(i+1)*B*W]`` into W
    contiguous shards (the last step's shards may be smaller, but equal up to one pair). A step
    whose shards would hold fewer than 2 pairs is dropped: a lone pair has no negatives."""
    step = batch_size * world_size
    chunks = [order[i:i + step] for i in range(0, len(order), step)]
    return [np.array_split(c, world_size)[rank] for c in chunks if len(c) // world_size >= 2]


class LossModule(nn.Module):
    """loss_fn(model, batch) as a module, so DistributedDataParallel sees every forward pass the
    loss makes (teacher scores, student embeddings, cross-encoder mining alike) and syncs their
    gradients."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return self.loss_fn(self.model, batch)


def _rank_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Mean over ranks of each value (same keys on every rank)."""
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return dict(zip(values, (t / distributed.world_size()).tolist()))


def data_fingerprint(store: FeatureStore) -> dict[str, Any]:
    """What identifies a feature store cheaply: its manifest plus a hash of the counts arrays."""
    h = hashlib.sha256()
    for arr in (store.region_counts, store.token_counts, store.caption_image):
        h.update(np.ascontiguousarray(arr).tobytes())
    return {"manifest": store.manifest, "counts_sha256": h.hexdigest()}


def _state_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def fingerprint(model: nn.Module, train_store: FeatureStore, optim_cfg: OptimConfig, seed: int,
                config: dict[str, Any] | None, world_size: int = 1) -> str:
    """Hash of everything a resumed run must share with the interrupted one."""
    key = {"optim": dataclasses.asdict(optim_cfg), "seed": seed, "config": config,
           "data": data_fingerprint(train_store), "init": _state_hash(model)}
    if world_size > 1:                  # the global batch and each rank's shards depend on it
        key["world_size"] = world_size
    blob = json.dumps(key, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _load_last(path: Path, fp: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a corrupt checkpoint only costs a restart
        log.warning("%s: unreadable checkpoint, starting from scratch (%s)", path, e)
        return None
    if ckpt.get("fingerprint") != fp:
        log.info("%s: checkpoint of other params or data, starting from scratch", path)
        return None
    return ckpt


def fit(model: nn.Module, loss_fn: LossFn, train_store: FeatureStore,
        validate: Callable[[nn.Module], dict[str, float]], optim_cfg: OptimConfig, seed: int,
        device: torch.device | str, checkpoint_dir: str | os.PathLike | None,
        run: Tracker | None = None, select_metric: str = "rsum",
        config: dict[str, Any] | None = None,
        on_epoch_start: Callable[[int], None] | None = None,
        on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
        pair_order: Callable[[np.random.Generator], np.ndarray] | None = None) -> FitResult:
    """Train `model` in place; on return it holds the best weights (by `select_metric`, higher = better).

    loss_fn(model, batch) -> (loss, dict of floats to average and log); validate(model) -> metrics
    (called in eval mode under no_grad; logged as val_*, except its own train_* figures). `config`
    (the stage's params) joins the checkpoint fingerprint so a checkpoint of other params is never
    resumed. `on_epoch_start(epoch)` runs before each epoch's training (e.g. a loss schedule); `on_epoch_end(epoch, row)` after the
    epoch's checkpoint is written (tests use it to simulate an interruption). `pair_order(rng)`
    gives an epoch's order of training pairs from its generator (default: a uniform permutation;
    :mod:`aladin.training.batching` composes batches of teacher neighbours); batches are its contiguous runs.

    In a torchrun process group (:func:`aladin.distributed.setup`) every rank calls fit alike;
    `validate`, `run` and the checkpoint are used by rank 0 only, and every rank returns the same
    weights and FitResult.
    """
    device = torch.device(device)
    model.to(device)
    ddp, rank, world = distributed.is_distributed(), distributed.rank(), distributed.world_size()
    main = rank == 0
    last_path = Path(checkpoint_dir) / "last.pt" if checkpoint_dir is not None else None
    fp = fingerprint(model, train_store, optim_cfg, seed, config, world)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=optim_cfg.lr, weight_decay=optim_cfg.weight_decay)

    start, history = 0, []
    best_metrics: dict[str, float] = {}
    best_epoch, best_state = -1, copy.deepcopy(model.state_dict())
    ckpt = _load_last(last_path, fp) if last_path is not None and main else None
    ckpt = distributed.broadcast_object(ckpt)                    # rank 0 reads it, every rank resumes
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        start, history = ckpt["epoch"] + 1, ckpt["history"]
        best_metrics, best_epoch, best_state = ckpt["best_metrics"], ckpt["best_epoch"], ckpt["best_state"]
        log.info("resuming from %s after epoch %d", last_path, ckpt["epoch"])
        if run is not None:        # this run's record starts where the interrupted one stopped
            run.set_tags({"resumed_from_run": ckpt.get("run_id"), "resumed_after_epoch": ckpt["epoch"]})
            for row in history:
                run.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])
    net: nn.Module = LossModule(model, loss_fn)
    if ddp:
        net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)

    n = train_store.n_captions
    for epoch in range(start, optim_cfg.epochs):
        lr = optim_cfg.lr_at(epoch)
        for g in opt.param_groups:
            g["lr"] = lr
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        es = epoch_seed(seed, epoch)
        torch.manual_seed(epoch_seed(seed, epoch, rank))          # dropout
        rng = np.random.default_rng(es)                          # the same on every rank
        order = rng.permutation(n) if pair_order is None else pair_order(rng)
        batches = epoch_batches(order, optim_cfg.batch_size, world, rank)
        if not batches:
            raise DataError(f"{train_store.path}: {n} pairs do not fill one step of 2 pairs per process")

        model.train()
        sums: dict[str, float] = {}
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{optim_cfg.epochs}", unit="batch", leave=False,
                   disable=not main)
        for idx in bar:
            batch = train_store.pair_batch(idx).to(device)
            loss, logs = net(batch)
            values = {"loss": loss.item(), **logs}
            if ddp:                                              # every rank sees (and checks) the mean
                values = _rank_mean(values, device)
            if not math.isfinite(values["loss"]):
                raise AladinError(f"epoch {epoch}: loss became {values['loss']}; lower lr or set grad_clip")
            opt.zero_grad(set_to_none=True)
            loss.backward()                                      # DDP: gradients averaged over ranks here
            if optim_cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(params, optim_cfg.grad_clip)
            opt.step()
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            bar.set_postfix(loss=f"{values['loss']:.4f}")

        if main:
            model.eval()
            with torch.no_grad():
                val = validate(model)
            model.train()
            # validate() may also measure the training set: its 'train_*' figures keep their name.
            row = {"epoch": epoch, "lr": lr, **{f"train_{k}": v / len(batches) for k, v in sums.items()},
                   **{k if k.startswith("train_") else f"val_{k}": float(v) for k, v in val.items()}}
            history.append(row)
            if select_metric not in val:
                raise KeyError(f"validate() returned no {select_metric!r} (got {', '.join(val)})")
            if best_epoch < 0 or val[select_metric] > best_metrics[select_metric]:
                best_metrics, best_epoch = {k: float(v) for k, v in val.items()}, epoch
                best_state = copy.deepcopy(model.state_dict())
            log.info("epoch %d: train loss %.4f, val %s %.2f (best %.2f at epoch %d)", epoch,
                     row["train_loss"], select_metric, val[select_metric], best_metrics[select_metric], best_epoch)
            if run is not None:
                run.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
            if last_path is not None:
                with atomic_path(last_path) as tmp:
                    torch.save({"fingerprint": fp, "epoch": epoch, "model": model.state_dict(),
                                "run_id": getattr(run, "run_id", None),
                                "optimizer": opt.state_dict(), "history": history, "best_metrics": best_metrics,
                                "best_epoch": best_epoch, "best_state": best_state}, tmp)
        # The other ranks wait here for rank 0's validation, then share its record.
        history, best_metrics, best_epoch = distributed.broadcast_object((history, best_metrics, best_epoch))
        if on_epoch_end is not None:
            on_epoch_end(epoch, history[-1])

    if main:
        model.load_state_dict(best_state)
    distributed.broadcast_module(model)
    model.eval()
    return FitResult(best_metrics=best_metrics, best_epoch=best_epoch, history=history)


def remove_finished_checkpoints(checkpoints: Path = CHECKPOINTS, models: Path = MODELS) -> list[Path]:
    """Delete ``checkpoints/<name>/`` when ``models/<name>.pt`` is newer: that run finished (e.g.
    DVC restored it from its run cache after an interruption), so nothing will resume from it."""
    removed = []
    for ckpt_dir in sorted(p for p in checkpoints.glob("*") if p.is_dir()):
        model, last = models / f"{ckpt_dir.name}.pt", ckpt_dir / "last.pt"
        if model.is_file() and (not last.exists() or model.stat().st_mtime >= last.stat().st_mtime):
            shutil.rmtree(ckpt_dir, ignore_errors=True)
            log.info("removed %s: %s is newer", ckpt_dir, model)
            removed.append(ckpt_dir)
    return removed


def write_skipped(name: str, reason: str) -> None:
    """The outputs of a training stage that did not train: a model marker, metrics saying why,
    an empty history (DVC needs every declared output)."""
    from ..models.factory import save_skipped

    save_skipped(MODELS / f"{name}.pt", reason)
    write_json(METRICS / f"{name}.json", {"skipped": True, "reason": reason})
    with atomic_path(PLOTS / f"{name}_history.csv") as tmp:
        pd.DataFrame(columns=["epoch"]).to_csv(tmp, index=False)


@dataclass(frozen=True)
class TrainSpec:
    """What a training stage hands to :func:`train_stage`: the model and how to fit and record it."""

    name: str                    # models/<name>.pt, metrics/<name>.json, plots/<name>_history.csv
    kind: str                    # the checkpoint's model kind (aladin.models.factory)
    model: nn.Module
    model_cfg: Any               # saved in the checkpoint, rebuilds the model
    loss: LossFn
    train: FeatureStore
    validate: Callable[[nn.Module], dict[str, float]]
    optim: OptimConfig
    seed: int
    device: torch.device
    params: dict[str, Any]       # what the run logs to MLflow and keys its resumable checkpoint with
    tracking: Any
    on_epoch_start: Callable[[int], None] | None = None
    summary: Callable[[nn.Module], dict[str, Any]] | None = None   # extra metrics JSON entries, best model
    pair_order: Callable[[np.random.Generator], np.ndarray] | None = None


def train_stage(spec: TrainSpec) -> FitResult | None:
    """The shape of every training stage: fit with a resumable checkpoint under MLflow, then
    (rank 0) models/<name>.pt, metrics/<name>.json, plots/<name>_history.csv and the run's
    ``best_val_*`` metrics. Returns the FitResult on rank 0, None on the other ranks."""
    from ..models.factory import save_checkpoint
    from ..tracking import mlflow_run

    remove_finished_checkpoints()
    s, name = spec, spec.name
    checkpoints = CHECKPOINTS / name
    with mlflow_run(name, s.params, s.tracking) as run:
        t0 = time.perf_counter()
        result = fit(s.model, s.loss, s.train, s.validate, s.optim, s.seed, s.device, checkpoints, run=run,
                     config=s.params, on_epoch_start=s.on_epoch_start, pair_order=s.pair_order)
        train_seconds = time.perf_counter() - t0
        if not distributed.is_main():
            return None
        metrics = {"val": result.best_metrics, "best_epoch": result.best_epoch,
                   "train_seconds": round(train_seconds, 1), **(s.summary(s.model) if s.summary else {})}
        paths = (MODELS / f"{name}.pt", METRICS / f"{name}.json", PLOTS / f"{name}_history.csv")
        save_checkpoint(paths[0], s.model.cpu(), s.kind, s.model_cfg,
                        extra={"val": result.best_metrics, "epoch": result.best_epoch, "seed": s.seed})
        write_json(paths[1], metrics)
        with atomic_path(paths[2]) as tmp:
            pd.DataFrame(result.history).to_csv(tmp, index=False)
        run.log_metrics({f"best_val_{k}": v for k, v in result.best_metrics.items()})
        run.log_metrics({"train_seconds": train_seconds})
        run.log_headline({f"{name}_val_rsum": result.best_metrics.get("rsum"), f"{name}_train_seconds": train_seconds})
        for path in paths[1:]:
            run.log_artifact(path)
        log.info("%s: val rsum %.2f (epoch %d), %.1f s", name, result.best_metrics.get("rsum", float("nan")),
                 result.best_epoch, train_seconds)
    shutil.rmtree(checkpoints, ignore_errors=True)     # only an interrupted run needs it
    return result
