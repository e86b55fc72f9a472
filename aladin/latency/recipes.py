"""Latency recipes: what each timing stage measures, split by what the measurement depends on.

- :func:`encoder_latency` (stage `latency_encoders`): the bare backbones on one raw query, the
  floor every method pays. Depends on the backbones only.
- :func:`teacher_latency` (stage `latency_teacher`): exhaustive teacher scoring of one query as
  the collection grows. Depends on the teacher and the backbones.
- :func:`scaling_latency` (stage `latency_scaling`): index search alone (query embedded) as the
  collection grows, on synthetic clustered unit vectors of the student's width. Depends on the
  index params and the embedding width, not on the student's weights.
- :func:`search_latency` (stage `latency`): the search system end to end on the real test
  collection (raw query -> backbone -> student -> index (-> teacher re-rank)), per index kind
  and per re-rank depth. The only part a student ablation re-runs.

:func:`latency_report` joins them into metrics/latency.json. Timing conventions: aladin.latency.timing.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from PIL import Image

from ..data.images import load_rgb
from ..errors import DataError
from ..features import TextBackbone, VisionBackbone, image_batch, text_batch
from ..retrieval.index import IndexConfig, build_index, exact_topk, recall_vs_exact, search
from ..evaluation.metrics import full_key
from ..retrieval.retriever import Retriever, ranked
from ..store import FeatureStore
from .timing import per_query, throughput

if TYPE_CHECKING:
    from ..params import LatencyParams

log = logging.getLogger("aladin")


def sample_ids(n: int, size: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=min(size, n), replace=False))


def test_image_files(store: FeatureStore) -> list[Path]:
    """The store's image files (image queries are timed from raw files); all must exist."""
    files = [Path(f) for f in store.image_files]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise DataError(f"{missing[0]}: test image not found ({len(missing)} missing); run the data stage")
    return files


def latency_queries(store: FeatureStore, image_files: Sequence[Path], cfg: LatencyParams,
                    seed: int) -> tuple[list[str], list[Image.Image]]:
    """The fixed query sample every timing stage uses: test captions (the first `n_queries` are
    timed one by one, all `throughput_queries` in batches) and decoded test images."""
    texts = [store.captions[j] for j in sample_ids(store.n_captions, max(cfg.n_queries, cfg.throughput_queries), seed)]
    images = [load_rgb(image_files[i]) for i in sample_ids(len(image_files), cfg.n_image_queries, seed)]
    return texts, images


