"""Evaluation rows: exhaustive scores, retrieval through a faiss index, two-stage re-ranking.

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

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import faiss
import numpy as np
import torch
from torch import nn

from ..data.oracle import oracle_scores, scene_records
from ..datasets import eccv_metrics, load_coco_ids
from ..retrieval.encode import encode_images, encode_texts
from ..retrieval.index import IndexConfig, IndexDir, build_index, exact_topk, recall_vs_exact, search
from .metrics import (KS, RankFn, captions_per_image, count_score_ties, full_key, protocol_from_ranks,
                      protocol_metrics, ranks_i2t, ranks_t2i, summarize, t2i_recall_random_ties, topk_ranks_i2t,
                      topk_ranks_t2i, within_family_metrics)
from ..models.factory import load_model
from ..models.matching import MatchingHead
from ..retrieval.store_scores import score_store
from ..store import FeatureStore

if TYPE_CHECKING:
    from ..params import EvaluateParams

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


# -- the evaluate stages' recipes -----------------------------------------------------------------
def model_test_scores(path: Path, store: FeatureStore, device: torch.device, chunk_mb: float,
                      batch_size: int) -> np.ndarray:
    """(N_img, N_cap) exhaustive test scores of a checkpoint: alignment scores for the teacher,
    dot products of the global embeddings for a student."""
    model = load_model(path, device)
    if isinstance(model, MatchingHead):
        return encode_images(model, store, batch_size=batch_size) @ encode_texts(model, store, batch_size=batch_size).T
    return score_store(model, store, device, chunk_mb, batch_size=batch_size).numpy()


def test_scenes(data_dir: Path, store: FeatureStore) -> list[dict[str, Any]] | None:
    """The test images' scene records (data/scenes.jsonl), None for a real dataset."""
    return scene_records(data_dir / "scenes.jsonl", store.image_ids)


def binding_metrics(scores: np.ndarray, store: FeatureStore, scenes: list[dict[str, Any]] | None) -> dict[str, Any]:
    """What the tie rule touches (score ties) and, on the scenes data, the within-family accuracy:
    text->image among the images of the caption's own scene family (same attribute words, bound
    differently), the skill the fine-grained teacher exists for."""
    out: dict[str, Any] = {"ties": count_score_ties(scores, store.caption_image)}
    if scenes is not None:
        out["within_family"] = within_family_metrics(scores, store.caption_image, [r["family"] for r in scenes])
    return out


