"""Evaluating the cross-encoder: exhaustive scoring of a (sub)protocol, and re-ranking a shortlist.

A cross-encoder needs one fusion pass per (image, caption) pair. The 5K protocol is 125M
pairs and the 1K protocol 5M per fold: neither fits a CPU budget, so the exhaustive evaluation
scores fold 0 of the 1K protocol (the first 1,000 images and their captions) for a fixed random
subsample of queries, each against the WHOLE fold: text queries against all 1,000 images,
image queries against all 5,000 captions. Every result names its protocol and query counts.
The cheap, complete alternative is re-ranking: the cross-encoder re-orders the student's top-k
for every query (k passes per query): :func:`pair_scorers` plug into
aladin.evaluation.protocols.two_stage_rank_fn. Sampled figures carry a bootstrap interval over queries.
"""
from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Literal

import numpy as np
import torch
from tqdm import tqdm

from ..errors import ConfigError
from .metrics import (bootstrap_interval, captions_per_image, ranks_i2t, ranks_t2i, retrieval_metrics, summarize,
                      within_family_metrics)
from .ranking import IndexedRetrieval, PairScorer, index_rank_fn, matrix_scorers, two_stage_rank_fn, two_stage_scores
from ..models.cross_encoder import CrossEncoder
from ..params import TOP_K
from ..retrieval.store_scores import embed_store_items
from ..store import FeatureStore

if TYPE_CHECKING:
    from ..params import EvaluateParams

log = logging.getLogger("aladin")
Tokens = tuple[torch.Tensor, torch.Tensor]   # (N, T, d) projected tokens, (N, T) validity mask


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module):
    """Eval mode (no dropout) inside, the caller's mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def score_rows(model: CrossEncoder, img: Tokens, txt: Tokens, image_rows: torch.Tensor, caption_rows: torch.Tensor,
               batch_size: int = 2048, desc: str | None = None) -> torch.Tensor:
    """Logits (P,) of pairs (img row image_rows[p], txt row caption_rows[p]), `batch_size` pairs a pass."""
    out = []
    starts = range(0, len(image_rows), batch_size)
    for s in tqdm(starts, desc=desc, unit="batch", leave=False, disable=desc is None):
        i, c = image_rows[s:s + batch_size], caption_rows[s:s + batch_size]
        out.append(model.joint(img[0][i], img[1][i], txt[0][c], txt[1][c]).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def cross_scores(model: CrossEncoder, store: FeatureStore, image_idx: np.ndarray, caption_idx: np.ndarray,
                 device: torch.device | str, batch_size: int = 2048) -> np.ndarray:
    """(N_img, N_cap) cross-encoder logits of store images `image_idx` x captions `caption_idx`."""
    with _eval_mode(model):
        img = embed_store_items(model, store, "image", device, image_idx)
        txt = embed_store_items(model, store, "caption", device, caption_idx)
        n_img, n_cap = len(image_idx), len(caption_idx)
        rows = torch.arange(n_img * n_cap, device=img[0].device)
        s = score_rows(model, img, txt, rows // n_cap, rows % n_cap, batch_size,
                       desc=f"cross-encoder {n_img}x{n_cap} pairs")
    return s.view(n_img, n_cap).numpy()


def candidate_scores(model: CrossEncoder, store: FeatureStore, query_idx: np.ndarray, candidates: np.ndarray,
                     device: torch.device | str, query: Literal["caption", "image"] = "caption",
                     batch_size: int = 2048) -> np.ndarray:
    """(Q, k) logits of each query with each of its candidates; -inf for empty slots (-1).

    Each distinct item is projected once, then Q * k fusion passes.
    """
    query_idx, candidates = np.asarray(query_idx, dtype=np.int64), np.asarray(candidates, dtype=np.int64)
    empty = candidates < 0
    items, cand_rows = np.unique(np.where(empty, candidates.max(initial=0), candidates), return_inverse=True)
    with _eval_mode(model):
        q = embed_store_items(model, store, query, device, query_idx)
        c = embed_store_items(model, store, "image" if query == "caption" else "caption", device, items)
        dev = q[0].device
        q_rows = torch.arange(len(query_idx), device=dev).repeat_interleave(candidates.shape[1])
        c_rows = torch.as_tensor(cand_rows.reshape(-1), device=dev)
        img, txt, i, t = (c, q, c_rows, q_rows) if query == "caption" else (q, c, q_rows, c_rows)
        s = score_rows(model, img, txt, i, t, batch_size, desc=f"cross-encoder re-rank {candidates.size} pairs")
    return np.where(empty, -np.inf, s.view(candidates.shape).numpy())


def pair_scorers(model: CrossEncoder, store: FeatureStore, device: torch.device | str,
                 batch_size: int = 2048) -> tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], ...]:
    """(score_t2i, score_i2t) in the form of aladin.evaluation.protocols.PairScorer, for two-stage rows.

    ``score_t2i(caption_ids (Q,), image_ids (Q, k)) -> (Q, k)``; ``score_i2t`` the reverse.
    """
    def t2i(caps: np.ndarray, imgs: np.ndarray) -> np.ndarray:
        return candidate_scores(model, store, caps, imgs, device, "caption", batch_size)

    def i2t(imgs: np.ndarray, caps: np.ndarray) -> np.ndarray:
        return candidate_scores(model, store, imgs, caps, device, "image", batch_size)
    return t2i, i2t


def subsample_queries(store: FeatureStore, n_images: int, text_queries: int, image_queries: int,
                      seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed random query subsample of fold 0 (the first `n_images` images and their captions).

    Returns (caption queries, image queries), sorted store indices; 0 or more than available
    means all. The same seed gives the same queries, so other models can be scored on them.
    """
    if n_images > store.n_images:
        raise ConfigError(f"n_images: {n_images} exceeds the {store.n_images} images of {store.path}")
    captions = np.flatnonzero(store.caption_image < n_images)
    rng = np.random.default_rng(seed)

    def pick(pool: np.ndarray, n: int) -> np.ndarray:
        return pool if n <= 0 or n >= len(pool) else np.sort(rng.choice(pool, n, replace=False))

    return pick(captions, text_queries), pick(np.arange(n_images), image_queries)


