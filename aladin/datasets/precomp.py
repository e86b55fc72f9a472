"""SCAN / VSE++ precomputed bottom-up-attention features (the `coco_precomp` / `f30k_precomp` folders).

Per split prefix ``name``: ``{name}_ims.npy`` float32 (N, 36, 2048), ``{name}_caps.txt`` with
captions ordered image by image (5 per image), optionally ``{name}_ids.txt`` with one image id
per line. Some releases repeat each image row once per caption (N = number of captions): then
every 5th row is read. The files carry no boxes: the store gets all-zero boxes. There are no
image files either: each manifest record's ``file`` is the .npy holding its features.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import DataError
from ..io import load_array
from ..data.manifest import SPLITS
from ..params import PrecompConfig

Regions = tuple[np.ndarray, np.ndarray, int]  # (R, D) appearance, (R, 6) boxes, valid count


def _load_ims(file: Path) -> np.ndarray:
    if not file.is_file():
        raise DataError(f"{file}: precomputed features not found")
    ims = load_array(file)
    if ims.ndim != 3:
        raise DataError(f"{file}: expected (images, regions, width) features, got shape {ims.shape}")
    return ims


def _read_lines(file: Path) -> list[str]:
    if not file.is_file():
        raise DataError(f"{file}: file not found")
    return [line.strip() for line in file.read_text(encoding="utf-8").splitlines()]


def precomp_records(cfg: PrecompConfig, captions_per_image: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """dataset.json records (ordered train, val, test) and the region-source description."""
    root = Path(cfg.root).resolve()
    cpi = captions_per_image
    records: list[dict[str, Any]] = []
    splits: dict[str, Any] = {}
    dim = regions = None
    for split in SPLITS:
        name = getattr(cfg, split)
        ims_file, caps_file = root / f"{name}_ims.npy", root / f"{name}_caps.txt"
        ims = _load_ims(ims_file)
        caps = _read_lines(caps_file)
        if len(caps) == cpi * len(ims):
            stride, n = 1, len(ims)
        elif len(caps) == len(ims) and len(caps) % cpi == 0:
            stride, n = cpi, len(caps) // cpi        # one image row per caption
        else:
            raise DataError(f"{caps_file}: {len(caps)} captions for the {len(ims)} images of {ims_file}; "
                            f"expected {cpi} per image")
        if n == 0:
            raise DataError(f"{ims_file}: the {split!r} split is empty")
        if any(not c for c in caps):
            raise DataError(f"{caps_file}: line {caps.index('') + 1} is an empty caption")
        if dim is None:
            dim, regions = ims.shape[2], ims.shape[1]
        elif ims.shape[1:] != (regions, dim):
            raise DataError(f"{ims_file}: features of shape {ims.shape[1:]}, "
                            f"the {getattr(cfg, SPLITS[0])} split has {(regions, dim)}")
        ids_file = root / f"{name}_ids.txt"
        ids = _read_lines(ids_file) if ids_file.is_file() else [f"{name}_{i}" for i in range(n)]
        if len(ids) == len(caps) != n:
            ids = ids[::cpi]                         # one id per caption
        if len(ids) != n:
            raise DataError(f"{ids_file}: {len(ids)} ids for {n} images")
        if split == "val" and cfg.val_images:
            n = min(n, cfg.val_images)
        records += [{"id": ids[i], "file": str(ims_file), "split": split,
                     "captions": caps[i * cpi:(i + 1) * cpi]} for i in range(n)]
        splits[split] = {"file": str(ims_file), "stride": stride, "count": n}
    return records, {"format": "precomp", "dim": int(dim), "max_regions": int(regions), "splits": splits}


class PrecompRegions:
    """Memory-mapped reader of the precomputed features, in dataset.json order."""

    def __init__(self, desc: dict[str, Any], where: Path) -> None:
        self.desc, self.where = desc, where
        self.dim, self.max_regions = int(desc["dim"]), int(desc["max_regions"])

    def read(self, split: str, image_ids: Sequence[str]) -> Iterator[Regions]:
        info = self.desc["splits"][split]
        file = Path(info["file"])
        ims = _load_ims(file)
        if ims.shape[2] != self.dim:
            raise DataError(f"{file}: regions of width {ims.shape[2]}, {self.where} says {self.dim}")
        stride, count = int(info["stride"]), int(info["count"])
        if len(image_ids) != count or (count - 1) * stride >= len(ims):
            raise DataError(f"{file}: {len(ims)} rows do not hold the {len(image_ids)} {split} images "
                            f"of the dataset manifest (regenerate it: dvc repro data)")
        boxes = np.zeros((ims.shape[1], 6), dtype=np.float32)
        for i in range(count):
            yield np.asarray(ims[i * stride], dtype=np.float32), boxes, ims.shape[1]