def exhaustive_row(scores: np.ndarray, store: FeatureStore, data_dir: Path,
                   scenes: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The protocol metrics of a score matrix, score ties, the within-family accuracy (`scenes`:
    :func:`test_scenes`), and ECCV Caption / CxC on MS-COCO with caption ids."""
    row: dict[str, Any] = protocol_metrics(scores, store.caption_image)
    row.update(binding_metrics(scores, store, scenes))
    coco = load_coco_ids(data_dir, store.image_ids, captions_per_image(store.caption_image, store.n_images))
    if coco is not None:
        row["eccv"] = eccv_metrics(scores, *coco)
    return row


def oracle_row(store: FeatureStore, scenes: list[dict[str, Any]]) -> dict[str, Any]:
    """The ceiling: the caption parser's verdict (1 = the caption is true of the scene) as scores.

    Under the protocol's pessimistic tie rule every other image the caption is true of ranks
    ahead of the correct one ('5k' / '1k', 'within_family'); 't2i_random_ties' is the same judge
    picking at random among the true images. Its i2t recalls are near zero (generic captions are
    true of hundreds of scenes), so only text->image is a ceiling for learned rows.
    """
    scores = oracle_scores(scenes, store.captions)
    row: dict[str, Any] = protocol_metrics(scores, store.caption_image)
    row.update(binding_metrics(scores, store, scenes))
    row["t2i_random_ties"] = t2i_recall_random_ties(scores, store.caption_image)
    return row


def two_stage_scores(student_scores: np.ndarray, teacher_scores: np.ndarray, top_img: np.ndarray) -> np.ndarray:
    """(N_img, N_cap) float64 scores that order each caption's images as two-stage t2i does: its
    student top-k (`top_img` (N_cap, k), -1 = empty) by teacher score, then every other image by
    student score (shifted below any teacher score)."""
    out = student_scores.astype(np.float64) - (np.abs(teacher_scores).max() + 2 * np.abs(student_scores).max() + 1)
    caps = np.broadcast_to(np.arange(top_img.shape[0])[:, None], top_img.shape)
    listed = top_img >= 0
    out[top_img[listed], caps[listed]] = teacher_scores[top_img[listed], caps[listed]]
    return out


def evaluate_system(idx: IndexDir, store: FeatureStore, teacher_scores: np.ndarray,
                    fixed_rows: dict[str, dict[str, Any]], oracle: dict[str, Any] | None, cross: nn.Module | None,
                    p: EvaluateParams, seed: int, device: torch.device, data_dir: Path,
                    k: int = 10) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every row of metrics/eval.json: `fixed_rows` (the teacher's and the baseline student's,
    scored once by their own stages), the student through its index and exact, two-stage
    re-ranking by the teacher at `p.rerank_k` and per depth of `p.rerank_depths`, the `oracle`
    row (:func:`oracle_row`, computed once per dataset by its own stage; None without scene
    records), the cross-encoder rows when it was trained, and the rsum ratios ('summary').
    Returns (rows, depth rows of the re-rank sweep)."""
    cap_img = store.caption_image
    rows: dict[str, Any] = {name: dict(row) for name, row in fixed_rows.items()}
    retrieval = IndexedRetrieval(idx.image_emb, idx.caption_emb, idx.cfg, seed, full=(idx.images, idx.captions))
    rows["student"] = {**protocol(index_rank_fn(retrieval, cap_img, k), cap_img), "index": idx.cfg.kind}
    if idx.cfg.kind != "flat":
        rows["student"].update(index_recall(retrieval, k))
    student_scores = idx.image_emb @ idx.caption_emb.T
    scenes = test_scenes(data_dir, store)
    rows["student_exact"] = exhaustive_row(student_scores, store, data_dir, scenes)

    scorers = matrix_scorers(teacher_scores)
    rows["two_stage"] = {**protocol(two_stage_rank_fn(retrieval, cap_img, p.rerank_k, *scorers), cap_img),
                         "rerank_k": p.rerank_k}
    if oracle is not None:
        rows["oracle"] = oracle
    if scenes is not None:
        top_img = retrieval.topk(slice(0, store.n_images), slice(0, store.n_captions), p.rerank_k)[0]
        two_stage = two_stage_scores(student_scores, np.asarray(teacher_scores), top_img)
        rows["two_stage"]["within_family"] = binding_metrics(two_stage, store, scenes)["within_family"]
        rows["student"]["within_family"] = rows["student_exact"]["within_family"]
    depths = []
    for d in sorted(set(p.rerank_depths)):
        m = protocol(two_stage_rank_fn(retrieval, cap_img, d, *scorers), cap_img)
        depths.append({"rerank_k": d, **m[full_key(store.n_images)], "rsum_1k": m.get("1k", {}).get("rsum")})

    if cross is not None:
        from . import cross as cross_eval

        n = min(p.cross_fold_images, store.n_images)
        args = (n, p.cross_text_queries, p.cross_image_queries, seed)
        rows["cross_encoder"] = {"fold0_sampled": cross_eval.exhaustive_metrics(cross, store, device, *args)}
        cap_q, img_q = cross_eval.subsample_queries(store, *args)
        for name, matrix in (("teacher", teacher_scores), ("student_exact", student_scores)):
            rows[name]["fold0_sampled"] = cross_eval.sampled_metrics(matrix, store, n, cap_q, img_q, seed)
        fold0 = (slice(0, n), slice(0, n * captions_per_image(cap_img, store.n_images)))
        rows["cross_rerank"] = {"rerank_k": p.cross_rerank_k, "fold0": summarize(*two_stage_rank_fn(
            retrieval, cap_img, p.cross_rerank_k, *cross_eval.pair_scorers(cross, store, device))(*fold0))}
        rows["two_stage"]["fold0"] = summarize(*two_stage_rank_fn(retrieval, cap_img, p.cross_rerank_k,
                                                                  *scorers)(*fold0))
        rows["student"]["fold0"] = summarize(*index_rank_fn(retrieval, cap_img, k)(*fold0))
    rows["summary"] = rsum_ratios(rows, store.n_images)
    return rows, depths


def headline_metrics(rows: dict[str, Any]) -> dict[str, float]:
    """The figures an experiment is compared by: rsum of every row per protocol, and the ratios."""
    out = {f"{name}_{key}_rsum": m["rsum"] for name, row in rows.items() if name not in ("summary", "protocol")
           for key, m in row.items() if isinstance(m, dict) and "rsum" in m}
    return {**out, **rows.get("summary", {})}


LEARNED_ROWS = ("teacher", "student", "student_triplet", "two_stage")


def rsum_ratios(rows: dict[str, Any], n_images: int) -> dict[str, float]:
    """Whole-test-set rsum ratios between the rows that carry the paper's claims and, with the
    oracle row (scenes), each learned row's text->image recall sum as a fraction of the oracle's
    and its within-family R@1."""
    fk = full_key(n_images)
    rsum = {name: rows[name][fk]["rsum"] for name in ("teacher", "student", "student_triplet", "two_stage")}
    out = {"two_stage_rsum_vs_teacher": rsum["two_stage"] / rsum["teacher"],
           "student_rsum_vs_teacher": rsum["student"] / rsum["teacher"],
           "student_triplet_rsum_vs_teacher": rsum["student_triplet"] / rsum["teacher"],
           "two_stage_rsum_vs_student": rsum["two_stage"] / rsum["student"]}
    if "oracle" in rows:
        t2i = {name: sum(rows[name][fk][f"t2i_r{k}"] for k in KS) for name in (*LEARNED_ROWS, "oracle")}
        for name in LEARNED_ROWS:
            out[f"{name}_t2i_vs_oracle"] = t2i[name] / t2i["oracle"]
        for name in (*LEARNED_ROWS, "oracle"):
            out[f"{name}_family_r1"] = rows[name]["within_family"]["t2i_family_r1"]
    return out
