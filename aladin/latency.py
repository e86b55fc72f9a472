"""Latency harness: per-query percentiles, batched throughput, synthetic larger collections.

Conventions (stated in every output): times are wall-clock ``time.perf_counter`` around the
whole call, after `warmup` untimed calls, one query at a time, with torch and faiss thread
counts fixed by the caller (:func:`fix_threads`). Throughput runs the queries in batches.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import faiss
import numpy as np
import torch
from PIL import Image

from .config import require
from .features import image_batch, text_batch
from .index import KINDS, IndexConfig, Kind, build_index, exact_topk, recall_vs_exact, search
from .retriever import Retriever


def fix_threads(n: int) -> None:
    """The same thread count for torch (intra-op) and faiss (OpenMP); both default to all cores."""
    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)


def time_calls(fn: Callable[[Any], Any], queries: Sequence[Any], warmup: int = 5) -> np.ndarray:
    """Milliseconds of ``fn(q)`` for each query, after `warmup` untimed calls on the first queries."""
    for q in list(queries[:warmup]):
        fn(q)
    ms = np.empty(len(queries))
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        fn(q)
        ms[i] = (time.perf_counter() - t0) * 1e3
    return ms


def summarize_ms(ms: np.ndarray) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "mean_ms": float(np.mean(ms)), "n_queries": int(len(ms))}


def per_query(fn: Callable[[Any], Any], queries: Sequence[Any], warmup: int = 5) -> dict[str, float]:
    """p50 / p95 / mean ms per query (see the module's conventions)."""
    return summarize_ms(time_calls(fn, queries, warmup))


def throughput(fn_batch: Callable[[Sequence[Any]], Any], queries: Sequence[Any], batch_size: int) -> float:
    """Queries per second when `queries` are answered `batch_size` at a time (after one warm-up batch)."""
    batches = [queries[i:i + batch_size] for i in range(0, len(queries), batch_size)]
    fn_batch(batches[0])
    t0 = time.perf_counter()
    for b in batches:
        fn_batch(b)
    return len(queries) / (time.perf_counter() - t0)


def perturbed_collection(base: np.ndarray, n: int, noise: float, seed: int) -> np.ndarray:
    """A collection of `n` unit vectors grown from `base` (N0, D): its first rows are `base` itself,
    then copies of base rows with Gaussian noise of norm about `noise`, re-normalised.

    Used to time search beyond the real test set: same dimension and norm as real embeddings,
    and clustered like them, but not real items (every output says so).
    """
    base = np.ascontiguousarray(base, dtype=np.float32)
    if n <= len(base):
        return base[:n].copy()
    rng = np.random.default_rng(seed)
    out = np.empty((n, base.shape[1]), np.float32)
    out[:len(base)] = base
    step = 1 << 16                           # fill in blocks: bounded temporaries at 1M x D
    for start in range(len(base), n, step):
        stop = min(start + step, n)
        rows = base[np.arange(start, stop) % len(base)]
        eps = rng.standard_normal(rows.shape, dtype=np.float32) * (noise / np.sqrt(base.shape[1]))
        rows = rows + eps
        out[start:stop] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return out


# -- the benchmark of the search system -----------------------------------------------------------
@dataclass(frozen=True)
class LatencyConfig:
    threads: int = 1                     # torch and faiss threads; fixed so runs compare
    n_queries: int = 100                 # timed single queries per measurement (text)
    n_image_queries: int = 40            # timed single queries per measurement (image)
    teacher_queries: int = 10            # fixed query sample for the exhaustive teacher (slow)
    warmup: int = 5
    batch_size: int = 64                 # batched throughput
    throughput_queries: int = 256
    k: int = 10
    sizes: list[int] = field(default_factory=lambda: [1000, 5000, 25000, 100000, 1000000])
    teacher_sizes: list[int] = field(default_factory=lambda: [1000, 5000, 25000, 100000])
    image_query_sizes: list[int] = field(default_factory=lambda: [1000, 5000, 25000, 100000])
    index_kinds: list[str] = field(default_factory=lambda: list(KINDS))
    noise: float = 0.3                   # norm of the perturbation of synthetic copies
    scaling_kind: Kind = "ivf_flat"      # the approximate index timed beside flat as N grows
    scaling_nlist: int = 256
    scaling_nprobe: int = 16
    cross_queries: int = 3               # fixed query sample for the cross-encoder (one pass per pair)
    cross_sizes: list[int] = field(default_factory=lambda: [1000, 5000])
    device: str = "cpu"

    def validate(self) -> None:
        for name in ("threads", "n_queries", "n_image_queries", "teacher_queries", "batch_size",
                     "throughput_queries", "k"):
            require(getattr(self, name) > 0, name, "must be > 0")
        require(self.warmup >= 0, "warmup", "must be >= 0")
        for name in ("sizes", "teacher_sizes", "image_query_sizes"):
            require(len(getattr(self, name)) > 0 and min(getattr(self, name)) > 0, name, "must be positive sizes")
        require(all(kd in KINDS for kd in self.index_kinds), "index_kinds", f"must be among {list(KINDS)}")
        require(self.noise >= 0, "noise", "must be >= 0")
        require(self.cross_queries > 0 and min(self.cross_sizes, default=1) > 0, "cross_queries",
                "cross_queries and cross_sizes must be > 0")
        require(0 < self.scaling_nprobe <= self.scaling_nlist <= min(self.sizes), "scaling_nprobe",
                "need 0 < scaling_nprobe <= scaling_nlist <= the smallest size")


def _sample(n: int, size: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=min(size, n), replace=False))


