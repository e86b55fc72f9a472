"""Karpathy split files (`dataset_coco.json`, `dataset_flickr30k.json`) -> dataset.json records.

The file lists every image once: ``{"dataset": "coco", "images": [{"split", "filename",
"filepath" (COCO only), "cocoid" (COCO only), "sentences": [{"raw": ...}, ...]}, ...]}``.
Splits: COCO train 82,783 (+ restval 30,504), val 5,000, test 5,000; Flickr30K train 29,000,
val 1,014, test 1,000. Some COCO images have 6 or 7 captions: the first `captions_per_image` are
kept, as every published COCO evaluation does.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data.images import check_image
from ..data.manifest import blank_caption
from ..errors import DataError
from ..io import read_json
from ..data.manifest import SPLITS


def read_karpathy(path: str | Path) -> dict[str, Any]:
    """The parsed split file, checked to have the fields this module reads."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{path}: not a Karpathy split file (no 'images' list)")
    return data


def image_id(img: dict[str, Any]) -> str:
    """COCO images are known by their COCO id (what ECCV Caption and VinVL use); Flickr30K by file stem."""
    if "cocoid" in img:
        return str(img["cocoid"])
    return Path(img["filename"]).stem


def karpathy_records(path: str | Path, captions_per_image: int, restval: bool = True,
                     val_images: int = 0, image_root: str | Path | None = None,
                     data: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """dataset.json records ``{"id", "file", "split", "captions"}``, ordered train, val, test.

    With `image_root`, ``file`` is the absolute image path and must exist and open as an image;
    without it (the precomputed-feature sources) ``file`` is the path relative to the image folder.
    `data` is the already parsed file, if the caller has it.
    """
    path = Path(path)
    data = read_karpathy(path) if data is None else data
    rename = {"train": "train", "restval": "train" if restval else None, "val": "val", "test": "test"}
    by_split: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for row, img in enumerate(data["images"]):
        where = f"{path}: images[{row}]"
        try:
            split = rename[img["split"]]
            rel = Path(img.get("filepath", "")) / img["filename"]
            captions = [s["raw"].strip() for s in img["sentences"]]
            iid = image_id(img)
        except (KeyError, TypeError, AttributeError) as e:
            raise DataError(f"{where}: malformed record ({e!r})") from None
        if split is None:
            continue
        if len(captions) < captions_per_image:
            raise DataError(f"{where} (id {iid}): {len(captions)} captions, "
                            f"need {captions_per_image} per image")
        # What load_dataset and the features stage reject, reported here against the user's file.
        captions = captions[:captions_per_image]
        j = blank_caption(captions)
        if j is not None:
            raise DataError(f"{where} (id {iid}): sentences[{j}] is empty")
        file = rel.as_posix()
        if image_root is not None:
            file = str((Path(image_root) / rel).resolve())
            if not Path(file).is_file():
                raise DataError(f"{where} (id {iid}): image {file} not found")
            try:
                check_image(file)
            except DataError as e:
                raise DataError(f"{where} (id {iid}): image {e}") from None
        by_split[split].append({"id": iid, "file": file, "split": split, "captions": captions})
    if val_images:
        by_split["val"] = by_split["val"][:val_images]
    for split, recs in by_split.items():
        if not recs:
            raise DataError(f"{path}: the {split!r} split is empty")
    return [r for s in SPLITS for r in by_split[s]]

