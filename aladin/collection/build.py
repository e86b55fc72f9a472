"""The faiss index of a collection, chosen for its size under a memory budget.

- Below ``flat_threshold`` vectors, when the raw vectors fit the budget: exact search
  (``IDMap,Flat``): nothing to tune, and at 100K x 128 a query costs about 10 ms on one core.
- Above it (or when flat does not fit): an IVF index with nlist ~ 2 sqrt(n) (a power of two) and
  the largest code whose lists, ids and tables fit the budget: ``SQ8`` (D bytes, 8-bit scalar
  quantisation, recall close to exact), else ``PQ{m}`` (m bytes, m dividing D, at most D/2); trained on a sample of ``TRAIN_PER_LIST * nlist`` vectors; ``nprobe`` the smallest
  power of two that reaches ``target_recall`` @10 against exact search on held-out queries.
  IVF-PQ rather than HNSW because its inverted lists are memory-mapped at search time
  (faiss.IO_FLAG_MMAP): the index need not fit in RAM, which an HNSW graph must.

This is autofaiss's rule of thumb (criteo/autofaiss) done in place: autofaiss itself pins
numpy < 2 and pandas < 3, which this project's stack has moved past (docs/SEARCH.md).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import faiss
import numpy as np

from ..errors import ConfigError

TRAIN_PER_LIST = 40            # k-means sample per cell (faiss warns below 39)
PQ_BITS = 8
ID_BYTES = 8
Batches = Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]    # -> (ids (b,), vectors (b, D)) batches


@dataclass(frozen=True)
class IndexPlan:
    kind: str                  # flat | ivf_sq8 | ivf_pq
    n: int
    dim: int
    memory_bytes: int          # estimated resident size of the index
    nlist: int = 0
    pq_m: int = 0
    nprobe: int = 0

    def factory(self) -> str:
        if self.kind == "flat":
            return "IDMap,Flat"
        return f"IVF{self.nlist},SQ8" if self.kind == "ivf_sq8" else f"IVF{self.nlist},PQ{self.pq_m}x{PQ_BITS}"

    def to_dict(self) -> dict:
        return {**asdict(self), "factory": self.factory()}


def parse_bytes(text: str) -> int:
    """'512M', '4G', '1.5GB', '1000000' -> bytes (powers of 1024)."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if scale > 1 else t)
    except ValueError:
        raise ConfigError(f"--max-index-memory: {text!r} is not a size such as 512M or 4G") from None
    if value <= 0:
        raise ConfigError(f"--max-index-memory: must be positive, got {text!r}")
    return int(value * scale)


def flat_bytes(n: int, d: int) -> int:
    return n * (4 * d + ID_BYTES)


def ivfpq_bytes(n: int, d: int, nlist: int, m: int) -> int:
    return n * (m + ID_BYTES) + nlist * d * 4 + (2 ** PQ_BITS) * d * 4


