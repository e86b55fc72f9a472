"""Stage `distill`: features/{train,val} + models/teacher.pt -> models/student.pt (the matching head).

``--triplet-baseline`` trains the same student with the triplet loss only and no teacher (stage
`student_triplet`, the paper's "without distillation" comparison); it reads only the
architecture and optimisation keys of the `distill` section, so changing a distillation key
(temperature, mode, ...) does not re-run it.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from aladin import distributed  # noqa: E402
from aladin.config import load_section, require, shared_seed  # noqa: E402
from aladin.distillation import LossConfig, Mode, StudentLoss, student_metrics, teacher_scorer  # noqa: E402
from aladin.io import atomic_path, write_json  # noqa: E402
from aladin.models.factory import build_model, load_model, save_checkpoint  # noqa: E402
from aladin.models.matching import MatchingHead  # noqa: E402
from aladin.runtime import run_stage, seed_everything, set_threads  # noqa: E402
from aladin.store import open_split  # noqa: E402
from aladin.tracking import TrackingConfig, mlflow_run  # noqa: E402
from aladin.training import OptimConfig, fit  # noqa: E402

log = logging.getLogger("aladin")

FEATURES = Path("features")
TEACHER = Path("models/teacher.pt")
# The keys the triplet baseline depends on (declared as its params in dvc.yaml).
BASELINE_KEYS = ("model", "optim", "margin", "warmup_epochs", "device", "threads", "nproc")


@dataclass
class DistillParams:
    model: MatchingHead.Config = field(default_factory=MatchingHead.Config)
    optim: OptimConfig = field(default_factory=OptimConfig)
    mode: Mode = "distill"
    temperature: float = 1 / 6          # student side; the reference's scale 6.0
    teacher_temperature: float = 1.0    # teacher side; the reference uses the raw MrSw sums
    triplet_weight: float = 0.1         # mode distill+triplet only
    margin: float = 0.2                 # triplet hinge margin
    warmup_epochs: int = 1              # triplet: epochs over all negatives before the hardest one
    teacher_cache: bool = True          # teacher train embeddings computed once (vs a forward per batch)
    device: str = "auto"
    threads: int = 0                    # torch intra-op threads; 0 = torch's default
    nproc: int = 1                      # DDP processes (torchrun); optim.batch_size is per process

    @property
    def loss(self) -> LossConfig:
        return LossConfig(self.mode, self.temperature, self.teacher_temperature, self.triplet_weight,
                          self.margin, self.warmup_epochs)

    def validate(self) -> None:
        self.loss.validate()
        require(self.threads >= 0, "threads", "must be >= 0")
        require(self.nproc >= 1, "nproc", "must be >= 1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--triplet-baseline", action="store_true",
                        help="train the student with the triplet loss only (no teacher)")
    baseline = parser.parse_args().triplet_baseline
    name = "student_triplet" if baseline else "student"

    cfg = load_section(DistillParams, "distill")
    device = distributed.start(cfg.nproc, cfg.device, "distill.nproc")   # relaunches under torchrun if > 1
    if baseline:
        cfg = dataclasses.replace(cfg, mode="triplet")
    seed = shared_seed()
    tracking = load_section(TrackingConfig, "tracking")
    set_threads(cfg.threads)
    train, val = open_split(FEATURES, "train"), open_split(FEATURES, "val")

    seed_everything(seed)
    student = build_model("matching", cfg.model, train.manifest["d_img"], train.manifest["d_txt"])
    teacher = None
    if cfg.loss.mode != "triplet":
        teacher_model = load_model(TEACHER, device, kind="alignment")
        teacher = teacher_scorer(teacher_model, train, cached=cfg.teacher_cache)
        log.info("teacher scores %s: %.1f s setup", "cached" if cfg.teacher_cache else "online",
                 teacher.setup_seconds)

    used = dataclasses.asdict(cfg)
    used = {k: used[k] for k in BASELINE_KEYS} if baseline else used
    checkpoints = Path("checkpoints") / name
    with mlflow_run("student_triplet" if baseline else "distill", {"distill": used, "seed": seed}, tracking) as run:
        t0 = time.perf_counter()
        loss_fn = StudentLoss(cfg.loss, teacher)
        result = fit(student, loss_fn, train, lambda m: student_metrics(m, val), cfg.optim, seed, device,
                     checkpoints, run=run, config=used, on_epoch_start=loss_fn.on_epoch_start)
        train_seconds = time.perf_counter() - t0
        if not distributed.is_main():       # rank 0 writes the outputs
            return
        summary = {"val": result.best_metrics, "best_epoch": result.best_epoch,
                   "mode": cfg.loss.mode, "train_seconds": round(train_seconds, 1)}
        if teacher is not None:
            summary["teacher_seconds"] = round(teacher.setup_seconds + teacher.seconds, 1)
            log.info("teacher scoring: %.1f s setup + %.1f s over %d batches (of %.1f s training)",
                     teacher.setup_seconds, teacher.seconds, teacher.calls, train_seconds)

        save_checkpoint(Path("models") / f"{name}.pt", student, "matching", cfg.model,
                        extra={"val": result.best_metrics, "mode": cfg.loss.mode})
        write_json(Path("metrics") / f"{name}.json", summary)
        history = Path("plots") / f"{name}_history.csv"
        with atomic_path(history) as tmp:
            pd.DataFrame(result.history).to_csv(tmp, index=False)
        run.log_metrics({f"best_{k}": v for k, v in result.best_metrics.items()})
        run.log_artifact(history)
        log.info("%s: val rsum %.2f (epoch %d), %.1f s", name, result.best_metrics["rsum"],
                 result.best_epoch, train_seconds)
    shutil.rmtree(checkpoints, ignore_errors=True)     # only an interrupted run needs it


if __name__ == "__main__":
    run_stage(main)