def clustered_collection(n: int, dim: int, seed: int, clusters: int = 256, spread: float = 0.3) -> np.ndarray:
    """`n` unit vectors in `clusters` Gaussian clusters (centre + noise of norm about `spread`):
    a stand-in collection whose search cost matches real embeddings of that width."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), np.float32)
    step = 1 << 16                                   # bounded temporaries at 1M x dim
    for start in range(0, n, step):
        stop = min(start + step, n)
        rows = centres[rng.integers(clusters, size=stop - start)]
        rows = rows + rng.standard_normal(rows.shape, dtype=np.float32) * (spread / np.sqrt(dim))
        out[start:stop] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return out


def encoder_latency(text_backbone: TextBackbone, vision_backbone: VisionBackbone, texts: Sequence[str],
                    images: Sequence[Image.Image], cfg: LatencyParams) -> dict[str, Any]:
    """One raw query through its backbone alone: {'text': ..., 'image': ...} per-query stats."""
    out = {"text": per_query(lambda q: text_batch(text_backbone, [q]), texts[:cfg.n_queries], cfg.warmup),
           "image": per_query(lambda x: image_batch(vision_backbone, [x]), images, cfg.warmup)}
    log.info("encoders: text %.1f ms, image %.1f ms (p50)", out["text"]["p50_ms"], out["image"]["p50_ms"])
    return out


@torch.inference_mode()
def _teacher_text_search(retr: Retriever, query: str, n_images: int, k: int) -> np.ndarray:
    """Exhaustive teacher scoring of one text query against `n_images` images.

    Past the real collection the real teacher region vectors are scored again, chunk after chunk:
    the same FLOPs and memory traffic as that many distinct images (teacher cost is linear in N).
    """
    teacher, (emb, mask) = retr.teacher, retr.teacher_images
    txt, txt_mask = teacher.embed_texts(text_batch(retr.text_backbone, [query]))
    scores = []
    for start in range(0, n_images, len(emb)):
        m = min(len(emb), n_images - start)
        scores.append(teacher.score(emb[:m], mask[:m], txt, txt_mask)[:, 0])
    return torch.topk(torch.cat(scores), min(k, n_images)).indices.numpy()


def teacher_latency(retr: Retriever, texts: Sequence[str], images: Sequence[Image.Image],
                    cfg: LatencyParams) -> dict[str, Any]:
    """The exhaustive teacher: text-query rows per collection size, and image queries against
    every test caption, each on a fixed sample of `teacher_queries` queries."""
    few, warm = texts[:cfg.teacher_queries], min(cfg.warmup, 2)
    n_base, rows = retr.store.n_images, []
    for n in sorted(set(cfg.teacher_sizes)):
        row = per_query(lambda q: _teacher_text_search(retr, q, n, cfg.k), few, warm)
        rows.append({"method": "teacher", "query": "text", "n_images": n, "synthetic": n > n_base, **row})
        log.info("teacher, %d images: %.1f ms (p50, %d queries)", n, row["p50_ms"], len(few))
    retr.teacher_search_image(images[0])                  # caches the teacher caption vectors
    image = per_query(lambda x: retr.teacher_search_image(x, cfg.k), images[:cfg.teacher_queries], warm)
    return {"scaling": rows, "image": image}


def scaling_latency(dim: int, per_image: int, index_cfg: IndexConfig, cfg: LatencyParams,
                    seed: int) -> list[dict[str, Any]]:
    """Search alone (embedded queries) against flat and `scaling_kind` indexes of growing size:
    text queries over images, image queries over `per_image` captions per image."""
    flat = IndexConfig(kind="flat")
    approx = dataclasses.replace(index_cfg, kind=cfg.scaling_kind, nlist=cfg.scaling_nlist, nprobe=cfg.scaling_nprobe)
    queries = clustered_collection(max(cfg.n_queries, cfg.throughput_queries), dim, seed + 1)
    rows = []
    for n in sorted(set(cfg.sizes)):
        coll = clustered_collection(n, dim, seed)
        exact = None
        for method, icfg in (("student_flat", flat), (f"student_{cfg.scaling_kind}", approx)):
            index = build_index(coll, icfg, seed)
            row = per_query(lambda e: search(index, e[None], cfg.k), queries[:cfg.n_queries], cfg.warmup)
            row["qps"] = throughput(lambda b: search(index, b, cfg.k), queries, cfg.batch_size)
            ids = search(index, queries[:cfg.n_queries], cfg.k)[1]
            exact = ids if exact is None else exact
            row["recall_at_k_vs_flat"] = recall_vs_exact(ids, exact)
            rows.append({"method": method, "query": "text", "n_images": n, "synthetic": True, **row})
            log.info("%s search, %d images: %.3f ms (p50)", method, n, row["p50_ms"])
            del index
    for n in sorted(set(cfg.image_query_sizes)):
        index = build_index(clustered_collection(n * per_image, dim, seed), flat)
        row = per_query(lambda e: search(index, e[None], cfg.k), queries[:cfg.n_image_queries], cfg.warmup)
        rows.append({"method": "student_flat", "query": "image", "n_images": n, "synthetic": True, **row})
        del index
    return rows


def search_latency(retr: Retriever, texts: Sequence[str], images: Sequence[Image.Image], cfg: LatencyParams,
                   seed: int, rerank_k: int, rerank_depths: Sequence[int]) -> dict[str, Any]:
    """The search system on the real test collection: {'text', 'image', 'index_kinds', 'rerank'}."""
    idx, timed, w = retr.index, texts[:cfg.n_queries], cfg.warmup
    t: dict[str, Any] = {}
    t["student"] = per_query(lambda q: retr.search_text(q, cfg.k), timed, w)
    t["student"].update(index=idx.cfg.kind, qps=throughput(lambda b: retr.search_texts(b, cfg.k), texts, cfg.batch_size))
    t["two_stage"] = per_query(lambda q: retr.search_text(q, cfg.k, rerank_k), timed, w)
    t["two_stage"].update(rerank_k=rerank_k, qps=throughput(lambda b: retr.search_texts(b, cfg.k, rerank_k), texts,
                                                            cfg.batch_size))
    log.info("text: student %.1f ms, two-stage %.1f ms (p50)", t["student"]["p50_ms"], t["two_stage"]["p50_ms"])

    rerank = [{"rerank_k": d, **per_query(lambda q: retr.search_text(q, cfg.k, d), timed[:max(cfg.n_queries // 2, 1)], w)}
              for d in sorted(set(rerank_depths))]

    # Index kinds over the real test embeddings: recall of the exact top-k, search alone.
    q_emb = retr.encode_texts(timed)[1]
    exact = exact_topk(idx.image_emb, idx.caption_emb, cfg.k)
    kinds = []
    for kind in cfg.index_kinds:
        index = idx.of_kind(kind)
        row = {"kind": kind, "n_images": len(idx.image_emb),
               "recall_at_k_vs_flat": recall_vs_exact(search(index, idx.caption_emb, cfg.k)[1], exact)}
        row.update({f"search_{k_}": v for k_, v in per_query(lambda e: search(index, e[None], cfg.k), q_emb, w).items()})
        kinds.append(row)

    im: dict[str, Any] = {}
    im["student"] = per_query(lambda x: retr.search_image(x, cfg.k), images, w)
    im["student"]["qps"] = throughput(lambda b: retr.search_images(b, cfg.k), images, cfg.batch_size)
    im["two_stage"] = per_query(lambda x: retr.search_image(x, cfg.k, rerank_k), images, w)
    im["two_stage"]["rerank_k"] = rerank_k
    return {"text": t, "image": im, "index_kinds": kinds, "rerank": rerank}


def cross_encoder_rows(retr: Retriever, model: torch.nn.Module, texts: Sequence[str], cfg: LatencyParams,
                       rerank_k: int) -> list[dict[str, Any]]:
    """Text-query latency of the cross-encoder: raw text -> backbone -> one joint pass per image
    (``cross_encoder``), and as a re-ranker of the student's top `rerank_k` on the whole test
    collection (``cross_rerank``: raw text -> backbone -> student -> index -> rerank_k passes).

    Real test images only (sizes past the test set are skipped): its cost is one transformer
    pass per pair, so a fixed sample of `cross_queries` queries is timed.
    """
    from ..evaluation.cross import text_search_fn

    store, queries, rows = retr.store, texts[:cfg.cross_queries], []
    device = next(model.parameters()).device
    for n in sorted(n for n in set(cfg.cross_sizes) if n <= store.n_images):
        search_fn = text_search_fn(model, store, n, device)

        def query(q: str) -> np.ndarray:
            scores = torch.as_tensor(search_fn(text_batch(retr.text_backbone, [q])))
            return torch.topk(scores, min(cfg.k, n)).indices.numpy()
        row = per_query(query, queries, min(cfg.warmup, 1))
        rows.append({"method": "cross_encoder", "query": "text", "n_images": n, "synthetic": False, **row})
        log.info("cross-encoder, %d images: %.1f ms (p50, %d queries)", n, row["p50_ms"], len(queries))

    rescore = text_search_fn(model, store, store.n_images, device)

    def rerank(q: str) -> np.ndarray:
        batch, emb = retr.encode_texts([q])                          # one backbone pass serves both
        scores, ids = search(retr.index.images, emb, rerank_k)
        return ranked(scores[0], ids[0], cfg.k, lambda i: rescore(batch, i))[1]
    row = per_query(rerank, texts[:cfg.n_queries], cfg.warmup)
    rows.append({"method": "cross_rerank", "query": "text", "n_images": store.n_images, "synthetic": False,
                 "rerank_k": rerank_k, **row})
    log.info("cross-encoder re-ranking the student's top %d: %.1f ms (p50)", rerank_k, row["p50_ms"])
    return rows


# -- the report ---------------------------------------------------------------------------------
def _p50(rows: list[dict], method: str, n: int, query: str = "text") -> float | None:
    hit = [r["p50_ms"] for r in rows if r["method"] == method and r["query"] == query and r["n_images"] == n]
    return hit[0] if hit else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _check(value: float | None, limit: float, at_least: bool = False) -> dict[str, Any]:
    ok = None if value is None else (value >= limit if at_least else value <= limit)
    return {"value": value, "limit": limit, "ok": ok}


def latency_report(system: dict[str, Any], encoders: dict[str, Any], teacher: dict[str, Any],
                   scaling: list[dict[str, Any]], cross: list[dict[str, Any]], evaluation: dict[str, Any],
                   cfg: LatencyParams) -> dict[str, Any]:
    """metrics/latency.json: per-query stats, speed ratios and the project's targets.

    The student's end-to-end latency at a collection size N (``*_e2e`` rows) is its measured
    end-to-end latency on the real test collection, less the search time of its index there, plus
    the search time at N (`scaling`): the backbone and the student's query tower cost the same
    whatever N is.
    """
    t = {"encoder_only": encoders["text"], **system["text"]}
    im = {"encoder_only": encoders["image"], **system["image"], "teacher": teacher["image"]}
    own = next(r for r in system["index_kinds"] if r["kind"] == t["student"]["index"])
    overhead = t["student"]["p50_ms"] - own["search_p50_ms"]
    e2e = [{**r, "method": f"{r['method']}_e2e", "p50_ms": overhead + r["p50_ms"],
            "p95_ms": None, "mean_ms": None, "qps": None}
           for r in scaling if r["query"] == "text"]
    rows = scaling + teacher["scaling"] + cross + e2e
    student = {n: _p50(rows, "student_flat_e2e", n) for n in (1000, 5000, 100000)}
    teacher_p50 = {n: _p50(rows, "teacher", n) for n in (5000, 100000)}
    cross_p50 = {n: _p50(rows, "cross_encoder", n) for n in (1000, 5000)}
    summary = {
        "speedup_cross_vs_student_1k": _ratio(cross_p50[1000], student[1000]),
        "speedup_cross_vs_student_5k": _ratio(cross_p50[5000], t["student"]["p50_ms"]),
        "speedup_teacher_vs_student_5k": _ratio(teacher_p50[5000], t["student"]["p50_ms"]),
        "speedup_teacher_vs_student_100k": _ratio(teacher_p50[100000], student[100000]),
        "two_stage_latency_vs_student": t["two_stage"]["p50_ms"] / t["student"]["p50_ms"],
        "two_stage_latency_vs_teacher_5k": _ratio(t["two_stage"]["p50_ms"], teacher_p50[5000]),
        "two_stage_rsum_vs_teacher": evaluation["summary"]["two_stage_rsum_vs_teacher"],
        "two_stage_rsum_vs_student": evaluation["summary"]["two_stage_rsum_vs_student"],
    }
    approx_100k = _p50(rows, f"student_{cfg.scaling_kind}_e2e", 100000)
    targets = {
        "student_5k_vs_text_encoder": _check(t["student"]["p50_ms"] / t["encoder_only"]["p50_ms"], 1.25),
        f"student_100k_{cfg.scaling_kind}_vs_1k_flat": _check(_ratio(approx_100k, student[1000]), 1.5),
        "two_stage_rsum_vs_teacher": _check(summary["two_stage_rsum_vs_teacher"], 0.99, at_least=True),
        "two_stage_vs_student_latency": _check(summary["two_stage_latency_vs_student"], 1.5),
    }
    conventions = {
        "timing": "wall clock per query after warm-up, raw input to ranked ids, "
                  f"{cfg.threads} thread(s) for torch and faiss",
        "scaling": "search alone (query embedded) on synthetic clustered unit vectors of the student's width; "
                   f"*_e2e rows add the end-to-end overhead measured on the test collection ({overhead:.2f} ms: "
                   "backbone, student, ids)",
        "teacher": f"exhaustive scoring timed on a fixed sample of {cfg.teacher_queries} queries; past the test "
                   "set it rescores the real set chunk by chunk",
        "cross_encoder": f"one joint pass per (query, image) pair, timed on a fixed sample of {cfg.cross_queries} "
                         "queries, real test images only",
        "image_queries": "decoded test images (PIL), resized and encoded by the vision backbone"}
    return {"text": t, "image": im, "summary": summary, "targets": targets, "conventions": conventions,
            "scaling": rows, "index_kinds": system["index_kinds"], "rerank": system["rerank"]}


def efficiency_points(report: dict[str, Any], depths: list[dict[str, Any]], evaluation: dict[str, Any],
                      scaling: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The paper's efficiency-vs-effectiveness figure: one point per method, rsum under the 1K
    protocol against the p50 latency of a text query on the whole test collection (5K).

    1K rsum is the mean over the five folds, except for the cross-encoder rows, which are scored
    on fold 0 (sampled queries for the exhaustive one); the `protocol` column says which (a test
    set smaller than 5K has only its full-set key). The student without distillation has the
    student's architecture, so its latency.
    """
    n = evaluation["protocol"]["n_images"]
    key = "1k" if "1k" in evaluation["teacher"] else full_key(n)
    student_ms = report["text"]["student"]["p50_ms"]
    pts = [{"method": "student", "rsum": evaluation["student"][key]["rsum"], "p50_ms": student_ms},
           {"method": "student_triplet", "rsum": evaluation["student_triplet"][key]["rsum"], "p50_ms": student_ms},
           {"method": "teacher", "rsum": evaluation["teacher"][key]["rsum"], "p50_ms": _p50(scaling, "teacher", n)}]
    pts += [{"method": f"two_stage_k{int(d['rerank_k'])}", "rsum": d["rsum_1k"] if key == "1k" else d["rsum"],
             "p50_ms": d["e2e_p50_ms"]} for d in depths]
    pts = [{**p, "protocol": key} for p in pts]
    if "cross_encoder" in evaluation:
        k = evaluation["cross_rerank"]["rerank_k"]
        pts += [{"method": "cross_encoder", "rsum": evaluation["cross_encoder"]["fold0_sampled"]["rsum"],
                 "p50_ms": _p50(scaling, "cross_encoder", n), "protocol": "fold0_sampled"},
                {"method": f"cross_rerank_k{k}", "rsum": evaluation["cross_rerank"]["fold0"]["rsum"],
                 "p50_ms": _p50(scaling, "cross_rerank", n), "protocol": "fold0"}]
    return [p for p in pts if p["p50_ms"] is not None]


