"""HNSW at 1M vectors: recall@10 of the exact (flat) top-10 and per-query speed-up over flat.

Run on its own (not part of `dvc repro`; building the graph takes minutes on 2 cores):

    python benchmarks/hnsw_1m.py                     # index/image_emb.npy grown to 1M, else random
    python benchmarks/hnsw_1m.py --n 200000 --ef-search 64 128

The collection is the student's test image embeddings (index/image_emb.npy) plus perturbed
copies up to --n (aladin.latency.queries.perturbed_collection), or clustered random unit vectors when
no index has been built; queries are the test caption embeddings (or held-out random points).
Single-query latency is measured with 1 thread (faiss parallelises across queries, not within
one), after a warm-up; the graph is built with all cores. Targets: recall@10 >= 0.95 and
>= 10x faster than flat per query. Prints the figures and writes --out (JSON).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


import numpy as np

from aladin.retrieval.index import IndexConfig, build_index, recall_vs_exact, search
from aladin.runtime import set_threads
from aladin.latency.queries import perturbed_collection
from aladin.latency.timing import per_query


def data(n: int, n_queries: int, dim: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    rng = np.random.default_rng(seed)
    emb = Path("index/image_emb.npy")
    if emb.is_file():
        base = np.load(emb)
        caps = Path("index/caption_emb.npy")
        queries = np.load(caps) if caps.is_file() else base
        source = f"{emb} ({len(base)} real rows) + perturbed copies (noise {noise})"
    else:
        centres = rng.standard_normal((5000, dim)).astype(np.float32)
        base = centres / np.linalg.norm(centres, axis=1, keepdims=True)
        queries = perturbed_collection(base, 2 * len(base), noise, seed + 1)[len(base):]
        source = f"random unit vectors: 5000 centres + perturbed copies (noise {noise})"
    queries = queries[rng.choice(len(queries), size=min(n_queries, len(queries)), replace=False)]
    return perturbed_collection(base, n, noise, seed), np.ascontiguousarray(queries, dtype=np.float32), source


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=256, help="only for random data")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--m", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=64)
    ap.add_argument("--ef-search", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--noise", type=float, default=0.3)
    ap.add_argument("--build-threads", type=int, default=0, help="0 = all cores")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/hnsw_1m.json"))
    a = ap.parse_args()

    build_threads = a.build_threads or os.cpu_count() or 1
    coll, queries, source = data(a.n, a.queries, a.dim, a.noise, a.seed)
    print(f"collection {coll.shape}, {len(queries)} queries: {source}", flush=True)
    flat = build_index(coll, IndexConfig(kind="flat"))
    set_threads(1)
    exact = search(flat, queries, 10)[1]
    flat_ms = per_query(lambda q: search(flat, q[None], 10), queries)
    print(f"flat: p50 {flat_ms['p50_ms']:.2f} ms, p95 {flat_ms['p95_ms']:.2f} ms per query (1 thread)", flush=True)
    del flat

    set_threads(build_threads)
    cfg = IndexConfig(kind="hnsw", hnsw_m=a.m, ef_construction=a.ef_construction)
    t0 = time.perf_counter()
    hnsw = build_index(coll, cfg, a.seed)
    build_s = time.perf_counter() - t0
    print(f"hnsw M={a.m} efConstruction={a.ef_construction}: built in {build_s:.0f} s", flush=True)
    set_threads(1)
    rows = []
    for ef in a.ef_search:
        hnsw.hnsw.efSearch = ef
        ms = per_query(lambda q: search(hnsw, q[None], 10), queries)
        recall = recall_vs_exact(search(hnsw, queries, 10)[1], exact)
        speedup = flat_ms["p50_ms"] / ms["p50_ms"]
        ok = recall >= 0.95 and speedup >= 10
        rows.append({"ef_search": ef, "recall10_vs_flat": recall, "speedup_p50": speedup, "targets_met": ok, **ms})
        print(f"  efSearch {ef:4d}: recall@10 {recall:.4f}, p50 {ms['p50_ms']:.3f} ms, p95 {ms['p95_ms']:.3f} ms, "
              f"{speedup:.1f}x faster than flat -> {'PASS' if ok else 'FAIL'} (>= 0.95, >= 10x)", flush=True)
    result = {"n": a.n, "dim": int(coll.shape[1]), "queries": len(queries), "source": source,
              "hnsw_m": a.m, "ef_construction": a.ef_construction, "build_seconds": build_s,
              "build_threads": build_threads, "flat": flat_ms, "hnsw": rows,
              "timing": "single queries, 1 thread, after a warm-up of 5"}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