def plan_index(n: int, d: int, max_memory: int, flat_threshold: int) -> IndexPlan:
    """The index for `n` vectors of width `d` under `max_memory` bytes (see the module docstring)."""
    if n < flat_threshold and flat_bytes(n, d) <= max_memory or n < TRAIN_PER_LIST * 2 ** PQ_BITS:
        if flat_bytes(n, d) > max_memory:
            raise ConfigError(f"--max-index-memory: {max_memory} bytes cannot hold {n} x {d} vectors "
                              f"(flat needs {flat_bytes(n, d)}; too few vectors to train a compressed index)")
        return IndexPlan("flat", n, d, flat_bytes(n, d))
    nlist = 2 ** round(math.log2(max(2 * math.sqrt(n), 1)))
    nlist = min(nlist, n // TRAIN_PER_LIST)
    sq8 = n * (d + ID_BYTES) + nlist * d * 4
    if sq8 <= max_memory:
        return IndexPlan("ivf_sq8", n, d, sq8, nlist)
    for m in sorted((m for m in range(1, d // 2 + 1) if d % m == 0), reverse=True):
        if ivfpq_bytes(n, d, nlist, m) <= max_memory:
            return IndexPlan("ivf_pq", n, d, ivfpq_bytes(n, d, nlist, m), nlist, m)
    raise ConfigError(f"--max-index-memory: {max_memory} bytes cannot hold {n} vectors even as IVF-PQ with "
                      f"1-byte codes (needs {ivfpq_bytes(n, d, nlist, 1)})")


def build(plan: IndexPlan, batches: Batches, seed: int = 0, target_recall: float = 0.9) -> tuple[faiss.Index, IndexPlan]:
    """The planned index filled from `batches` (called up to three times: train sample, add, tune)."""
    index = faiss.index_factory(plan.dim, plan.factory(), faiss.METRIC_INNER_PRODUCT)
    if plan.kind == "flat":
        for ids, x in batches():
            index.add_with_ids(np.ascontiguousarray(x, np.float32), ids)
        return index, plan
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.seed = seed
    if plan.kind == "ivf_pq":
        ivf.pq.cp.seed = seed
    sample = _sample(batches, TRAIN_PER_LIST * plan.nlist, seed)
    index.train(sample)
    for ids, x in batches():
        index.add_with_ids(np.ascontiguousarray(x, np.float32), ids)
    nprobe = tune_nprobe(index, plan.nlist, batches, sample, seed, target_recall)
    return index, IndexPlan(**{**asdict(plan), "nprobe": nprobe})


def _sample(batches: Batches, n: int, seed: int) -> np.ndarray:
    """Up to `n` vectors drawn evenly from every batch (deterministic)."""
    xs = [x for _, x in batches()]
    total = sum(len(x) for x in xs)
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(total, size=min(n, total), replace=False))
    out, start = [], 0
    for x in xs:
        sel = keep[(keep >= start) & (keep < start + len(x))] - start
        out.append(np.asarray(x[sel], np.float32))
        start += len(x)
    return np.ascontiguousarray(np.concatenate(out))


def exact_top(batches: Batches, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact inner-product top-k ids, streamed batch by batch (no copy of the collection)."""
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.full((len(queries), k), -1, np.int64)
    for ids, x in batches():
        s = queries @ np.asarray(x, np.float32).T
        s_all, i_all = np.concatenate([best_s, s], 1), np.concatenate([best_i, np.broadcast_to(ids, s.shape)], 1)
        top = np.argpartition(-s_all, k - 1, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(s_all, top, 1), np.take_along_axis(i_all, top, 1)
    return best_i


def recall_at(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f[f >= 0], e)) / len(e) for f, e in zip(found, exact)]))


def tune_nprobe(index: faiss.Index, nlist: int, batches: Batches, sample: np.ndarray, seed: int,
                target: float, n_queries: int = 200, k: int = 10) -> int:
    """Smallest power-of-two nprobe whose recall@k vs exact reaches `target` on perturbed sample points."""
    rng = np.random.default_rng(seed + 1)
    q = sample[rng.choice(len(sample), size=min(n_queries, len(sample)), replace=False)]
    q = q + rng.normal(scale=0.05, size=q.shape).astype(np.float32)
    q = np.ascontiguousarray(q / np.linalg.norm(q, axis=1, keepdims=True), np.float32)
    exact = exact_top(batches, q, k)
    ivf = faiss.extract_index_ivf(index)
    nprobe = 1
    while True:
        ivf.nprobe = nprobe
        if nprobe >= nlist or recall_at(index.search(q, k)[1], exact) >= target:
            return nprobe
        nprobe *= 2


def open_index(path: Path, plan: dict) -> faiss.Index:
    """The index file memory-mapped (IO_FLAG_MMAP: pages are read on demand), nprobe applied."""
    index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    if plan["kind"] != "flat":
        faiss.extract_index_ivf(index).nprobe = plan["nprobe"]
    return index
