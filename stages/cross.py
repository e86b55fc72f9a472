"""Stage `cross`: features/{train,val} -> models/cross.pt + metrics/cross.json (the cross-encoder re-ranker).

A joint model per image-text pair (by default the grounding fusion over the frozen teacher's
word-region alignment: aladin.models.cross_encoder), a residual on the teacher's score (at step 0
it ranks as the teacher), trained for how it is used: listwise in both directions on the lists the
student retrieves (models/student.pt, its top-`pool`) plus random items, with clean labels
(aladin.training.cross). On the scenes data every list item the caption parser finds true is a
positive, never a negative (with `foil_negatives`, each caption's verified foil joins its image's
list as one); on real data the same image's captions are the positives and the items the teacher
scores near the positive are left out. Model selection scores all pairs of the first
`select_images` val images each epoch, beside the same on training images; the reported metrics
score fold 0 of val exhaustively for a fixed query subsample, since every pair costs a fusion pass
(see aladin.evaluation.cross). With `enabled: false` the stage writes its outputs marked as skipped.
"""
from __future__ import annotations

import dataclasses
import logging
from functools import partial
from pathlib import Path

import numpy as np

from aladin import distributed, params
from aladin.data.oracle import oracle_truth, scene_records
from aladin.errors import ConfigError
from aladin.evaluation.cross import fold0_summary, selection_metrics
from aladin.features.query import store_backbones
from aladin.models.factory import build_model, load_model
from aladin.runtime import run_stage, seed_everything, set_threads
from aladin.store import FeatureStore, open_matching_splits
from aladin.training.cross import CrossLoss, FoilTexts, build_negatives, student_lists
from aladin.training.loop import TrainSpec, train_stage, write_skipped

log = logging.getLogger("aladin")
FEATURES, SCENES = Path("features"), Path("data/scenes.jsonl")
TEACHER, STUDENT = Path("models/teacher.pt"), Path("models/student.pt")


def scenes_of(store: FeatureStore) -> list[dict] | None:
    """The store's scene records (scenes data), None on a real dataset."""
    return scene_records(SCENES, store.image_ids)


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
    select_images = min(cfg.select_images, val.n_images, train.n_images)
    eval_images = min(cfg.eval_images, val.n_images)

    teacher = load_model(TEACHER, device, kind="alignment")
    records, val_records = scenes_of(train), scenes_of(val)
    if cfg.foil_negatives and records is None:
        raise ConfigError(f"cross.foil_negatives: true needs verified foils ({SCENES}: scenes data only)")
    truth = None if records is None else oracle_truth(records, train.captions)
    negatives = build_negatives(teacher, train, student_lists(load_model(STUDENT, device), train, cfg.pool),
                                truth, device)
    log.info("cross: the student's top %d per query; %.1f%% of its wrong images are true of the caption (%s)",
             cfg.pool, 100 * negatives.images.true.mean(), "parser" if truth is not None else "same image only")
    families = None if records is None else tuple(np.array([r["family"] for r in rs]) for rs in (val_records, records))
    foils = None
    if cfg.foil_negatives:
        foils = FoilTexts.for_store(train, records, seed, store_backbones(train, device)[0])
        log.info("cross: %.1f%% of the training captions have a verified foil", 100 * foils.coverage)
    seed_everything(seed)
    encoder = {"token_encoder": teacher} if cfg.model.inputs == "teacher_tokens" else {}
    model = build_model("cross", cfg.model, train.manifest["d_img"], train.manifest["d_txt"], **encoder)
    train_stage(TrainSpec(
        name="cross", kind="cross", model=model, model_cfg=cfg.model,
        loss=CrossLoss(train, negatives, cfg.hard_negatives, cfg.random_negatives, cfg.temperature, cfg.margin,
                       device, foils), train=train,
        validate=partial(selection_metrics, val=val, train=train, device=device, n_images=select_images,
                         batch_size=cfg.eval_batch_size, families=families),
        optim=cfg.optim, seed=seed, device=device, params={"seed": seed, "cross": dataclasses.asdict(cfg)},
        tracking=tracking,
        summary=partial(fold0_summary, store=val, device=device, select_images=select_images, eval_images=eval_images,
                        text_queries=cfg.eval_text_queries, image_queries=cfg.eval_image_queries, seed=seed,
                        batch_size=cfg.eval_batch_size)))


if __name__ == "__main__":
    run_stage(main)
