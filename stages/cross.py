"""Stage `cross`: features/{train,val} -> models/cross.pt + metrics/cross.json (the cross-encoder baseline).

The kind of model ALADIN is compared with: one joint transformer per image-text pair (fusion
layers over the frozen teacher's token encoders by default), trained listwise in both directions
against the teacher's hard negatives and random ones (aladin.training.cross). Model
selection scores all pairs of the first `select_images` val images each epoch; the reported
metrics score fold 0 of val (1,000 images) exhaustively for a fixed query subsample, since every
pair costs a transformer pass (see aladin.evaluation.cross). With `enabled: false` the stage writes its
outputs marked as skipped.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch

from aladin import distributed, params
from aladin.evaluation.cross import exhaustive_metrics
from aladin.training.batching import teacher_candidates
from aladin.training.cross import list_logits
from aladin.training.losses import list_softmax_loss
from aladin.models.factory import build_model, load_model
from aladin.runtime import run_stage, seed_everything, set_threads
from aladin.store import open_matching_splits
from aladin.training.loop import train_stage, write_skipped

log = logging.getLogger("aladin")
FEATURES, TEACHER = Path("features"), Path("models/teacher.pt")


def numeric(metrics: dict) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


def main() -> None:
    cfg = params.load("cross")
    if not cfg.enabled:
        write_skipped("cross", "cross.enabled is false")
        log.info("cross: disabled, wrote skipped markers")
        return
    device = distributed.start(cfg.nproc, cfg.device, "cross.nproc")   # relaunches under torchrun if > 1
    seed, tracking = params.seed(), params.load("tracking")
    set_threads(cfg.threads)
    train, val = open_matching_splits(FEATURES, "train", "val")
    select_images = min(cfg.select_images, val.n_images)
    eval_images = min(cfg.eval_images, val.n_images)

    teacher = load_model(TEACHER, device, kind="alignment")
    candidates = teacher_candidates(teacher, train, cfg.pool, device)       # the first stage's hard negatives
    log.info("cross: teacher's top %d wrong images per caption and captions per image", cfg.pool)
    seed_everything(seed)
    encoder = {"token_encoder": teacher} if cfg.model.inputs == "teacher_tokens" else {}
    model = build_model("cross", cfg.model, train.manifest["d_img"], train.manifest["d_txt"], **encoder)

    def loss_fn(model, batch):
        # Negatives drawn from torch's RNG, which fit reseeds every epoch: a resumed run redraws the same.
        rng = np.random.default_rng(int(torch.randint(2**62, ())))
        t2i, i2t = list_logits(model, train, batch.caption_index.cpu().numpy(), candidates, cfg.hard_negatives,
                               cfg.random_negatives, rng, device)
        loss_t2i, loss_i2t = list_softmax_loss(t2i), list_softmax_loss(i2t)
        return (loss_t2i + loss_i2t) / 2, {"loss_t2i": loss_t2i.item(), "loss_i2t": loss_i2t.item()}

    def validate(model):
        return numeric(exhaustive_metrics(model, val, device, select_images, 0, 0, seed, cfg.eval_batch_size))

    def summary(model, result):
        final = exhaustive_metrics(model, val, device, eval_images, cfg.eval_text_queries,
                                   cfg.eval_image_queries, seed, cfg.eval_batch_size)
        return {"val_select_images": select_images, "val_fold0": final,
                "note": (f"val: all pairs of the first {select_images} val images (model selection); "
                         f"val_fold0: fold 0 ({eval_images} images), {int(final['t2i_queries'])} text "
                         f"queries against all images, {int(final['i2t_queries'])} image queries against "
                         "all captions" + (" (fixed random query samples: one transformer pass per pair)"
                                           if final["protocol"].endswith("subsample") else ""))}

    train_stage("cross", "cross", model, cfg.model, loss_fn, train, validate, cfg.optim, seed, device,
                {"seed": seed, "cross": dataclasses.asdict(cfg)}, tracking, summary=summary)


if __name__ == "__main__":
    run_stage(main)
