"""Wider distillation lists: each pair of a batch brings candidates from the whole training split.

In-batch lists hold random items, which the student already ranks below the positive, so
distilling them teaches little of what only the teacher knows. As RocketQAv2 does for dense
retrievers, each pair's caption also ranks `hard` of its teacher's top-`pool` wrong images, and
its image `hard` of its teacher's top-`pool` wrong captions (drawn uniformly from that pool, per
step); on the scenes data, with `siblings`, each pair's image also brings its scene family (the
look-alikes that share every attribute word, bound differently: NegCLIP's hard negatives, here
images). Every extra item joins every list of the batch, with the teacher's scores as targets
(:func:`aladin.training.losses.distillation_loss` with ``pairs``).

Labels for the contrastive term (:func:`aladin.training.losses.multi_positive_loss`) come from
:class:`PairTruth`: a caption is true of its own image and, on the scenes data, of every scene
the caption parser finds it true of (a look-alike sibling it also describes is no negative).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Hashable, Sequence

import numpy as np
import torch

from ..data.oracle import oracle_truth, scene_records
from ..errors import ConfigError
from ..params import ListsConfig
from ..store import Batch, FeatureStore
from .batching import Candidates, teacher_candidates

log = logging.getLogger("aladin")


def family_siblings(families: Sequence[Hashable]) -> np.ndarray:
    """(N_img, F - 1) int64: the other images of each image's family (F the largest family), -1 padded."""
    members: dict[Hashable, list[int]] = {}
    for i, f in enumerate(families):
        members.setdefault(f, []).append(i)
    width = max(len(m) for m in members.values()) - 1
    out = np.full((len(families), width), -1, dtype=np.int64)
    for m in members.values():
        for i in m:
            others = [j for j in m if j != i]
            out[i, :len(others)] = others
    return out


def draw_candidates(pool: np.ndarray, queries: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """(len(queries) * k,) items: `k` distinct uniform picks from each query's row of `pool`."""
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    rows = pool[queries]                                                     # (Q, P)
    picks = np.argsort(rng.random(rows.shape), axis=1)[:, :k]
    return np.take_along_axis(rows, picks, 1).ravel()


class PairTruth:
    """truth(image_index, caption_index) -> (N_img, N_cap) bool: caption true of image."""

    def __init__(self, caption_image: np.ndarray, parser_truth: np.ndarray | None = None) -> None:
        self.caption_image = np.asarray(caption_image, dtype=np.int64)
        self.parser_truth = parser_truth                                     # (N_img, N_cap) bool or None

    @classmethod
    def for_store(cls, store: FeatureStore, records: list[dict] | None) -> "PairTruth":
        """The parser's verdict on every pair where scene `records` describe the store's images;
        same-image labels only otherwise (real data)."""
        if records is None:
            log.info("labels: same image only (no scene records)")
            return cls(store.caption_image)
        truth = oracle_truth(records, store.captions)
        truth[store.caption_image, np.arange(store.n_captions)] = True       # a caption is true of its image
        log.info("labels: caption parser, %.2f true images per caption", truth.sum() / store.n_captions)
        return cls(store.caption_image, truth)

    def __call__(self, images: np.ndarray, captions: np.ndarray) -> torch.Tensor:
        same = self.caption_image[captions][None, :] == images[:, None]
        if self.parser_truth is not None:
            same |= self.parser_truth[np.ix_(images, captions)]
        return torch.from_numpy(same)


class WiderLists:
    """A pair batch widened by its pairs' candidates (see the module doc), with its labels."""

    def __init__(self, store: FeatureStore, candidates: Candidates | None, hard: int,
                 truth: PairTruth | None = None, siblings: np.ndarray | None = None) -> None:
        if hard and candidates is None:
            raise ValueError("hard > 0 needs the teacher's candidates")
        self.store, self.candidates, self.hard, self.truth, self.siblings = store, candidates, hard, truth, siblings
        self.same_image = PairTruth(store.caption_image)                    # distillation's duplicates rule

    def widen(self, batch: Batch, rng: np.random.Generator) -> tuple[Batch, torch.Tensor, torch.Tensor | None]:
        """(batch with the extra images and captions appended after its B pairs, (N_img, N_cap)
        same-image mask, (N_img, N_cap) truth labels or None)."""
        images, captions = batch.image_index.cpu().numpy(), batch.caption_index.cpu().numpy()
        pair_images = images
        if self.hard or self.siblings is not None:
            extra = [draw_candidates(self.candidates.images, captions, self.hard, rng)] if self.hard else []
            if self.siblings is not None:
                family = self.siblings[pair_images].ravel()
                extra.append(family[family >= 0])
            images = np.concatenate([pair_images, *extra])
            if self.hard:
                captions = np.concatenate([captions, draw_candidates(self.candidates.captions, pair_images,
                                                                     self.hard, rng)])
            img, cap = self.store.image_batch(images), self.store.caption_batch(captions)
            batch = Batch(regions=img.regions, boxes=img.boxes, region_mask=img.region_mask,
                          image_index=img.image_index, tokens=cap.tokens, token_mask=cap.token_mask,
                          caption_index=cap.caption_index).to(batch.image_index.device)
        device = batch.image_index.device
        truth = None if self.truth is None else self.truth(images, captions).to(device)
        return batch, self.same_image(images, captions).to(device), truth


def wider_lists(cfg: ListsConfig, labelled: bool, teacher: torch.nn.Module, store: FeatureStore,
                scenes: Path, device: torch.device | str) -> WiderLists | None:
    """The distillation lists' extras from params (`distill.lists`; `labelled`: contrastive_weight
    > 0, which needs the labels): None when all are off (plain in-batch lists)."""
    if not (cfg.hard or cfg.siblings or labelled):
        return None
    records = scene_records(scenes, store.image_ids)
    if cfg.siblings and records is None:
        raise ConfigError(f"distill.lists.siblings: true needs scene families ({scenes}: scenes data only)")
    candidates = teacher_candidates(teacher, store, cfg.pool, device) if cfg.hard else None
    siblings = family_siblings([r["family"] for r in records]) if cfg.siblings else None
    return WiderLists(store, candidates, cfg.hard, PairTruth.for_store(store, records) if labelled else None, siblings)
