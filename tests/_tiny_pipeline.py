"""A tiny but real pipeline output (dataset, features, student, teacher, index) for search tests.

The dataset is made easy on purpose: one coloured shape on white, captions naming its colour
and shape; every test image has its own colour. A student trained for a few seconds with the
triplet loss (real backbones, real training loop) then ranks the right test image first for a
test caption, so end-to-end tests can check correctness, not only plumbing. The teacher is an
untrained alignment head: it exercises the re-ranking path, not its quality.

    root = build_tiny_pipeline(tmp)   # -> tmp/{data, features, models/{student,teacher}.pt, index}
"""
from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from aladin.data.manifest import ImageRecord, write_dataset
from aladin.evaluation.validation import student_metrics
from aladin.training.distillation import LossConfig, StudentLoss
from aladin.retrieval.encode import encode_images, encode_texts
from aladin.features import extract_features
from aladin.io import sha256_file
from aladin.retrieval.index import IndexConfig, save_index_dir
from aladin.io import write_json
from aladin.models.alignment import AlignmentConfig
from aladin.models.factory import build_model, save_checkpoint
from aladin.models.matching import MatchingHead
from aladin.store import open_split
from aladin.training.loop import OptimConfig, fit
from tests._params import section

COLOURS = {"red": (220, 30, 30), "green": (30, 160, 40), "blue": (30, 60, 220), "yellow": (240, 220, 30),
           "purple": (130, 40, 170), "orange": (250, 140, 20), "black": (15, 15, 15), "cyan": (40, 210, 230)}
SHAPES = ("circle", "square", "triangle")
SIZE = 64
SEED = 0
RERANK_K = 6                     # two-stage depth of the tiny system (8 test images)


def captions(colour: str, shape: str) -> list[str]:
    a = "an" if colour[0] in "aeiou" else "a"
    return [f"{a} {colour} {shape}", f"{a} {colour} {shape} on a white background", f"one {colour} {shape}",
            f"the {shape} is {colour}", f"a picture of {a} {colour} {shape}"]


def render(colour: str, shape: str, rng: np.random.Generator) -> Image.Image:
    img = Image.new("RGB", (SIZE, SIZE), "white")
    r = int(rng.integers(18, 27))
    cx, cy = (int(v) for v in rng.integers(r + 2, SIZE - r - 2, size=2))
    box = (cx - r, cy - r, cx + r, cy + r)
    draw, fill = ImageDraw.Draw(img), COLOURS[colour]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def write_tiny_dataset(root: Path, renders_per_combo: int = 4) -> Path:
    """Train: every colour x shape, several renders; val and test: one image per colour."""
    rng = np.random.default_rng(SEED)
    folder = root / "data" / "images"
    folder.mkdir(parents=True, exist_ok=True)
    records = []

    def add(split: str, colour: str, shape: str, n: int) -> None:
        name = f"{split}_{len(records):03d}_{colour}_{shape}"
        render(colour, shape, rng).save(folder / f"{name}.png")
        records.append(ImageRecord(name, folder / f"{name}.png", split, captions(colour, shape)))

    for colour in COLOURS:
        for shape in SHAPES:
            for i in range(renders_per_combo):
                add("train", colour, shape, i)
    for split, offset in (("val", 1), ("test", 0)):
        for i, colour in enumerate(COLOURS):
            add(split, colour, SHAPES[(i + offset) % len(SHAPES)], 0)
    path = root / "data" / "dataset.json"
    write_dataset(path, "tiny-shapes", "tests", 5, records)
    return path


def build_tiny_pipeline(root: Path, epochs: int = 12) -> Path:
    """Every artifact the Retriever reads, under `root`; returns `root`."""
    torch.set_num_threads(1)         # reproducible training, and polite on a shared machine
    torch.manual_seed(SEED)
    dataset = write_tiny_dataset(root)
    extract_features(section("features", image_size=SIZE, max_tokens=16, num_workers=0, device="cpu"),
                     dataset, root / "features", torch.device("cpu"))
    train, val, test = (open_split(root / "features", s) for s in ("train", "val", "test"))
    d_img, d_txt = int(train.manifest["d_img"]), int(train.manifest["d_txt"])

    cfg = MatchingHead.Config(d_model=64, layers=1, heads=2, ff=128, dropout=0.0, dim=64)
    student = build_model("matching", cfg, d_img, d_txt)
    loss = StudentLoss(LossConfig(mode="triplet", warmup_epochs=0), None)
    fit(student, loss, train,
        validate=lambda m: student_metrics(m, val),
        optim_cfg=OptimConfig(lr_decay_epochs=[], epochs=epochs, batch_size=32, lr=1e-3),
        seed=SEED, device="cpu", checkpoint_dir=None, on_epoch_start=loss.on_epoch_start)
    models = root / "models"
    save_checkpoint(models / "student.pt", student, "matching", cfg)
    teacher_cfg = AlignmentConfig(d=32, layers=0, heads=4, ff=64)
    save_checkpoint(models / "teacher.pt", build_model("alignment", teacher_cfg, d_img, d_txt), "alignment",
                    teacher_cfg)

    provenance = {"model": {"path": str(models / "student.pt"), "sha256": sha256_file(models / "student.pt")}}
    save_index_dir(root / "index", encode_images(student, test), encode_texts(student, test),
                   IndexConfig(kind="flat"), SEED, provenance)
    write_json(root / "metrics" / "eval.json", {"two_stage": {"rerank_k": RERANK_K}})   # the evaluated depth
    return root


@functools.cache
def shared_tiny_pipeline() -> Path:
    """The tiny pipeline, built once per test session for every module that asks (removed at exit)."""
    root = Path(tempfile.mkdtemp(prefix="aladin-tiny-"))
    atexit.register(shutil.rmtree, root, True)
    return build_tiny_pipeline(root)
