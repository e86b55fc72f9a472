"""Build the embedded scenes dataset: sample, caption, render, verify, and score the baselines.

Each split draws from its own random stream (seeded by data.seed and the split name), so
the test set does not change when n_train does. Rendering is a pure function of the scene.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import multiprocessing
import os
import random
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from ..metrics import KS, check_protocols, protocol_metrics, within_family_metrics
from .baselines import bow_scores, colour_scores
from .captions import captions_for
from .manifest import SPLITS, ImageRecord
from .parser import is_true
from .render import render
from .scenes import Scene, sample_split

if TYPE_CHECKING:
    from ..params import DataParams

log = logging.getLogger("aladin")


def _render_to(job: tuple[Scene, int, Path]) -> None:
    scene, image_size, file = job
    # PNG level 1: these flat images compress well anyway, and level 6 doubles the encoding time.
    render(scene, image_size).save(file, format="PNG", compress_level=1)


def generate(out_dir: Path, cfg: DataParams) -> tuple[list[ImageRecord], list[dict[str, Any]]]:
    """Write images/<split>/<index>.png under out_dir; return manifest entries and scene records."""
    check_protocols(cfg.n_test)        # a size without the COCO protocols is told before rendering, once
    out_dir = Path(out_dir).resolve()          # ImageRecord.file is absolute
    images, records, jobs = [], [], []
    for split in SPLITS:
        # Scenes and captions come from one sequential stream per split; rendering needs no randomness.
        rng = random.Random(f"scenes/{cfg.seed}/{split}")
        (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
        scenes = sample_split(rng, split, getattr(cfg, f"n_{split}"), cfg.family_size)
        for k, scene in enumerate(tqdm(scenes, desc=f"data: scenes {split}", unit="img", mininterval=2)):
            image_id, file = f"{split}-{k:06d}", out_dir / "images" / split / f"{k:06d}.png"
            images.append(ImageRecord(image_id, file, split, captions_for(scene, rng, cfg.captions_per_image)))
            records.append(scene.record(image_id, cfg.image_size))
            jobs.append((scene, cfg.image_size, file))
    workers = cfg.workers or len(os.sched_getaffinity(0))
    # fork: workers only draw with PIL; nothing of the parent's state needs re-importing.
    with multiprocessing.get_context("fork").Pool(workers) if workers > 1 else contextlib.nullcontext() as pool:
        done = pool.imap_unordered(_render_to, jobs, chunksize=64) if pool else map(_render_to, jobs)
        for _ in tqdm(done, total=len(jobs), desc="data: render", unit="img", mininterval=2):
            pass
    return images, records


def write_scenes(path: Path, records: list[dict[str, Any]]) -> None:
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def verify_captions(images: list[ImageRecord], records: list[dict[str, Any]]) -> int:
    """Parse every caption back and check it against its scene; a false one is a generator bug."""
    n = 0
    for im, rec in zip(images, records):
        for c in im.captions:
            if not is_true(c, rec):
                raise RuntimeError(f"caption not true of its scene {im.id}: {c!r}")
            n += 1
    return n


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
        "images": {s: sum(im.split == s for im in images) for s in SPLITS},
        "families": {s: len({r["family"] for im, r in zip(images, records) if im.split == s}) for s in SPLITS},
        "objects_per_image": float(np.mean([len(r["objects"]) for r in records])),
        "caption_words": float(np.mean([len(c.split()) for c in captions])),
        "vocabulary": len({w for c in captions for w in re.findall(r"[a-z'-]+", c.lower())}),
        "captions_verified": verify_captions(images, records),
        "baselines": baselines,
    })
