"""Build the embedded scenes dataset: sample, caption, render and verify.

Each split draws from its own random stream (seeded by data.seed and the split name), so
the test set does not change when n_train does. Rendering is a pure function of the scene.
"""
from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from .captions import captions_for
from ..params import TRANSFER
from .manifest import SPLITS, ImageRecord
from .parser import is_true
from .render import render
from .scenes import Scene, sample_split

if TYPE_CHECKING:
    from PIL import Image

    from ..params import DataParams

log = logging.getLogger("aladin")


def _render_to(job: tuple[Scene, int, Path]) -> None:
    scene, image_size, file = job
    # PNG level 1: these flat images compress well anyway, and level 6 doubles the encoding time.
    render(scene, image_size).save(file, format="PNG", compress_level=1)


def generate(out_dir: Path, cfg: DataParams) -> tuple[list[ImageRecord], list[dict[str, Any]]]:
    """Write images/<split>/<index>.png under out_dir; return manifest entries and scene records."""
    out_dir = Path(out_dir).resolve()          # ImageRecord.file is absolute
    images, records, jobs = [], [], []
    held_out: set[tuple] = set()                   # val and test contents: never in the transfer set
    for split in (*SPLITS, TRANSFER) if cfg.n_transfer else SPLITS:
        # Scenes and captions come from one sequential stream per split; rendering needs no randomness.
        rng = random.Random(f"scenes/{cfg.seed}/{split}")
        (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
        scenes = sample_split(rng, split, getattr(cfg, f"n_{split}"), cfg.family_size)
        if split == TRANSFER:
            kept = [s for s in scenes if s.key() not in held_out]
            log.info("data: transfer set of %d scenes (%d equal to a val / test scene dropped)", len(kept),
                     len(scenes) - len(kept))
            scenes = kept
        elif split != "train":
            held_out.update(s.key() for s in scenes)
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


def sample_scenes(n: int, image_size: int, seed: int = 0) -> tuple[list["Image.Image"], list[str]]:
    """`n` rendered scenes and one caption each, in memory: realistic inputs for benchmarks and
    tests that need images and captions but not a dataset on disk."""
    rng = random.Random(f"sample/{seed}")
    scenes = sample_split(rng, "sample", n, family_size=1)
    return [render(s, image_size) for s in scenes], [captions_for(s, rng, 1)[0] for s in scenes]


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
