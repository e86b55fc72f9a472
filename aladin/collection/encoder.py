"""The models that embed a collection, named by a picklable :class:`ModelSpec` so that every engine
(in-process, or each Ray actor) builds the same encoder: the pipeline's vision backbone (the
feature store's params, on its runtime) + a trained student (+ the teacher for ``--rerank``).

Images go through :func:`aladin.features.image_batch` and ``student.embed_images``, the very calls
of a query image at search time: a collection image searched with itself scores its own cosine.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from ..features import image_batch, load_vision_backbone
from ..io import read_json, sha256_file
from ..models.factory import STUDENTS, load_model

BACKBONE_PARAMS = ("vision_backbone", "image_size", "efficientnet_blocks", "runtime", "text_backbone", "max_tokens")


@dataclass(frozen=True)
class ModelSpec:
    student: str                       # checkpoint path
    student_sha256: str
    backbone: dict[str, Any]           # BACKBONE_PARAMS of the feature store the student was trained on
    teacher: str | None = None         # set: keep the teacher's region tokens (two-stage re-ranking)
    teacher_sha256: str | None = None
    device: str = "cpu"
    threads: int = 0                   # torch threads in the process that encodes (0: leave as is)
    dataset: str = ""                  # what the student was trained on ("scenes": the embedded data)

    @property
    def key(self) -> str:
        """What an embedding depends on: shards made under another key are not reused."""
        what = {"student": self.student_sha256, "teacher": self.teacher_sha256, "backbone": self.backbone}
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def model_spec(root: str | Path = ".", model: str | Path | None = None, rerank: bool = False,
               split: str = "test", device: str = "cpu", threads: int = 0) -> ModelSpec:
    """The spec of pipeline root `root`: its student (or `model`), the backbones of its feature
    store `split`, and its teacher when `rerank`."""
    root = Path(root)
    student = Path(model) if model is not None else root / "models" / "student.pt"
    if not student.is_file():
        raise DataError(f"{student}: student checkpoint not found (train the pipeline or pass --model)")
    store_manifest = root / "features" / split / "manifest.json"
    store = read_json(store_manifest)
    params = store.get("params", {})
    missing = [k for k in ("vision_backbone", "image_size", "text_backbone", "max_tokens") if k not in params]
    if missing:
        raise DataError(f"{store_manifest}: params lack {', '.join(missing)}, cannot rebuild the backbones")
    backbone = {"efficientnet_blocks": [], "runtime": "torch",
                **{k: params[k] for k in BACKBONE_PARAMS if k in params}}
    teacher = root / "models" / "teacher.pt" if rerank else None
    if teacher is not None and not teacher.is_file():
        raise DataError(f"{teacher}: --rerank keeps the teacher's region tokens, and the teacher is missing")
    return ModelSpec(str(student.resolve()), sha256_file(student), backbone,
                     str(teacher.resolve()) if teacher else None, sha256_file(teacher) if teacher else None,
                     device, threads, str(store.get("dataset", "")))


class Encoder:
    """Images -> (student embeddings float32 (B, D), teacher region tokens float16 (B, R, d) | None)."""

    def __init__(self, spec: ModelSpec) -> None:
        if spec.threads > 0:
            torch.set_num_threads(spec.threads)
        self.device = torch.device(spec.device)
        b = spec.backbone
        self.vision = load_vision_backbone(b["vision_backbone"], b["image_size"], self.device,
                                           b["efficientnet_blocks"], b["runtime"])
        self.student = load_model(spec.student, self.device, kind=STUDENTS).eval()
        self.teacher = load_model(spec.teacher, self.device, kind="alignment").eval() if spec.teacher else None
        self.dim = int(self.student.dim)

    @torch.inference_mode()
    def __call__(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray | None]:
        if not images:
            return np.zeros((0, self.dim), np.float32), None
        batch = image_batch(self.vision, list(images))
        emb = self.student.embed_images(batch).float().cpu().numpy()
        if self.teacher is None:
            return emb, None
        tokens, mask = self.teacher.embed_images(batch)
        if not bool(mask.all()):        # grid backbones give every image all R regions
            raise DataError("collection re-ranking: the teacher masked some regions; only fixed-grid "
                            "vision backbones are supported")
        return emb, tokens.half().cpu().numpy()
