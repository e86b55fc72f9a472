"""Stage `cross`: features/{train,val} -> models/cross.pt + metrics/cross.json (the cross-encoder baseline).

The kind of model ALADIN is compared with: one joint transformer per image-text pair, trained
with binary cross-entropy on positives, mined hard negatives and random negatives. Model
selection scores all pairs of the first `select_images` val images each epoch; the reported
metrics score fold 0 of val (1,000 images) exhaustively for a fixed query subsample, since every
pair costs a transformer pass (see aladin.cross_eval). With `enabled: false` the stage writes its
outputs marked as skipped.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from aladin import distributed  # noqa: E402
from aladin.config import load_section, require, shared_seed  # noqa: E402
from aladin.cross_eval import exhaustive_metrics, save_skipped  # noqa: E402
from aladin.io import atomic_path, write_json  # noqa: E402
from aladin.losses import pair_bce_loss  # noqa: E402
from aladin.models.cross_encoder import CrossEncoder, mined_pair_logits  # noqa: E402
from aladin.models.factory import build_model, save_checkpoint  # noqa: E402
from aladin.runtime import run_stage, seed_everything, set_threads  # noqa: E402
from aladin.store import open_split  # noqa: E402
from aladin.tracking import TrackingConfig, mlflow_run  # noqa: E402
from aladin.training import OptimConfig, fit  # noqa: E402

log = logging.getLogger("aladin")

FEATURES = Path("features")
MODEL, METRICS, HISTORY = Path("models/cross.pt"), Path("metrics/cross.json"), Path("plots/cross_history.csv")


@dataclass
class CrossParams:
    enabled: bool = True
    model: CrossEncoder.Config = field(default_factory=CrossEncoder.Config)
    optim: OptimConfig = field(default_factory=OptimConfig)
    mine_candidates: int = 4        # hard negative: best-scoring of this many random wrong in-batch images
    select_images: int = 50         # per-epoch selection: all pairs of the first N val images
    eval_images: int = 1000         # reported metrics: fold 0 of val, this many images
    eval_text_queries: int = 100    # sampled captions, each against all eval_images images (0 = all)
    eval_image_queries: int = 10    # sampled images, each against all fold captions (0 = all)
    eval_batch_size: int = 2048     # pairs per transformer pass when scoring
    device: str = "auto"
    threads: int = 0                # torch intra-op threads; 0 = torch's default
    nproc: int = 1                  # DDP processes (torchrun); optim.batch_size is per process

    def validate(self) -> None:
        require(self.mine_candidates >= 1, "mine_candidates", "must be >= 1")
        require(self.optim.batch_size >= self.mine_candidates + 2, "optim.batch_size",
                "must exceed mine_candidates + 1 (wrong images to mine and draw from)")
        for name in ("select_images", "eval_images", "eval_batch_size"):
            require(getattr(self, name) >= 2, name, "must be >= 2")
        for name in ("eval_text_queries", "eval_image_queries", "threads"):
            require(getattr(self, name) >= 0, name, "must be >= 0")
        require(self.nproc >= 1, "nproc", "must be >= 1")


def numeric(metrics: dict) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


def main() -> None:
    cfg = load_section(CrossParams, "cross")
    if not cfg.enabled:
        save_skipped(MODEL, "cross.enabled is false")
        write_json(METRICS, {"skipped": True, "reason": "cross.enabled is false"})
        with atomic_path(HISTORY) as tmp:
            pd.DataFrame(columns=["epoch"]).to_csv(tmp, index=False)
        log.info("cross: disabled, wrote skipped markers")
        return
    device = distributed.start(cfg.nproc, cfg.device, "cross.nproc")   # relaunches under torchrun if > 1
    seed = shared_seed()
    tracking = load_section(TrackingConfig, "tracking")
    set_threads(cfg.threads)
    train, val = open_split(FEATURES, "train"), open_split(FEATURES, "val")
    select_images = min(cfg.select_images, val.n_images)
    eval_images = min(cfg.eval_images, val.n_images)

    seed_everything(seed)
    model = build_model("cross", cfg.model, train.manifest["d_img"], train.manifest["d_txt"])

    def loss_fn(model, batch):
        # Negatives drawn from torch's RNG, which fit reseeds every epoch: a resumed run redraws the same.
        rng = np.random.default_rng(int(torch.randint(2**62, ())))
        logits, labels = mined_pair_logits(model, batch, cfg.mine_candidates, rng)
        return pair_bce_loss(logits, labels), {}

    def validate(model):
        return numeric(exhaustive_metrics(model, val, device, select_images, 0, 0, seed, cfg.eval_batch_size))

    used = dataclasses.asdict(cfg)
    with mlflow_run("cross", {"cross": used, "seed": seed}, tracking) as run:
        t0 = time.perf_counter()
        result = fit(model, loss_fn, train, validate, cfg.optim, seed, device, Path("checkpoints") / "cross",
                     run=run, config=used)
        train_seconds = time.perf_counter() - t0
        if not distributed.is_main():       # rank 0 evaluates and writes the outputs
            return
        final = exhaustive_metrics(model, val, device, eval_images, cfg.eval_text_queries,
                                   cfg.eval_image_queries, seed, cfg.eval_batch_size)
        summary = {
            "val": final, "best_epoch": result.best_epoch, "train_seconds": round(train_seconds, 1),
            f"val_select_{select_images}img": result.best_metrics,
            "note": (f"exhaustive cross-encoder scoring of val fold 0 ({eval_images} images): "
                     f"{int(final['t2i_queries'])} text queries against all images, "
                     f"{int(final['i2t_queries'])} image queries against all captions"
                     + (" (fixed random query samples: one transformer pass per pair, the full "
                        "protocol does not fit the budget)" if final["protocol"].endswith("subsample") else "")),
        }
        save_checkpoint(MODEL, model, "cross", cfg.model, extra={"val": numeric(final)})
        write_json(METRICS, summary)
        with atomic_path(HISTORY) as tmp:
            pd.DataFrame(result.history).to_csv(tmp, index=False)
        run.log_metrics({f"final_{k}": v for k, v in numeric(final).items()})
        run.log_artifact(HISTORY)
        log.info("cross: val %s rsum %.1f, %.1f s training", final["protocol"], final["rsum"], train_seconds)


if __name__ == "__main__":
    run_stage(main)
