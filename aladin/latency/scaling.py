"""Stage `latency_scaling`: index search alone (query embedded) as the collection grows, on
synthetic clustered unit vectors of the student's width; independent of the student's weights."""
from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from ..retrieval.index import IndexConfig, build_index, recall_vs_exact, search
from .queries import clustered_collection, word_count_queries
from .timing import per_query, throughput

if TYPE_CHECKING:
    from ..params import LatencyParams

log = logging.getLogger("aladin")

def scaling_latency(dim: int, per_image: int, index_cfg: IndexConfig, cfg: LatencyParams,
                    seed: int, words: int) -> list[dict[str, Any]]:
    """Search alone (embedded queries) against flat and `scaling_kind` indexes of growing size, and
    the configured `index_cfg.kind` when it is neither: text queries over images, image queries
    over `per_image` captions per image. With the sparse index the text queries are word-count
    vectors of `words` codes (the codebook student's), otherwise clustered unit vectors."""
    flat = IndexConfig(kind="flat")
    approx = dataclasses.replace(index_cfg, kind=cfg.scaling_kind, nlist=cfg.scaling_nlist, nprobe=cfg.scaling_nprobe)
    kinds = [("student_flat", flat), (f"student_{cfg.scaling_kind}", approx)]
    if index_cfg.kind not in ("flat", cfg.scaling_kind):
        kinds.append((f"student_{index_cfg.kind}", index_cfg))
    n_queries = max(cfg.n_queries, cfg.throughput_queries)
    queries = (word_count_queries(n_queries, dim, words, seed + 1) if index_cfg.kind == "sparse"
               else clustered_collection(n_queries, dim, seed + 1))
    rows = []
    for n in sorted(set(cfg.sizes)):
        coll = clustered_collection(n, dim, seed)
        exact = None
        for method, icfg in kinds:
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
