"""Stage `distill`: features/{train,val} + models/teacher.pt -> models/student.pt (the matching head).

``--triplet-baseline`` trains the same student with the triplet loss only and no teacher (stage
`student_triplet`, the paper's "without distillation" comparison); it reads only the keys in
aladin.params.TRIPLET_BASELINE_KEYS, so changing a distillation key (temperature, mode, ...)
does not re-run it.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
from functools import partial
from pathlib import Path

from aladin import distributed, params
from aladin.evaluation.validation import student_metrics
from aladin.models.factory import load_model
from aladin.runtime import run_stage, seed_everything, set_threads
from aladin.store import open_distillation_set, open_matching_splits
from aladin.training.batching import teacher_neighbour_batches
from aladin.training.distillation import StudentLoss, build_student, reads_teacher_tokens, teacher_scorer
from aladin.training.lists import wider_lists
from aladin.training.loop import TrainSpec, train_stage

log = logging.getLogger("aladin")
DATA, FEATURES, TEACHER = Path("data"), Path("features"), Path("models/teacher.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--triplet-baseline", action="store_true",
                        help="train the student with the triplet loss only (no teacher)")
    baseline = parser.parse_args().triplet_baseline
    cfg = params.load("distill")
    device = distributed.start(cfg.nproc, cfg.device, "distill.nproc")   # relaunches under torchrun if > 1
    if baseline:
        cfg = dataclasses.replace(cfg, mode="triplet", student="transformer")
    seed, tracking = params.seed(), params.load("tracking")
    set_threads(cfg.threads)
    # The distillation set: train plus the transfer scenes (data.n_transfer); the baseline has no
    # teacher to label them, so it trains on train alone.
    train, val = open_matching_splits(FEATURES, "train", "val")
    if not baseline:
        train = open_distillation_set(FEATURES)
        log.info("distillation set: %s, %d pairs", " + ".join(train.manifest.get("parts", ["train"])), train.n_captions)

    needs_teacher = cfg.mode != "triplet" or reads_teacher_tokens(cfg)
    teacher_model = load_model(TEACHER, device, kind="alignment") if needs_teacher else None
    seed_everything(seed)
    student = build_student(cfg, train, teacher_model, seed)
    teacher, pair_order = None, None
    if cfg.mode != "triplet":
        teacher = teacher_scorer(teacher_model, train, cached=cfg.teacher_cache)
        log.info("teacher scores %s: %.1f s setup", "cached" if cfg.teacher_cache else "online",
                 teacher.setup_seconds)
        if cfg.batches.group > 1:
            pair_order = teacher_neighbour_batches(teacher_model, train, cfg.batches.group, cfg.batches.pool,
                                                   device)
    lists = None if baseline else wider_lists(cfg.lists, cfg.contrastive_weight > 0, teacher_model,
                                              train, DATA / "scenes.jsonl", device)
    loss = StudentLoss(cfg.loss, teacher, lists)
    used = dataclasses.asdict(cfg)
    if baseline:
        used = {k: used[k] for k in params.TRIPLET_BASELINE_KEYS}
    train_stage(TrainSpec(
        name="student_triplet" if baseline else "student", kind=cfg.kind, model=student, model_cfg=cfg.head_config,
        loss=loss, train=train, validate=partial(student_metrics, store=val), optim=cfg.student_optim, seed=seed,
        device=device, params={"seed": seed, "distill": used}, tracking=tracking,
        on_epoch_start=loss.on_epoch_start, summary=loss.summary, pair_order=pair_order))


if __name__ == "__main__":
    run_stage(main)
