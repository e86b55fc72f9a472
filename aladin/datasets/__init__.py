"""Real datasets (MS-COCO, Flickr30K) as dataset.json manifests, plus precomputed region features.

Sources (params `data.source`): ``karpathy`` (images + Karpathy split file: the features stage
runs the configured backbones), ``precomp`` (SCAN/VSE++ bottom-up .npy) and ``vinvl_tsv``
(VinVL features.tsv); the last two bypass the vision backbone through
:func:`open_precomputed` / :func:`write_region_features`. The embedded ``scenes`` source lives
in aladin.data.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from ..data.manifest import SPLITS, ImageRecord
from ..errors import ConfigError
from ..io import write_json
from .coco_ids import SIDECAR as COCO_IDS, coco_caption_ids, load_coco_ids
from ..params import KarpathyConfig, PrecompConfig, VinvlTsvConfig
from .eccv import eccv_metrics, eccv_metrics_from_topk
from .karpathy import karpathy_records, read_karpathy
from .precomp import precomp_records
from .regions import SIDECAR as PRECOMPUTED, RegionSource, open_precomputed, write_region_features
from .vinvl import vinvl_records

SOURCES = ("karpathy", "precomp", "vinvl_tsv")

__all__ = ["SOURCES", "KarpathyConfig", "PrecompConfig", "VinvlTsvConfig", "prepare", "dataset_stats",
           "PRECOMPUTED", "RegionSource", "open_precomputed", "write_region_features", "COCO_IDS",
           "load_coco_ids", "eccv_metrics", "eccv_metrics_from_topk"]


def prepare(source: str, cfg: KarpathyConfig | PrecompConfig | VinvlTsvConfig, captions_per_image: int,
            out_dir: str | Path) -> tuple[str, list[ImageRecord]]:
    """(dataset name, manifest records) of a real source; writes its sidecars into `out_dir`.

    Sidecars: ``precomputed.json`` (precomp, vinvl_tsv) for the features stage, and
    ``coco_ids.json`` (when `cfg.coco_captions` is given) for the ECCV Caption metrics.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown real-data source {source!r} (one of {SOURCES})")
    try:
        cfg.check_selected()
    except ConfigError as e:
        raise ConfigError(f"data.{source}.{e}") from None
    out_dir = Path(out_dir)
    precomputed = None
    if source == "karpathy":
        data = read_karpathy(cfg.annotations)
        name = str(data.get("dataset", Path(cfg.annotations).stem))
        records = karpathy_records(cfg.annotations, captions_per_image, cfg.restval, cfg.val_images,
                                   image_root=cfg.images, data=data)
    elif source == "precomp":
        name = Path(cfg.root).resolve().name
        records, precomputed = precomp_records(cfg, captions_per_image)
    else:
        name = Path(cfg.features).resolve().parent.name
        records, precomputed = vinvl_records(cfg, captions_per_image)
    if precomputed is not None:
        write_json(out_dir / PRECOMPUTED, precomputed)
    if cfg.coco_captions:
        test = [r for r in records if r["split"] == "test"]
        write_json(out_dir / COCO_IDS, coco_caption_ids(test, cfg.coco_captions))
    return name, [ImageRecord(r["id"], Path(r["file"]), r["split"], r["captions"]) for r in records]


def dataset_stats(images: list[ImageRecord]) -> dict[str, Any]:
    """metrics/data.json of a real dataset: split sizes and caption statistics."""
    captions = [c for im in images for c in im.captions]
    return {
        "images": {s: sum(im.split == s for im in images) for s in SPLITS},
        "captions": len(captions),
        "caption_words": round(float(np.mean([len(c.split()) for c in captions])), 2),
        "vocabulary": len({w for c in captions for w in re.findall(r"[a-z'-]+", c.lower())}),
    }
