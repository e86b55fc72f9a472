"""Stage `latency`: the search system end to end on the real test collection (raw query ->
backbone -> student -> index (-> teacher re-rank)), per index kind and re-rank depth."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Sequence

from PIL import Image

from ..retrieval.index import exact_topk, recall_vs_exact, search
from ..retrieval.retriever import Retriever
from .timing import per_query, throughput

if TYPE_CHECKING:
    from ..params import LatencyParams

log = logging.getLogger("aladin")

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
