"""Stage `teacher`: train the alignment head on features/train, select on features/val.

Outputs: models/teacher.pt (best checkpoint), metrics/teacher.json (best val metrics),
plots/teacher_history.csv (per-epoch curves). An interrupted run resumes from
checkpoints/teacher/last.pt when params and data are unchanged; it is removed on success.
"""
from __future__ import annotations

from dataclasses import asdict
from functools import partial
from pathlib import Path

from aladin import distributed, params
from aladin.evaluation.validation import teacher_metrics
from aladin.models.factory import build_model
from aladin.runtime import run_stage, seed_everything, set_threads
from aladin.store import open_matching_splits
from aladin.training.loop import TrainSpec, train_stage
from aladin.training.losses import TripletSchedule

FEATURES = Path("features")


def main() -> None:
    p = params.load("teacher")
    device = distributed.start(p.nproc, p.device, "teacher.nproc")   # relaunches under torchrun if > 1
    seed, tracking = params.seed(), params.load("tracking")
    set_threads(p.threads)
    train, val = open_matching_splits(FEATURES, "train", "val")

    seed_everything(seed)
    model = build_model("alignment", p.model, train.manifest["d_img"], train.manifest["d_txt"])
    loss = TripletSchedule(p.margin, p.warmup_epochs)
    train_stage(TrainSpec(
        name="teacher", kind="alignment", model=model, model_cfg=p.model, loss=loss, train=train,
        validate=partial(teacher_metrics, store=val, device=device, chunk_mb=p.score_chunk_mb),
        optim=p.optim, seed=seed, device=device, params={"seed": seed, "teacher": asdict(p)},
        tracking=tracking, on_epoch_start=loss.on_epoch_start))


if __name__ == "__main__":
    run_stage(main)
