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
from functools import partial
from pathlib import Path

from aladin import distributed, params
from aladin.evaluation.cross import fold0_summary, selection_metrics
from aladin.models.factory import build_model, load_model
from aladin.runtime import run_stage, seed_everything, set_threads
from aladin.store import open_matching_splits
from aladin.training.batching import teacher_candidates
from aladin.training.cross import CrossLoss
from aladin.training.loop import TrainSpec, train_stage, write_skipped

log = logging.getLogger("aladin")
FEATURES, TEACHER = Path("features"), Path("models/teacher.pt")


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
    train_stage(TrainSpec(
        name="cross", kind="cross", model=model, model_cfg=cfg.model,
        loss=CrossLoss(train, candidates, cfg.hard_negatives, cfg.random_negatives, device), train=train,
        validate=partial(selection_metrics, store=val, device=device, n_images=select_images, seed=seed,
                         batch_size=cfg.eval_batch_size),
        optim=cfg.optim, seed=seed, device=device, params={"seed": seed, "cross": dataclasses.asdict(cfg)},
        tracking=tracking,
        summary=partial(fold0_summary, store=val, device=device, select_images=select_images, eval_images=eval_images,
                        text_queries=cfg.eval_text_queries, image_queries=cfg.eval_image_queries, seed=seed,
                        batch_size=cfg.eval_batch_size)))


if __name__ == "__main__":
    run_stage(main)
