"""Stage `teacher`: train the alignment head on features/train, select on features/val.

Outputs: models/teacher.pt (best checkpoint), metrics/teacher.json (best val metrics),
plots/teacher_history.csv (per-epoch curves). An interrupted run resumes from
checkpoints/teacher/last.pt when params and data are unchanged; it is removed on success.
"""
from __future__ import annotations

import csv
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aladin import distributed  # noqa: E402
from aladin.config import load_section, require, shared_seed  # noqa: E402
from aladin.errors import DataError  # noqa: E402
from aladin.io import atomic_path, write_json  # noqa: E402
from aladin.losses import positive_mask, triplet_loss  # noqa: E402
from aladin.metrics import retrieval_metrics  # noqa: E402
from aladin.models.alignment import AlignmentConfig  # noqa: E402
from aladin.models.factory import build_model, save_checkpoint  # noqa: E402
from aladin.runtime import run_stage, seed_everything, set_threads  # noqa: E402
from aladin.scoring import score_store  # noqa: E402
from aladin.store import open_split  # noqa: E402
from aladin.tracking import TrackingConfig, mlflow_run  # noqa: E402
from aladin.training import OptimConfig, fit  # noqa: E402

FEATURES = Path("features")
MODEL = Path("models/teacher.pt")
METRICS = Path("metrics/teacher.json")
HISTORY = Path("plots/teacher_history.csv")
CHECKPOINTS = Path("checkpoints/teacher")


@dataclass
class TeacherParams:
    model: AlignmentConfig = field(default_factory=AlignmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    margin: float = 0.2            # triplet hinge margin
    warmup_epochs: int = 1         # epochs summing over all negatives before hardest-negative (VSE++)
    score_chunk_mb: float = 2.0    # similarity block per scoring step (cache-sized is fastest)
    device: str = "auto"
    threads: int = 0               # torch intra-op threads; 0 = torch default
    nproc: int = 1                 # DDP processes (torchrun); optim.batch_size is per process

    def validate(self) -> None:
        require(self.margin >= 0, "margin", "must be >= 0")
        require(self.warmup_epochs >= 0, "warmup_epochs", "must be >= 0")
        require(self.score_chunk_mb > 0, "score_chunk_mb", "must be > 0")
        require(self.threads >= 0, "threads", "must be >= 0")
        require(self.nproc >= 1, "nproc", "must be >= 1")


def write_history(path: Path, history: list[dict[str, float]]) -> None:
    keys = list(dict.fromkeys(k for row in history for k in row))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)


def main() -> None:
    p = load_section(TeacherParams, "teacher")
    device = distributed.start(p.nproc, p.device, "teacher.nproc")   # relaunches under torchrun if > 1
    seed = shared_seed()
    tracking = load_section(TrackingConfig, "tracking")
    set_threads(p.threads)
    train, val = open_split(FEATURES, "train"), open_split(FEATURES, "val")
    for key in ("d_img", "d_txt"):
        if train.manifest[key] != val.manifest[key]:
            raise DataError(f"{val.path}/manifest.json: {key} {val.manifest[key]} differs from train's {train.manifest[key]}")

    seed_everything(seed)
    model = build_model("alignment", p.model, train.manifest["d_img"], train.manifest["d_txt"])

    hardest = {"on": p.warmup_epochs == 0}

    def on_epoch_start(epoch):
        hardest["on"] = epoch >= p.warmup_epochs

    def loss_fn(model, batch):
        return triplet_loss(model(batch), positive_mask(batch), p.margin, hardest["on"]), {}

    def validate(model):
        return retrieval_metrics(score_store(model, val, device, p.score_chunk_mb, progress=False), val.caption_image)

    params = {"seed": seed, "teacher": asdict(p)}
    with mlflow_run("teacher", params, tracking) as run:
        result = fit(model, loss_fn, train, validate, p.optim, seed, device, CHECKPOINTS, run, "rsum",
                     config=params, on_epoch_start=on_epoch_start)
        if not distributed.is_main():       # rank 0 writes the outputs
            return
        save_checkpoint(MODEL, model.cpu(), "alignment", p.model,
                        extra={"val": result.best_metrics, "epoch": result.best_epoch, "seed": seed})
        write_json(METRICS, {"val": result.best_metrics, "best_epoch": result.best_epoch})
        write_history(HISTORY, result.history)
        run.log_metrics({f"best_val_{k}": v for k, v in result.best_metrics.items()})
        for path in (MODEL, METRICS, HISTORY):
            run.log_artifact(path)
    shutil.rmtree(CHECKPOINTS, ignore_errors=True)


if __name__ == "__main__":
    run_stage(main)