def plot_efficiency(points: list[dict[str, Any]], path: Path) -> None:
    """plots/efficiency.png: rsum against per-query latency (log axis), a point per method."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_path

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for p in points:
        marker = "s" if p["method"].startswith("cross") else "D" if p["method"] == "teacher" else "o"
        ax.semilogx(p["p50_ms"], p["rsum"], marker, color="C3" if p["method"].startswith("cross") else "C0")
        ax.annotate(p["method"], (p["p50_ms"], p["rsum"]), fontsize=7, xytext=(4, 2), textcoords="offset points")
    ax.set(xlabel="p50 latency per text query, whole test collection (ms, log)",
           ylabel=f"rsum ({points[0]['protocol']} protocol)",
           title="Effectiveness vs efficiency (red: cross-encoder, fold 0)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def plot_report(report: dict[str, Any], depths: list[dict[str, Any]], path: Path) -> None:
    """plots/latency.png: latency against collection size, index kinds, re-rank depth."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from ..io import atomic_path

    fig, ax = plt.subplots(1, 3, figsize=(16, 4.5))
    sc = pd.DataFrame(report["scaling"])
    for (method, query), g in sc.groupby(["method", "query"]):
        ax[0].loglog(g["n_images"], g["p50_ms"], "o-", label=f"{method} ({query} query)")
    ax[0].set(xlabel="collection size (images)", ylabel="p50 latency per query (ms)",
              title="Latency vs collection size (synthetic past the test set)")
    ax[0].legend(fontsize=7)
    kinds = pd.DataFrame(report["index_kinds"])
    ax[1].plot(kinds["search_p50_ms"], kinds["recall_at_k_vs_flat"], "o")
    for _, r in kinds.iterrows():
        ax[1].annotate(r["kind"], (r["search_p50_ms"], r["recall_at_k_vs_flat"]))
    ax[1].set(xlabel="search p50 (ms, query embedded)", ylabel="recall@10 of exact top-10", title="Index kinds")
    d = pd.DataFrame(depths)
    ax[2].plot(d["e2e_p50_ms"], d["rsum"], "o-")
    for _, r in d.iterrows():
        ax[2].annotate(f"k={int(r['rerank_k'])}", (r["e2e_p50_ms"], r["rsum"]))
    ax[2].set(xlabel="two-stage p50 end to end (ms)", ylabel="rsum (full test set)", title="Re-rank depth")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
