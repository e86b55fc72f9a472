"""Ranks of retrieval through a faiss index and of two-stage re-ranking, per (sub)collection.

Every row is reported under the COCO protocols of :func:`aladin.evaluation.metrics.protocol_from_ranks`:
the whole test set ('5k' at 5,000 images) and, when its size allows, '1k' (mean over folds; a
fold is its own 1,000-image collection, so index rows build the index over the fold's items with
the same params). :func:`aladin.evaluation.metrics.protocol_description` says which keys a size gets.

Ranks through a top-k list follow :func:`aladin.evaluation.metrics.topk_ranks_t2i`: within the list, its
order (index rows) or the re-ranking scores under the exhaustive ranks' pessimistic tie rule
(two-stage rows); beyond it, ``max(k + 1, exhaustive rank)``, where the exhaustive rank comes
from the same student embeddings (for two-stage: the student's order continues after the k).
R@K for K <= k is exactly what the list delivers; medr / meanr use the fallback past k.
"""
from __future__ import annotations

from typing import Callable

import faiss
import numpy as np

from ..retrieval.index import IndexConfig, build_index, exact_topk, recall_vs_exact, search
from .metrics import RankFn, captions_per_image, protocol_from_ranks, ranks_i2t, ranks_t2i, topk_ranks_i2t, topk_ranks_t2i


# scorer(query_ids (Q,), candidate_ids (Q, k)) -> (Q, k) scores; ids are global test-set rows,
# -1 marks an empty candidate slot (score it anything: it is dropped).
PairScorer = Callable[[np.ndarray, np.ndarray], np.ndarray]


def protocol(rank_fn: RankFn, caption_image: np.ndarray) -> dict[str, dict[str, float]]:
    """Whole-set and (when supported) '1k' metrics of a retrieval method over the test set
    described by `caption_image`."""
    n_images = int(np.max(caption_image)) + 1
    return protocol_from_ranks(rank_fn, n_images, captions_per_image(caption_image, n_images))


class IndexedRetrieval:
    """Student retrieval through faiss over any (sub)collection of the test set.

    ``topk(i, c, k)`` -> (images for each caption (N_c, k), captions for each image (N_i, k)),
    global ids. The full set uses the prebuilt indexes when given (the index stage's own files).
    """

    def __init__(self, image_emb: np.ndarray, caption_emb: np.ndarray, cfg: IndexConfig, seed: int,
                 full: tuple[faiss.Index, faiss.Index] | None = None) -> None:
        self.image_emb, self.caption_emb, self.cfg, self.seed = image_emb, caption_emb, cfg, seed
        # Indexes per (sub)collection, built once and searched at every depth.
        self._indexes: dict[tuple[int, int, int, int], tuple[faiss.Index, faiss.Index]] = {}
        if full is not None:
            self._indexes[(0, len(image_emb), 0, len(caption_emb))] = full
        # Exhaustive ranks per (sub)collection, the fallback past every list (:func:`_fallback`).
        self.fallback: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def topk(self, i: slice, c: slice, k: int) -> tuple[np.ndarray, np.ndarray]:
        img, cap = self.image_emb[i], self.caption_emb[c]
        key = (i.start, i.stop, c.start, c.stop)
        if key not in self._indexes:
            self._indexes[key] = (build_index(img, self.cfg, self.seed), build_index(cap, self.cfg, self.seed))
        img_index, cap_index = self._indexes[key]
        top_img = search(img_index, cap, k)[1]
        top_cap = search(cap_index, img, k)[1]
        return (np.where(top_img >= 0, top_img + i.start, -1), np.where(top_cap >= 0, top_cap + c.start, -1))


