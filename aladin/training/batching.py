"""Which pairs share a distillation batch: that decides which lists the student learns to rank.

With uniform batches a caption's in-batch images are random ones, which every model ranks below
the positive; the images that only the fine-grained teacher tells apart (on the scenes data, the
caption's scene family: same attribute words, bound differently) almost never share its batch.
Teacher-neighbour batches (as topic-aware and hard-negative-mined batching for dense retrievers)
build each batch from groups: a random anchor pair, then pairs whose images are among the anchor
caption's top-``pool`` images by teacher score, until the group holds ``group`` pairs. Nothing
here knows about scene families; any teacher and dataset work alike.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..retrieval.store_scores import score_store
from ..store import FeatureStore

log = logging.getLogger("aladin")

PairOrder = Callable[[np.random.Generator], np.ndarray]   # epoch generator -> caption (pair) order


CAPTION_CHUNK = 4096   # captions scored per step: the (N_img, chunk) block stays ~2 GB at COCO's 113K images


@dataclass(frozen=True)
class Candidates:
    """A first-stage model's best-scoring wrong items per query, best first."""

    images: np.ndarray     # (N_cap, pool) int64: per caption, images other than its own
    captions: np.ndarray   # (N_img, pool) int64: per image, captions of other images


@torch.no_grad()
def teacher_candidates(teacher: torch.nn.Module, store: FeatureStore, pool: int,
                       device: torch.device | str, chunk: int = CAPTION_CHUNK) -> Candidates:
    """The teacher's top-`pool` wrong images of every caption and wrong captions of every image,
    scored in caption chunks (the per-image lists merge chunk by chunk: no N_cap x N_img matrix)."""
    caption_image = torch.from_numpy(np.array(store.caption_image, dtype=np.int64))   # a writable copy
    pool_img = min(pool, store.n_images - 1)
    pool_cap = min(pool, store.n_captions - int(torch.bincount(caption_image).max()))
    images = np.empty((store.n_captions, pool_img), dtype=np.int64)
    best = torch.full((store.n_images, 0), float("-inf"))                # per image: running top captions
    best_idx = torch.zeros((store.n_images, 0), dtype=torch.long)
    for start in range(0, store.n_captions, chunk):
        idx = torch.arange(start, min(start + chunk, store.n_captions))
        scores = score_store(teacher, store, device, caption_idx=idx.numpy(), progress=False).cpu()  # (N_img, chunk)
        scores[caption_image[idx], torch.arange(len(idx))] = float("-inf")   # each caption's own image
        images[idx.numpy()] = scores.T.topk(pool_img, dim=1).indices.numpy()
        best, at = torch.cat([best, scores], 1).topk(min(pool_cap, best.shape[1] + len(idx)), dim=1)
        best_idx = torch.cat([best_idx, idx.expand(store.n_images, -1)], 1).gather(1, at)
    return Candidates(images=images, captions=best_idx.numpy())


def neighbour_order(caption_image: np.ndarray, neighbours: np.ndarray, group: int,
                    rng: np.random.Generator) -> np.ndarray:
    """One epoch's pair order: every caption exactly once, in groups of up to `group` pairs.

    Anchors are drawn in random order; each unused anchor opens a group and takes one unused
    caption of each of its neighbour images (a random subset of its pool, in teacher order)
    until the group is full. Groups are then shuffled and concatenated, so the fit loop's
    contiguous batches hold whole groups (up to the groups cut at a batch boundary).
    """
    caption_image = np.asarray(caption_image, dtype=np.int64)
    n = len(caption_image)
    # Per image, its captions in random order, and a pointer to the next one not yet used.
    by_image = np.argsort(caption_image, kind="stable")
    by_image = by_image[np.lexsort((rng.random(n), caption_image[by_image]))]
    starts = np.searchsorted(caption_image[by_image], np.arange(caption_image.max() + 2))
    cursor = starts[:-1].copy()
    used = np.zeros(n, dtype=bool)

    def take(image: int) -> int | None:
        while cursor[image] < starts[image + 1]:
            c = int(by_image[cursor[image]])
            cursor[image] += 1
            if not used[c]:
                return c
        return None

    pool = neighbours.shape[1]
    picks = min(group - 1, pool)
    groups: list[list[int]] = []
    for anchor in rng.permutation(n):
        if used[anchor]:
            continue
        used[anchor] = True
        members = [int(anchor)]
        if picks:
            chosen = np.sort(rng.choice(pool, size=picks, replace=False))
            for image in neighbours[anchor, chosen]:
                c = take(int(image))
                if c is not None:
                    used[c] = True
                    members.append(c)
        groups.append(members)
    rng.shuffle(groups)
    return np.fromiter((c for g in groups for c in g), dtype=np.int64, count=n)


def teacher_neighbour_batches(teacher: torch.nn.Module, store: FeatureStore, group: int, pool: int,
                              device: torch.device | str) -> PairOrder:
    """The fit loop's pair order for teacher-neighbour batches (neighbours found once, here)."""
    neighbours = teacher_candidates(teacher, store, pool, device).images
    log.info("teacher neighbours: top %d images of %d captions (groups of %d)", neighbours.shape[1],
             len(neighbours), group)
    caption_image = np.asarray(store.caption_image)
    return lambda rng: neighbour_order(caption_image, neighbours, group, rng)
