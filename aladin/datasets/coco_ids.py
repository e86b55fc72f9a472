"""COCO caption ids of the test captions, for the ECCV Caption / CxC metrics.

Karpathy's file and the precomputed releases keep the caption text but not COCO's caption id,
which is what ECCV Caption's positives are keyed by. The original annotation files
(``captions_val2014.json``: ``{"annotations": [{"image_id", "id", "caption"}]}``) give it back:
a caption is matched to an unused annotation of its image with the same normalised text.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from ..errors import DataError
from ..io import read_json

SIDECAR = "coco_ids.json"


def normalise(text: str) -> str:
    """Case, punctuation and spacing differ between releases of the same caption."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def coco_caption_ids(records: Sequence[dict[str, Any]],
                     annotation_files: Sequence[str | Path]) -> dict[str, list[int]]:
    """{image id: [COCO caption id of each of its captions, in record order]} for `records`."""
    by_image: dict[int, list[tuple[str, int]]] = {}
    for file in annotation_files:
        data = read_json(file)
        try:
            for a in data["annotations"]:
                by_image.setdefault(int(a["image_id"]), []).append((normalise(a["caption"]), int(a["id"])))
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{file}: not a COCO captions annotation file ({e!r})") from None
    names = ", ".join(str(f) for f in annotation_files)
    out: dict[str, list[int]] = {}
    for rec in records:
        try:
            candidates = list(by_image[int(rec["id"])])
        except (KeyError, ValueError):
            raise DataError(f"{names}: no captions for image {rec['id']!r} "
                            f"(image ids must be COCO ids; give captions_val2014.json)") from None
        ids = []
        for caption in rec["captions"]:
            key = normalise(caption)
            hit = next((i for i, (text, _) in enumerate(candidates) if text == key), None)
            if hit is None:
                raise DataError(f"{names}: image {rec['id']} has no caption matching {caption!r}")
            ids.append(candidates.pop(hit)[1])
        out[str(rec["id"])] = ids
    return out


def load_coco_ids(data_dir: str | Path, image_ids: Sequence[str],
                  captions_per_image: int) -> tuple[list[int], list[int]] | None:
    """(COCO image ids, COCO caption ids) of a store's images and captions (ordered image by
    image), from ``<data_dir>/coco_ids.json``; None when the data stage wrote none."""
    path = Path(data_dir) / SIDECAR
    if not path.is_file():
        return None
    mapping: dict[str, list[int]] = read_json(path)
    caption_ids: list[int] = []
    for iid in image_ids:
        ids = mapping.get(str(iid))
        if ids is None or len(ids) != captions_per_image:
            raise DataError(f"{path}: no {captions_per_image} caption ids for image {iid}")
        caption_ids += ids
    return [int(i) for i in image_ids], caption_ids
