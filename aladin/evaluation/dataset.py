"""The data stage's metrics: dataset statistics, and the non-learned reference rows (chance,
bag-of-words, colour histogram) on the test split, under the same protocols as every model row.
"""
from __future__ import annotations

import logging
import math
import re
from typing import Any

import numpy as np

from ..data.baselines import bow_scores, colour_scores
from ..data.generate import verify_captions
from ..data.manifest import ImageRecord
from ..params import SPLITS, TRANSFER
from .metrics import KS, protocol_metrics, within_family_metrics

log = logging.getLogger("aladin")


def chance_metrics(n_images: int, captions_per_image: int) -> dict[str, float]:
    """Expected recalls of a random ranking (i2t: any of the image's captions in the top K)."""
    n_caps = n_images * captions_per_image
    out = {}
    for k in KS:
        miss = math.comb(n_caps - captions_per_image, k) / math.comb(n_caps, k)
        out[f"i2t_r{k}"] = 100.0 * (1.0 - miss)
        out[f"t2i_r{k}"] = 100.0 * min(1.0, k / n_images)
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in KS)
    return out


def _rounded(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    return round(x, 3) if isinstance(x, float) else x


def dataset_metrics(images: list[ImageRecord], records: list[dict[str, Any]], captions_per_image: int) -> dict[str, Any]:
    """Counts, caption statistics, and the non-learned baselines on the test split."""
    captions = [c for im in images for c in im.captions]
    splits = [s for s in (*SPLITS, TRANSFER) if any(im.split == s for im in images)]
    test = [(im, r) for im, r in zip(images, records) if im.split == "test"]
    test_caps = [c for im, _ in test for c in im.captions]
    cap_img = np.repeat(np.arange(len(test)), captions_per_image)
    log.info("baselines on %d test images / %d captions", len(test), len(test_caps))
    families = [r["family"] for _, r in test]
    baselines = {}
    for name, scores in (("bow_tfidf", bow_scores([r for _, r in test], test_caps)),
                         ("colour_histogram", colour_scores([im.file for im, _ in test], test_caps))):
        baselines[name] = {**protocol_metrics(scores, cap_img),
                           "within_family": within_family_metrics(scores, cap_img, families)}
    # Same protocol keys ("5k", "1k"); a 1K fold has 1000 images.
    baselines["chance"] = {key: chance_metrics(1000 if key == "1k" else len(test), captions_per_image)
                           for key in baselines["bow_tfidf"] if key != "within_family"}
    return _rounded({
        "images": {s: sum(im.split == s for im in images) for s in splits},
        "families": {s: len({r["family"] for im, r in zip(images, records) if im.split == s}) for s in splits},
        "objects_per_image": float(np.mean([len(r["objects"]) for r in records])),
        "caption_words": float(np.mean([len(c.split()) for c in captions])),
        "vocabulary": len({w for c in captions for w in re.findall(r"[a-z'-]+", c.lower())}),
        "captions_verified": verify_captions(images, records),
        "baselines": baselines,
    })
