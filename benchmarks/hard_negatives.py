"""How often a first-stage model's "hard negatives" are true of the caption (scenes data only).

    python benchmarks/hard_negatives.py [--pool 16]     # after `dvc repro teacher`

For every train caption, the teacher's top-`pool` wrong images (aladin.training.batching.teacher_candidates,
what the cross-encoder trains against) are checked with the caption parser against their scene
records (the oracle): the fraction that the caption is in fact true of is the false-negative
rate of the hard negatives. The same fraction for uniformly drawn wrong images is printed beside it.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from aladin.training.batching import teacher_candidates
from aladin.data.oracle import oracle_scores, scene_records
from aladin.models.factory import load_model
from aladin.runtime import set_threads
from aladin.store import open_split


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pool", type=int, default=16)
    p.add_argument("--split", default="train")
    a = p.parse_args()
    set_threads(2)
    store = open_split(Path("features"), a.split)
    records = scene_records(Path("data/scenes.jsonl"), store.image_ids)
    if records is None:
        raise SystemExit("data/scenes.jsonl: no scene records (scenes data only)")
    true_of = oracle_scores(records, store.captions) > 0                       # (N_img, N_cap)
    teacher = load_model("models/teacher.pt", "cpu", kind="alignment")
    cand = teacher_candidates(teacher, store, a.pool, "cpu").images             # (N_cap, pool)
    caps = np.arange(store.n_captions)
    hard = true_of[cand, caps[:, None]]                                         # (N_cap, pool)
    rng = np.random.default_rng(0)
    rand = rng.integers(0, store.n_images, cand.shape)
    own = rand == np.asarray(store.caption_image)[:, None]
    rand_true = true_of[rand, caps[:, None]][~own]
    print(f"{a.split}: {store.n_captions} captions, teacher top-{a.pool} wrong images")
    print(f"  true of the caption (false negatives): hard {100 * hard.mean():.1f}%, "
          f"top-1 {100 * hard[:, 0].mean():.1f}%, uniform wrong images {100 * rand_true.mean():.1f}%")
    print(f"  captions whose every hard negative is true of them: {100 * hard.all(axis=1).mean():.1f}%")


if __name__ == "__main__":
    main()