@torch.inference_mode()
def _teacher_text_search(retr: Retriever, query: str, n_images: int, k: int) -> np.ndarray:
    """Exhaustive teacher scoring of one text query against `n_images` images.

    Past the real collection the real teacher region vectors are scored again, chunk after chunk:
    the same FLOPs and memory traffic as that many distinct images (teacher cost is linear in N).
    """
    teacher, (emb, mask) = retr.teacher, retr.teacher_images
    batch = text_batch(retr.text_backbone, [query])
    txt, txt_mask = teacher.embed_texts(batch)
    scores = []
    for start in range(0, n_images, len(emb)):
        m = min(len(emb), n_images - start)
        scores.append(teacher.score(emb[:m], mask[:m], txt, txt_mask)[:, 0])
    return torch.topk(torch.cat(scores), min(k, n_images)).indices.numpy()


def run_latency(retr: Retriever, cfg: LatencyConfig, seed: int, rerank_k: int,
                rerank_depths: list[int], image_files: list[Path]) -> dict[str, Any]:
    """All latency measurements; returns {'text': ..., 'image': ..., 'scaling': [...], 'index_kinds': [...],
    'rerank': [...]} (rows of the last three feed the plots)."""
    log = logging.getLogger("aladin")
    store, idx = retr.store, retr.index
    texts = [store.captions[j] for j in _sample(store.n_captions, max(cfg.n_queries, cfg.throughput_queries), seed)]
    timed = texts[:cfg.n_queries]
    few = texts[:cfg.teacher_queries]
    images = [Image.open(image_files[i]).convert("RGB") for i in _sample(len(image_files), cfg.n_image_queries, seed)]
    n_base = store.n_images
    w = cfg.warmup
    out: dict[str, Any] = {"text": {}, "image": {}, "scaling": [], "index_kinds": [], "rerank": []}

    # Text queries on the real test collection.
    t = out["text"]
    t["encoder_only"] = per_query(lambda q: text_batch(retr.text_backbone, [q]), timed, w)
    retr.rerank_k = rerank_k
    t["student"] = per_query(lambda q: retr.search_text(q, cfg.k), timed, w)
    t["student"]["index"] = idx.cfg.kind
    t["student"]["qps"] = throughput(lambda b: retr.search_texts(b, cfg.k), texts, cfg.batch_size)
    t["two_stage"] = per_query(lambda q: retr.search_text(q, cfg.k, rerank=True), timed, w)
    t["two_stage"].update(rerank_k=rerank_k, qps=throughput(lambda b: retr.search_texts(b, cfg.k, True), texts,
                                                            cfg.batch_size))
    log.info("text: encoder %.1f ms, student %.1f ms, two-stage %.1f ms (p50)", t["encoder_only"]["p50_ms"],
             t["student"]["p50_ms"], t["two_stage"]["p50_ms"])

    # Re-rank depth sweep (two-stage, real collection).
    for d in sorted(set(rerank_depths)):
        retr.rerank_k = d
        row = per_query(lambda q: retr.search_text(q, cfg.k, rerank=True), timed[:max(cfg.n_queries // 2, 1)], w)
        out["rerank"].append({"rerank_k": d, **row})
    retr.rerank_k = rerank_k

    # Index kinds on the real collection: search alone (precomputed query embeddings) and end to end.
    q_emb = retr.encode_texts(timed)[1]
    exact = exact_topk(idx.image_emb, idx.caption_emb, cfg.k)
    for kind in cfg.index_kinds:
        index = build_index(idx.image_emb, dataclasses.replace(idx.cfg, kind=kind), seed)
        row = {"kind": kind, "n_images": n_base,
               "recall_at_k_vs_flat": recall_vs_exact(search(index, idx.caption_emb, cfg.k)[1], exact)}
        row.update({f"search_{k_}": v for k_, v in per_query(lambda e: search(index, e[None], cfg.k), q_emb, w).items()})
        row.update({f"e2e_{k_}": v for k_, v in
                    per_query(lambda q: search(index, retr.encode_texts([q])[1], cfg.k), timed, w).items()})
        out["index_kinds"].append(row)

    # Scaling: student (flat, exact) and teacher as the image collection grows.
    flat = IndexConfig(kind="flat")
    approx = dataclasses.replace(idx.cfg, kind=cfg.scaling_kind, nlist=cfg.scaling_nlist, nprobe=cfg.scaling_nprobe)
    for n in sorted(set(cfg.sizes)):
        coll = perturbed_collection(idx.image_emb, n, cfg.noise, seed)
        exact_n = None
        for method, icfg in (("student_flat", flat), (f"student_{cfg.scaling_kind}", approx)):
            index = build_index(coll, icfg, seed)
            row = per_query(lambda q: search(index, retr.encode_texts([q])[1], cfg.k), timed, w)
            row["qps"] = throughput(lambda b: search(index, retr.encode_texts(b)[1], cfg.k), texts, cfg.batch_size)
            ids = search(index, q_emb, cfg.k)[1]
            exact_n = ids if exact_n is None else exact_n
            row["recall_at_k_vs_flat"] = recall_vs_exact(ids, exact_n)
            out["scaling"].append({"method": method, "query": "text", "n_images": n, "synthetic": n > n_base, **row})
            log.info("%s, %d images: %.1f ms (p50)", method, n, row["p50_ms"])
            del index
        del coll
    if retr.teacher is not None:
        for n in sorted(set(cfg.teacher_sizes)):
            row = per_query(lambda q: _teacher_text_search(retr, q, n, cfg.k), few, min(w, 2))
            out["scaling"].append({"method": "teacher", "query": "text", "n_images": n,
                                   "synthetic": n > n_base, **row})
            log.info("teacher, %d images: %.1f ms (p50, %d queries)", n, row["p50_ms"], len(few))

    # Image queries: real collection, then caption collections of 5 captions per image.
    im = out["image"]
    im["encoder_only"] = per_query(lambda x: image_batch(retr.vision_backbone, [x]), images, w)
    im["student"] = per_query(lambda x: retr.search_image(x, cfg.k), images, w)
    im["student"]["qps"] = throughput(lambda b: retr.search_images(b, cfg.k), images, cfg.batch_size)
    im["two_stage"] = per_query(lambda x: retr.search_image(x, cfg.k, rerank=True), images, w)
    im["two_stage"]["rerank_k"] = rerank_k
    if retr.teacher is not None:
        retr.teacher_search_image(images[0])                  # caches the teacher caption vectors
        im["teacher"] = per_query(lambda x: retr.teacher_search_image(x, cfg.k), images[:cfg.teacher_queries],
                                  min(w, 2))
    per_image = store.n_captions // n_base
    for n in sorted(set(cfg.image_query_sizes)):
        coll = perturbed_collection(idx.caption_emb, n * per_image, cfg.noise, seed)
        index = build_index(coll, flat)
        row = per_query(lambda x: search(index, retr.encode_images([x])[1], cfg.k), images, w)
        out["scaling"].append({"method": "student_flat", "query": "image", "n_images": n,
                               "synthetic": n > n_base, **row})
        del index, coll
    return out


def cross_encoder_rows(retr: Retriever, model: torch.nn.Module, cfg: LatencyConfig, seed: int) -> list[dict[str, Any]]:
    """Text-query latency of the cross-encoder: raw text -> backbone -> one joint pass per image.

    Real test images only (sizes past the test set are skipped): its cost is one transformer
    pass per pair, so a fixed sample of `cross_queries` queries is timed.
    """
    from .cross_eval import text_search_fn

    store = retr.store
    queries = [store.captions[j] for j in _sample(store.n_captions, cfg.cross_queries, seed)]
    rows = []
    for n in sorted(n for n in set(cfg.cross_sizes) if n <= store.n_images):
        search_fn = text_search_fn(model, store, n, next(model.parameters()).device)

        def query(q: str) -> np.ndarray:
            scores = torch.as_tensor(search_fn(text_batch(retr.text_backbone, [q])))
            return torch.topk(scores, min(cfg.k, n)).indices.numpy()
        row = per_query(query, queries, min(cfg.warmup, 1))
        rows.append({"method": "cross_encoder", "query": "text", "n_images": n, "synthetic": False, **row})
        logging.getLogger("aladin").info("cross-encoder, %d images: %.1f ms (p50, %d queries)",
                                         n, row["p50_ms"], len(queries))
    return rows
