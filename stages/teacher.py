"""Stage `teacher`: train the alignment head on features/train, select on features/val.

Outputs: models/teacher.pt (best checkpoint), metrics/teacher.json (best val metrics),
plots/teacher_history.csv (per-epoch curves). An interrupted run resumes from
checkpoints/teacher/last.pt when params and data are unchanged; it is removed on success.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from aladin import distributed, params
from aladin.training.losses import TripletSchedule
from aladin.evaluation.metrics import retrieval_metrics
from aladin.models.factory import build_model
from aladin.runtime import run_stage, seed_everything, set_threads
from aladin.retrieval.store_scores import score_store
from aladin.store import open_matching_splits
from aladin.training.loop import train_stage

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

    def validate(model):
        return retrieval_metrics(score_store(model, val, device, p.score_chunk_mb, progress=False), val.caption_image)

    train_stage("teacher", "alignment", model, p.model, loss, train, validate, p.optim, seed, device,
                {"seed": seed, "teacher": asdict(p)}, tracking, on_epoch_start=loss.on_epoch_start)


if __name__ == "__main__":
    run_stage(main)
