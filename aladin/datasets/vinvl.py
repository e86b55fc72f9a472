"""VinVL region features: ``features.tsv`` + ``imageid2idx.json`` (+ captions from another file).

Each TSV row is ``image_id <TAB> box_count <TAB> base64(float32 (box_count, dim + 6))``: per box
the ``dim`` appearance values, then 6 box values (normalised corners, width, height). The file is
tens of GB for COCO, so it is never loaded: rows are reached by byte offset (VinVL's
``features.lineidx`` when present, else one scan) and decoded one at a time.
"""
from __future__ import annotations

import base64
import binascii
import logging
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ..data.manifest import blank_caption
from ..errors import DataError
from ..io import read_json
from ..data.manifest import SPLITS
from ..params import VinvlTsvConfig
from .karpathy import karpathy_records
from .precomp import Regions

log = logging.getLogger("aladin")


def _imageid2idx_path(cfg: VinvlTsvConfig) -> Path:
    return Path(cfg.imageid2idx or Path(cfg.features).with_name("imageid2idx.json")).resolve()


def _load_captions(file: Path) -> dict[str, list[str]]:
    """{image_id: [captions]} from JSON or VinVL's ``{split}_captions.pt``."""
    if not file.is_file():
        raise DataError(f"{file}: captions file not found")
    if file.suffix == ".pt":
        try:
            caps = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several unrelated types for a bad file
            raise DataError(f"{file}: unreadable captions file ({e})") from e
    else:
        caps = read_json(file)
    if not isinstance(caps, dict):
        raise DataError(f"{file}: expected a mapping image_id -> [captions]")
    return {str(k): v if isinstance(v, list) else [v] for k, v in caps.items()}


def _split_records(cfg: VinvlTsvConfig, captions_per_image: int) -> list[dict[str, Any]]:
    records = []
    for split in SPLITS:
        file = Path(getattr(cfg, f"{split}_captions"))
        items = list(_load_captions(file).items())
        if split == "val" and cfg.val_images:
            items = items[:cfg.val_images]
        if not items:
            raise DataError(f"{file}: the {split!r} split is empty")
        for iid, caps in items:
            if len(caps) < captions_per_image:
                raise DataError(f"{file}: image {iid} has {len(caps)} captions, need {captions_per_image}")
            kept = [str(c).strip() for c in caps[:captions_per_image]]
            j = blank_caption(kept)
            if j is not None:
                raise DataError(f"{file}: image {iid} caption {j} is empty")
            records.append({"id": iid, "file": "", "split": split, "captions": kept})
    return records


def vinvl_records(cfg: VinvlTsvConfig, captions_per_image: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """dataset.json records and the region-source description; every image must be in the TSV."""
    tsv = Path(cfg.features).resolve()
    if not tsv.is_file():
        raise DataError(f"{tsv}: features file not found")
    if cfg.captions:
        records = karpathy_records(cfg.captions, captions_per_image, cfg.restval, cfg.val_images)
    else:
        records = _split_records(cfg, captions_per_image)
    for r in records:
        r["file"] = str(tsv)              # no image files: the manifest points at the features
    index_file = _imageid2idx_path(cfg)
    index = read_json(index_file)
    missing = [r["id"] for r in records if r["id"] not in index]
    if missing:
        raise DataError(f"{index_file}: {len(missing)} images of the captions have no features "
                        f"(first: {missing[0]})")
    return records, {"format": "vinvl_tsv", "features": str(tsv), "imageid2idx": str(index_file),
                     "dim": cfg.dim, "max_regions": cfg.max_regions}


def line_offsets(tsv: Path) -> np.ndarray:
    """Byte offset of every row: ``features.lineidx`` if present, else one streaming scan."""
    lineidx = tsv.with_suffix(".lineidx")
    if lineidx.is_file():
        return np.loadtxt(lineidx, dtype=np.int64, ndmin=1)
    log.info("%s: no %s, scanning the file for row offsets", tsv, lineidx.name)
    offsets, pos = [], 0
    with open(tsv, "rb") as f:
        for line in f:
            offsets.append(pos)
            pos += len(line)
    return np.asarray(offsets, dtype=np.int64)


def parse_row(line: bytes, dim: int, where: str) -> tuple[str, np.ndarray]:
    """One TSV row -> (image id, float32 (box_count, dim + 6)); `where` names file and row in errors."""
    parts = line.rstrip(b"\r\n").split(b"\t")
    if len(parts) != 3:
        raise DataError(f"{where}: expected 3 tab-separated fields, got {len(parts)}")
    try:
        count = int(parts[1])
    except ValueError:
        raise DataError(f"{where}: box count {parts[1][:20]!r} is not an integer") from None
    if count < 1:
        raise DataError(f"{where}: no boxes")
    try:
        buf = base64.b64decode(parts[2], validate=True)
    except (binascii.Error, ValueError) as e:
        raise DataError(f"{where}: undecodable base64 features ({e})") from None
    width = dim + 6
    if len(buf) % 4 or len(buf) // 4 != count * width:
        raise DataError(f"{where}: box count {count} does not match the {len(buf) / 4:g} floats "
                        f"decoded ({count} x {width} expected; is data.vinvl_tsv.dim right?)")
    return parts[0].decode(), np.frombuffer(buf, dtype=np.float32).reshape(count, width)


class VinvlRegions:
    """Streams the TSV rows of a split's images, in dataset.json order."""

    def __init__(self, desc: dict[str, Any], where: Path) -> None:
        self.tsv, self.index_file = Path(desc["features"]), Path(desc["imageid2idx"])
        self.dim, self.max_regions = int(desc["dim"]), int(desc["max_regions"])

    def read(self, split: str, image_ids: Sequence[str]) -> Iterator[Regions]:
        index = read_json(self.index_file)
        offsets = line_offsets(self.tsv)
        with open(self.tsv, "rb") as f:
            for iid in image_ids:
                row = index.get(iid)
                if row is None or not 0 <= int(row) < len(offsets):
                    raise DataError(f"{self.index_file}: image {iid} has no row in {self.tsv}")
                f.seek(int(offsets[int(row)]))
                where = f"{self.tsv}: row {row}"
                rid, feats = parse_row(f.readline(), self.dim, where)
                if rid != iid:
                    raise DataError(f"{where}: holds image {rid}, but {self.index_file.name} maps {iid} to it")
                feats = feats[:self.max_regions]
                yield feats[:, :self.dim], feats[:, self.dim:], len(feats)