def exhaustive_metrics(model: CrossEncoder, store: FeatureStore, device: torch.device | str, n_images: int,
                       text_queries: int, image_queries: int, seed: int, batch_size: int) -> dict[str, Any]:
    """Retrieval metrics of exhaustive cross-encoder scoring on fold 0, for a query subsample.

    Text queries are ranked against all `n_images` images, image queries against all their
    captions, so each query's rank is exactly its rank under the 1K protocol (fold 0); only the
    set of queries is sampled. Keys: the usual metrics, their 95% bootstrap interval over queries
    ('interval_95'), protocol, query counts, pairs, time.
    """
    t0 = time.perf_counter()
    cap_q, img_q = subsample_queries(store, n_images, text_queries, image_queries, seed)
    gallery_img = np.arange(n_images)
    gallery_cap = np.flatnonzero(store.caption_image < n_images)
    cap_img = store.caption_image
    full = len(cap_q) == len(gallery_cap) and len(img_q) == n_images
    if full:                                                    # all queries: one matrix serves both
        s = cross_scores(model, store, gallery_img, gallery_cap, device, batch_size)
        r_t2i, r_i2t = ranks_t2i(s, cap_img[gallery_cap]), ranks_i2t(s, cap_img[gallery_cap])
        pairs = s.size
    else:
        s_t2i = cross_scores(model, store, gallery_img, cap_q, device, batch_size)        # (n_images, Q_t)
        s_i2t = cross_scores(model, store, img_q, gallery_cap, device, batch_size)        # (Q_i, n_cap)
        r_t2i = ranks_t2i(s_t2i, cap_img[cap_q])
        r_i2t = ranks_i2t(s_i2t, cap_img[gallery_cap], img_q)
        pairs = s_t2i.size + s_i2t.size
    out: dict[str, Any] = {**summarize(r_i2t, r_t2i), "interval_95": bootstrap_interval(r_i2t, r_t2i, seed=seed)}
    out.update({
        "protocol": f"fold0_{n_images}img" + ("" if full else "_query_subsample"),
        "t2i_queries": float(len(cap_q)), "i2t_queries": float(len(img_q)),
        "pairs_scored": float(pairs), "seconds": time.perf_counter() - t0,
    })
    log.info("cross-encoder exhaustive %s: %d text + %d image queries, %d pairs, rsum %.1f, %.1f s",
             out["protocol"], len(cap_q), len(img_q), pairs, out["rsum"], out["seconds"])
    return out


