"""The dataset manifest (dataset.json): images, their split and their captions, any source.

Format::

    {"name": str, "source": str, "captions_per_image": int,
     "images": [{"id": str, "file": str, "split": "train"|"val"|"test", "captions": [str, ...]}]}

`file` is relative to the folder holding dataset.json, or absolute. The embedded scenes and a
converted MS-COCO Karpathy split use the same format; every consumer goes through
:func:`load_dataset`, which validates it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import DataError
from ..io import read_json, write_json
from ..params import SPLITS, TRANSFER


@dataclass(frozen=True)
class ImageRecord:
    id: str
    file: Path                    # absolute
    split: str
    captions: list[str]


@dataclass(frozen=True)
class Dataset:
    name: str
    source: str
    captions_per_image: int
    images: list[ImageRecord]

    def split(self, name: str) -> list[ImageRecord]:
        if name not in (*SPLITS, TRANSFER):
            raise DataError(f"unknown split {name!r}; known: {', '.join((*SPLITS, TRANSFER))}")
        return [im for im in self.images if im.split == name]


def blank_caption(captions: Sequence[Any]) -> int | None:
    """Index of the first caption that is not a string with some text, else None: what
    :func:`load_dataset` rejects, and so what every data source must reject first."""
    return next((j for j, c in enumerate(captions) if not isinstance(c, str) or not c.strip()), None)


def _image(raw: Any, k: int, root: Path, cpi: int, path: Path) -> ImageRecord:
    where = f"{path}: images[{k}]"
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected an object")
    missing = [f for f in ("id", "file", "split", "captions") if f not in raw]
    if missing:
        raise DataError(f"{where}: missing field(s) {', '.join(missing)}")
    if not isinstance(raw["id"], str) or not raw["id"]:
        raise DataError(f"{where}: 'id' must be a non-empty string")
    where = f"{path}: image {raw['id']!r} (images[{k}])"
    if raw["split"] not in (*SPLITS, TRANSFER):
        raise DataError(f"{where}: unknown split {raw['split']!r}; known: {', '.join((*SPLITS, TRANSFER))}")
    if not isinstance(raw["file"], str) or not raw["file"]:
        raise DataError(f"{where}: 'file' must be a non-empty string")
    file = (root / raw["file"]).resolve()
    if not file.is_file():
        raise DataError(f"{where}: image file {file} not found")
    caps = raw["captions"]
    if not isinstance(caps, list) or len(caps) != cpi:
        n = len(caps) if isinstance(caps, list) else type(caps).__name__
        raise DataError(f"{where}: expected {cpi} captions, got {n}")
    j = blank_caption(caps)
    if j is not None:
        raise DataError(f"{where}: caption {j} is empty or not a string")
    return ImageRecord(raw["id"], file, raw["split"], list(caps))


def load_dataset(path: str | os.PathLike) -> Dataset:
    """Read and validate a manifest; every error names the file and the offending image."""
    path = Path(path)
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a JSON object")
    missing = [f for f in ("name", "source", "captions_per_image", "images") if f not in raw]
    if missing:
        raise DataError(f"{path}: missing field(s) {', '.join(missing)}")
    cpi = raw["captions_per_image"]
    if not isinstance(cpi, int) or isinstance(cpi, bool) or cpi < 1:
        raise DataError(f"{path}: 'captions_per_image' must be a positive integer, got {cpi!r}")
    if not isinstance(raw["images"], list):
        raise DataError(f"{path}: 'images' must be a list")
    root = path.resolve().parent
    images = [_image(im, k, root, cpi, path) for k, im in enumerate(raw["images"])]
    seen: dict[str, int] = {}
    for k, im in enumerate(images):
        if im.id in seen:
            raise DataError(f"{path}: image id {im.id!r} repeated (images[{seen[im.id]}] and images[{k}])")
        seen[im.id] = k
    for s in SPLITS:
        if not any(im.split == s for im in images):
            raise DataError(f"{path}: split {s!r} has no images")
    return Dataset(str(raw["name"]), str(raw["source"]), cpi, images)


def write_dataset(path: str | os.PathLike, name: str, source: str, captions_per_image: int,
                  images: list[ImageRecord]) -> None:
    """Atomically write a manifest; files under its folder are stored relative to it."""
    path = Path(path)
    root = path.resolve().parent

    def rel(file: Path) -> str:
        file = Path(file).resolve()
        return file.relative_to(root).as_posix() if file.is_relative_to(root) else str(file)

    write_json(path, {
        "name": name, "source": source, "captions_per_image": captions_per_image,
        "images": [{"id": im.id, "file": rel(im.file), "split": im.split, "captions": im.captions}
                   for im in images],
    })