def _fallback(retrieval: IndexedRetrieval, caption_image: np.ndarray,
              i: slice, c: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exhaustive student ranks in the sub-collection (i2t, t2i), and its local caption->image map;
    computed once per sub-collection and shared by every depth and row that continues past its list."""
    cap = caption_image[c] - i.start
    key = (i.start, i.stop, c.start, c.stop, cap.tobytes())
    if key not in retrieval.fallback:
        s = retrieval.image_emb[i] @ retrieval.caption_emb[c].T
        retrieval.fallback[key] = (ranks_i2t(s, cap), ranks_t2i(s, cap))
    return (*retrieval.fallback[key], cap)


def index_rank_fn(retrieval: IndexedRetrieval, caption_image: np.ndarray, k: int) -> RankFn:
    """Ranks of the student searched through its faiss index (top-k lists, exhaustive past k)."""
    def fn(i: slice, c: slice) -> tuple[np.ndarray, np.ndarray]:
        fb_i2t, fb_t2i, cap = _fallback(retrieval, caption_image, i, c)
        top_img, top_cap = retrieval.topk(i, c, k)
        local_img = np.where(top_img >= 0, top_img - i.start, -1)
        local_cap = np.where(top_cap >= 0, top_cap - c.start, -1)
        return topk_ranks_i2t(local_cap, cap, fb_i2t), topk_ranks_t2i(local_img, cap, fb_t2i)
    return fn


def two_stage_rank_fn(retrieval: IndexedRetrieval, caption_image: np.ndarray, k: int,
                      score_t2i: PairScorer, score_i2t: PairScorer) -> RankFn:
    """Student top-k from the index, re-ranked by a pair scorer (the teacher, a cross-encoder).

    ``score_t2i(caption_ids, image_ids (Q,k))`` and ``score_i2t(image_ids, caption_ids (Q,k))``
    score the candidates. Within the list the rank follows the pair scores with the tie rule of
    the exhaustive ranks (a candidate tied with the correct item counts ahead of it; the student's
    order breaks no ties), so k = the whole collection gives exactly the exhaustive ranks of the
    pair scores; past k the student's exhaustive order continues.
    """
    def fn(i: slice, c: slice) -> tuple[np.ndarray, np.ndarray]:
        fb_i2t, fb_t2i, cap = _fallback(retrieval, caption_image, i, c)
        top_img, top_cap = retrieval.topk(i, c, k)
        q_cap, q_img = np.arange(c.start, c.stop), np.arange(i.start, i.stop)
        s_img, s_cap = score_t2i(q_cap, top_img), score_i2t(q_img, top_cap)
        local_img = np.where(top_img >= 0, top_img - i.start, -1)
        local_cap = np.where(top_cap >= 0, top_cap - c.start, -1)
        return topk_ranks_i2t(local_cap, cap, fb_i2t, s_cap), topk_ranks_t2i(local_img, cap, fb_t2i, s_img)
    return fn


def matrix_scorers(scores: np.ndarray) -> tuple[PairScorer, PairScorer]:
    """Pair scorers that read a precomputed (N_img, N_cap) matrix (the teacher's exhaustive scores:
    re-ranking with it gives exactly the scores a per-query teacher pass would)."""
    def t2i(caps: np.ndarray, imgs: np.ndarray) -> np.ndarray:
        return scores[np.maximum(imgs, 0), caps[:, None]]

    def i2t(imgs: np.ndarray, caps: np.ndarray) -> np.ndarray:
        return scores[imgs[:, None], np.maximum(caps, 0)]
    return t2i, i2t


def index_recall(retrieval: IndexedRetrieval, k: int = 10) -> dict[str, float]:
    """Recall of the exact (flat) top-k by the configured index on the full set, both directions."""
    n_img, n_cap = len(retrieval.image_emb), len(retrieval.caption_emb)
    top_img, top_cap = retrieval.topk(slice(0, n_img), slice(0, n_cap), k)
    exact_img = exact_topk(retrieval.image_emb, retrieval.caption_emb, k)
    exact_cap = exact_topk(retrieval.caption_emb, retrieval.image_emb, k)
    return {f"t2i_recall{k}_vs_flat": recall_vs_exact(top_img, exact_img),
            f"i2t_recall{k}_vs_flat": recall_vs_exact(top_cap, exact_cap)}


def two_stage_scores(student_scores: np.ndarray, listed_scores: np.ndarray, top_img: np.ndarray) -> np.ndarray:
    """(N_img, N_cap) float64 scores that order each caption's images as two-stage t2i does: its
    student top-k (`top_img` (N_cap, k), -1 = empty) by the re-ranker's scores of them
    (`listed_scores` (N_cap, k)), then every other image by student score (shifted below them)."""
    caps = np.broadcast_to(np.arange(top_img.shape[0])[:, None], top_img.shape)
    listed = top_img >= 0
    shift = np.abs(listed_scores[listed]).max(initial=0.0) + 2 * np.abs(student_scores).max(initial=0.0) + 1
    out = student_scores.astype(np.float64) - shift
    out[top_img[listed], caps[listed]] = listed_scores[listed]
    return out