def sampled_metrics(scores: np.ndarray, store: FeatureStore, n_images: int, caption_queries: np.ndarray,
                    image_queries: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Another model's metrics on exactly the queries :func:`exhaustive_metrics` sampled.

    `scores` is that model's (N_img, N_cap) test matrix; ranks are taken inside fold 0, so the
    figures compare like for like with the cross-encoder's sampled protocol.
    """
    cap_img = store.caption_image
    gallery_cap = np.flatnonzero(cap_img < n_images)
    r_t2i = ranks_t2i(scores[:n_images][:, caption_queries], cap_img[caption_queries])
    r_i2t = ranks_i2t(scores[image_queries][:, gallery_cap], cap_img[gallery_cap], image_queries)
    return {**summarize(r_i2t, r_t2i), "interval_95": bootstrap_interval(r_i2t, r_t2i, seed=seed)}


def subset_metrics(model: CrossEncoder, store: FeatureStore, device: torch.device | str, n_images: int,
                   batch_size: int, families: np.ndarray | None = None) -> dict[str, float]:
    """Metrics of all pairs of the first `n_images` images of a store and, with `families` (the
    family of each store image: scenes data), the within-family text->image R@1 ('family_r1')."""
    cap_img = store.caption_image
    gallery_cap = np.flatnonzero(cap_img < n_images)
    s = cross_scores(model, store, np.arange(n_images), gallery_cap, device, batch_size)
    out = retrieval_metrics(s, cap_img[gallery_cap])
    if families is not None:
        out["family_r1"] = within_family_metrics(s, cap_img[gallery_cap], families[:n_images])["t2i_family_r1"]
    return out


def selection_metrics(model: CrossEncoder, val: FeatureStore, train: FeatureStore, device: torch.device | str,
                      n_images: int, batch_size: int,
                      families: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, float]:
    """Every epoch: the metrics of all pairs of the first `n_images` val images (model selection),
    and as 'train_*' the same on the first `n_images` training images (is it fitting?);
    `families`: (val, train) image families on the scenes data."""
    val_fam, train_fam = (None, None) if families is None else families
    seen = subset_metrics(model, train, device, n_images, batch_size, train_fam)
    return {**subset_metrics(model, val, device, n_images, batch_size, val_fam),
            **{f"train_{k}": v for k, v in seen.items() if k in ("rsum", "family_r1")}}


def fold0_summary(model: CrossEncoder, store: FeatureStore, device: torch.device | str, select_images: int,
                  eval_images: int, text_queries: int, image_queries: int, seed: int,
                  batch_size: int) -> dict[str, Any]:
    """metrics/cross.json's entries beside the selection metrics: fold 0 scored for a query sample."""
    final = exhaustive_metrics(model, store, device, eval_images, text_queries, image_queries, seed, batch_size)
    sampled = " (fixed random query samples: one fusion pass per pair)" if final["protocol"].endswith("subsample") else ""
    return {"val_select_images": select_images, "val_fold0": final,
            "note": (f"val: all pairs of the first {select_images} val images (model selection); "
                     f"val_fold0: fold 0 ({eval_images} images), {int(final['t2i_queries'])} text "
                     f"queries against all images, {int(final['i2t_queries'])} image queries against "
                     f"all captions{sampled}")}


def rerank_row(retrieval: IndexedRetrieval, caption_image: np.ndarray, k: int, scorers: tuple[PairScorer, PairScorer],
               student_scores: np.ndarray, fold: tuple[slice, slice],
               families: np.ndarray | None) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray]]:
    """A re-ranker of the student's top-k on one fold, every query, both directions: its metrics
    (with the within-family t2i R@1 of the two-stage order, scenes data) and its (i2t, t2i) ranks."""
    score_t2i, score_i2t = scorers
    listed: dict[str, np.ndarray] = {}

    def t2i(caps: np.ndarray, imgs: np.ndarray) -> np.ndarray:      # kept for the family metric
        listed["t2i"] = score_t2i(caps, imgs)
        return listed["t2i"]

    ranks = two_stage_rank_fn(retrieval, caption_image, k, t2i, score_i2t)(*fold)
    row: dict[str, Any] = summarize(*ranks)
    if families is not None:
        i, c = fold
        top_img = retrieval.topk(i, c, k)[0]
        order = two_stage_scores(student_scores[i, c], listed["t2i"], np.where(top_img >= 0, top_img - i.start, -1))
        row["within_family"] = within_family_metrics(order, caption_image[c] - i.start, families[i])
    return row, ranks


