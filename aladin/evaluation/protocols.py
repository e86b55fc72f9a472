"""Evaluation rows: every row of metrics/eval.json from exhaustive scores, the student through its
index, two-stage re-ranking (ranks: :mod:`aladin.evaluation.ranking`), the oracle and the
cross-encoder (:mod:`aladin.evaluation.cross`), each under the COCO protocols.

A test set's protocols: :func:`aladin.evaluation.metrics.protocol_description`.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..data.oracle import oracle_scores, scene_records
from ..datasets import eccv_metrics, load_coco_ids
from ..retrieval.encode import encode_images, encode_texts
from ..retrieval.index import IndexDir
from .metrics import (KS, captions_per_image, count_score_ties, full_key, protocol_metrics,
                      t2i_recall_random_ties, within_family_metrics)
from .cross import cross_rows
from .ranking import (IndexedRetrieval, index_rank_fn, index_recall, matrix_scorers, protocol, two_stage_rank_fn,
                      two_stage_scores)
from ..models.factory import load_model
from ..models.matching import MatchingHead
from ..params import TOP_K
from ..retrieval.store_scores import score_store
from ..store import FeatureStore

if TYPE_CHECKING:
    from ..params import EvaluateParams


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


def evaluate_system(idx: IndexDir, store: FeatureStore, teacher_scores: np.ndarray,
                    fixed_rows: dict[str, dict[str, Any]], oracle: dict[str, Any] | None, cross: nn.Module | None,
                    p: EvaluateParams, seed: int, device: torch.device,
                    data_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every row of metrics/eval.json: `fixed_rows` (the teacher's and the baseline student's,
    scored once by their own stages), the student through its index and exact, two-stage
    re-ranking by the teacher at `p.rerank_k` and per depth of `p.rerank_depths`, the `oracle`
    row (:func:`oracle_row`, computed once per dataset by its own stage; None without scene
    records), the cross-encoder rows when it was trained, and the rsum ratios ('summary').
    Returns (rows, depth rows of the re-rank sweep)."""
    cap_img = store.caption_image
    rows: dict[str, Any] = {name: dict(row) for name, row in fixed_rows.items()}
    retrieval = IndexedRetrieval(idx.image_emb, idx.caption_emb, idx.cfg, seed, full=(idx.images, idx.captions))
    rows["student"] = {**protocol(index_rank_fn(retrieval, cap_img, TOP_K), cap_img), "index": idx.cfg.kind}
    if idx.cfg.kind != "flat":
        rows["student"].update(index_recall(retrieval, TOP_K))
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
        two_stage = two_stage_scores(student_scores, scorers[0](np.arange(store.n_captions), top_img), top_img)
        rows["two_stage"]["within_family"] = binding_metrics(two_stage, store, scenes)["within_family"]
        rows["student"]["within_family"] = rows["student_exact"]["within_family"]
    depths = []
    for d in sorted(set(p.rerank_depths)):
        m = protocol(two_stage_rank_fn(retrieval, cap_img, d, *scorers), cap_img)
        depths.append({"rerank_k": d, **m[full_key(store.n_images)], "rsum_1k": m.get("1k", {}).get("rsum")})

    if cross is not None:
        families = None if scenes is None else np.array([r["family"] for r in scenes])
        rows.update(cross_rows(cross, rows, retrieval, store, teacher_scores, student_scores, families, p, seed,
                               device))
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
