"""Timing harness: per-query percentiles and batched throughput.

Conventions (stated in every output): times are wall-clock ``time.perf_counter`` around the
whole call, after `warmup` untimed calls, one query at a time, with torch and faiss thread
counts fixed by the caller (:func:`aladin.runtime.set_threads`). Throughput runs the queries in
batches.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np


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