def cross_rows(cross: CrossEncoder, rows: dict[str, Any], retrieval: IndexedRetrieval, store: FeatureStore,
               teacher_scores: np.ndarray, student_scores: np.ndarray, families: np.ndarray | None,
               p: EvaluateParams, seed: int, device: torch.device | str) -> dict[str, Any]:
    """The cross-encoder's rows of metrics/eval.json on fold 0: exhaustive on a query sample (and the
    teacher and exact student on the same sample), and as the re-ranker of the student's top
    `p.cross_rerank_k`, every query, beside the teacher re-ranking the same lists, with the paired
    bootstrap interval of the difference and (scenes: `families` of the test images) the
    within-family t2i R@1 of both. Adds fold-0 entries to the teacher, student_exact, student and
    two_stage rows of `rows` (changed in place)."""
    cap_img = store.caption_image
    n = min(p.cross_fold_images, store.n_images)
    sample = (n, p.cross_text_queries, p.cross_image_queries, seed)
    out = {"cross_encoder": {"fold0_sampled": exhaustive_metrics(cross, store, device, *sample, p.batch_size)}}
    cap_q, img_q = subsample_queries(store, *sample)
    for name, matrix in (("teacher", teacher_scores), ("student_exact", student_scores)):
        rows[name]["fold0_sampled"] = sampled_metrics(matrix, store, n, cap_q, img_q, seed)
    fold0 = (slice(0, n), slice(0, n * captions_per_image(cap_img, store.n_images)))
    k = p.cross_rerank_k
    crossed, cross_ranks = rerank_row(retrieval, cap_img, k, pair_scorers(cross, store, device), student_scores,
                                      fold0, families)
    taught, teacher_ranks = rerank_row(retrieval, cap_img, k, matrix_scorers(teacher_scores), student_scores,
                                       fold0, families)
    gain = bootstrap_interval(*cross_ranks, seed=seed, baseline=teacher_ranks)["rsum"]
    versus: dict[str, Any] = {"rsum_difference": crossed["rsum"] - taught["rsum"], "rsum_difference_interval_95": gain}
    if families is not None:
        versus["t2i_family_r1_difference"] = (crossed["within_family"]["t2i_family_r1"]
                                              - taught["within_family"]["t2i_family_r1"])
    out["cross_rerank"] = {"rerank_k": k, "fold0": crossed, "vs_teacher_rerank": versus}
    rows["two_stage"]["fold0"] = taught
    rows["student"]["fold0"] = summarize(*index_rank_fn(retrieval, cap_img, TOP_K)(*fold0))
    log.info("cross-encoder re-ranking the student's top %d on fold 0: rsum %.1f vs the teacher's %.1f, "
             "difference %.1f (95%% interval %.1f to %.1f)", k, crossed["rsum"], taught["rsum"],
             versus["rsum_difference"], *gain)
    return out
