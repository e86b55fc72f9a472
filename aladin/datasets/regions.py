"""Precomputed region features: the hand-off from the data stage to the features stage.

For the `precomp` and `vinvl_tsv` sources the data stage writes ``data/precomputed.json``
(format, feature width, region count, file locations); the features stage then fills the image
side of each store from those files instead of running the vision backbone. Images are read one
at a time (mmap / one TSV row), so memory stays at one batch whatever the dataset size.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import numpy as np
from tqdm import tqdm

from ..errors import DataError
from ..io import read_json
from ..store import StoreWriter
from .precomp import PrecompRegions, Regions
from .vinvl import VinvlRegions

SIDECAR = "precomputed.json"


class RegionSource(Protocol):
    dim: int            # appearance width D of each region vector
    max_regions: int    # R: the store's region axis

    def read(self, split: str, image_ids: Sequence[str]) -> Iterator[Regions]:
        """(regions (r, D), boxes (r, 6), r) per image of `image_ids`, in that order; r <= R."""
        ...


def open_precomputed(data_dir: str | Path) -> RegionSource | None:
    """The region source described by ``<data_dir>/precomputed.json``; None for image datasets."""
    path = Path(data_dir) / SIDECAR
    if not path.is_file():
        return None
    desc: dict[str, Any] = read_json(path)
    readers = {"precomp": PrecompRegions, "vinvl_tsv": VinvlRegions}
    if desc.get("format") not in readers:
        raise DataError(f"{path}: unknown format {desc.get('format')!r} (expected one of {sorted(readers)})")
    return readers[desc["format"]](desc, path)


def write_region_features(writer: StoreWriter, source: RegionSource, split: str,
                          image_ids: Sequence[str], batch_size: int = 256) -> None:
    """Fill the image side of `writer` (made with source.max_regions, source.dim) for `split`."""
    n, r, d = len(image_ids), source.max_regions, source.dim
    regions = np.zeros((batch_size, r, d), dtype=np.float16)
    boxes = np.zeros((batch_size, r, 6), dtype=np.float32)
    counts = np.zeros(batch_size, dtype=np.int32)
    start = fill = 0
    for feats, box, count in tqdm(source.read(split, image_ids), total=n, desc=f"regions {split}",
                                  unit="img", mininterval=5):
        if feats.shape[1] != d:
            raise DataError(f"{split} image {image_ids[start + fill]}: regions of width {feats.shape[1]}, "
                            f"the store expects {d}")
        regions[fill] = 0
        boxes[fill] = 0
        regions[fill, :count], boxes[fill, :count], counts[fill] = feats[:count], box[:count], count
        fill += 1
        if fill == batch_size:
            writer.write_images(start, regions, boxes, counts)
            start, fill = start + fill, 0
    if fill:
        writer.write_images(start, regions[:fill], boxes[:fill], counts[:fill])
    if start + fill != n:
        raise DataError(f"{split}: precomputed features gave {start + fill} images, the manifest lists {n}")
