"""faiss indexes over student embeddings: build, search, save with a manifest, load and verify.

All indexes use inner product: student embeddings are L2-normalised, so it is the cosine score
the student was trained with. Kinds (the knobs in brackets):

- ``flat``      exact search, the reference;
- ``hnsw``      graph search [hnsw_m, ef_construction, ef_search];
- ``ivf_flat``  inverted lists of raw vectors [nlist, nprobe];
- ``ivf_pq``    inverted lists of product-quantised codes [nlist, nprobe, pq_m bytes x pq_nbits];
- ``sparse``    exact, for the codebook student (:class:`SparseIndex`): its caption vectors are word
                counts over K codes (~10 non-zeros of 2048), so a text query reads ~10 of the image
                matrix's K rows and an image query sums ~10 entries per caption, where ``flat`` reads
                all K of every item. Same scores as ``flat``, no faiss.

An index directory (``index/``) holds, per side (``images`` = searched by text queries,
``captions`` = searched by image queries), ``<side>.faiss`` and the embeddings it was built
from (``image_emb.npy`` / ``caption_emb.npy``), plus ``manifest.json`` with their sha256, the
checkpoint's sha256 and the params. :func:`load_index_dir` refuses any file that does not match.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from scipy import sparse

from ..config import from_dict
from ..errors import ConfigError, DataError
from ..io import atomic_path, read_json, sha256_file
from ..params import KINDS, IndexConfig

FORMAT_VERSION = 1
SIDES = {"images": "image_emb.npy", "captions": "caption_emb.npy"}


SPARSE_DENSITY = 0.1    # a matrix with fewer non-zeros than this fraction is multiplied as CSR


def _sparse(x: np.ndarray) -> bool:
    return np.count_nonzero(x) < SPARSE_DENSITY * x.size


class SparseIndex:
    """Exact inner-product top-k where the collection or the queries are sparse (the codebook
    student's caption vectors). Answers the faiss calls made here: ``d``, ``ntotal``, ``search``."""

    QUERY_BLOCK = 1024       # queries scored per (block, N) score matrix

    def __init__(self, emb: np.ndarray) -> None:
        emb = _as_f32(emb)
        self.ntotal, self.d = emb.shape
        # Sparse collection: CSR rows; dense: transposed, so a sparse query's codes are contiguous rows.
        self.rows = sparse.csr_matrix(emb) if _sparse(emb) else None
        self.cols = None if self.rows is not None else np.ascontiguousarray(emb.T)     # (D, N)

    def scores(self, queries: np.ndarray) -> np.ndarray:
        """(Q, N) inner products."""
        if self.rows is not None:
            return np.asarray((self.rows @ queries.T).T, dtype=np.float32)
        q = sparse.csr_matrix(queries) if _sparse(queries) else queries
        return np.asarray(q @ self.cols, dtype=np.float32)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = _as_f32(queries)
        out_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
        out_i = np.full((len(queries), k), -1, dtype=np.int64)
        kk = min(k, self.ntotal)
        for lo in range(0, len(queries), self.QUERY_BLOCK):
            s = self.scores(queries[lo:lo + self.QUERY_BLOCK])
            top = np.argpartition(-s, kk - 1, axis=1)[:, :kk] if kk < self.ntotal else np.tile(np.arange(kk), (len(s), 1))
            top_s = np.take_along_axis(s, top, axis=1)
            order = np.lexsort((top, -top_s), axis=1)                 # best first; ties: lower id first
            out_i[lo:lo + len(s), :kk] = np.take_along_axis(top, order, axis=1)
            out_s[lo:lo + len(s), :kk] = np.take_along_axis(top_s, order, axis=1)
        return out_s, out_i


def build_index(emb: np.ndarray, cfg: IndexConfig, seed: int = 0) -> faiss.Index | SparseIndex:
    """An index of kind `cfg.kind` holding `emb` (N, D) float32; ids are row numbers."""
    emb = _as_f32(emb)
    n, d = emb.shape
    if cfg.kind == "sparse":
        return SparseIndex(emb)
    if cfg.kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif cfg.kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = cfg.ef_construction
    elif cfg.kind in ("ivf_flat", "ivf_pq"):
        if n < cfg.nlist:
            raise ConfigError(f"index.nlist: {cfg.nlist} cells need at least as many vectors, got {n}")
        quantizer = faiss.IndexFlatIP(d)
        if cfg.kind == "ivf_flat":
            index = faiss.IndexIVFFlat(quantizer, d, cfg.nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            if d % cfg.pq_m:
                raise ConfigError(f"index.pq_m: {cfg.pq_m} must divide the embedding size {d}")
            if n < 2 ** cfg.pq_nbits:
                raise ConfigError(f"index.pq_nbits: {2 ** cfg.pq_nbits} codewords need at least as "
                                  f"many vectors, got {n}")
            index = faiss.IndexIVFPQ(quantizer, d, cfg.nlist, cfg.pq_m, cfg.pq_nbits, faiss.METRIC_INNER_PRODUCT)
            index.pq.cp.seed = seed
            index.pq.cp.min_points_per_centroid = 1     # small collections: train, don't warn
        index.cp.seed = seed
        index.cp.min_points_per_centroid = 1
        index.train(emb)
    else:
        raise ConfigError(f"index.kind: unknown kind {cfg.kind!r}; known: {', '.join(KINDS)}")
    index.add(emb)
    configure(index, cfg)
    return index


def configure(index: faiss.Index, cfg: IndexConfig) -> None:
    """Apply the search-time knobs (ef_search / nprobe); they need no rebuild."""
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = cfg.ef_search
    elif isinstance(index, faiss.IndexIVF):
        index.nprobe = cfg.nprobe


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-`k` (scores, ids), each (Q, k), best first; ids are -1 past the collection's end."""
    return index.search(_as_f32(queries), k)


def exact_topk(collection: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Ids (Q, k) of the exact inner-product top-k: the reference approximate indexes are judged by."""
    return search(build_index(collection, IndexConfig(kind="flat")), queries, k)[1]


def recall_vs_exact(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean fraction of each query's exact top-k found in its approximate top-k (k = row width;
    -1 padding of a collection smaller than k is ignored)."""
    k = exact_ids.shape[1]
    fractions = [len(np.intersect1d(a[a >= 0], e[e >= 0])) / max(int((e >= 0).sum()), 1)
                 for a, e in zip(approx_ids[:, :k], exact_ids)]
    return float(np.mean(fractions)) if fractions else 0.0


def _as_f32(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise DataError(f"embeddings: expected a (N, D) matrix, got shape {x.shape}")
    return x


@dataclass
class IndexDir:
    """A loaded, verified index directory."""

    images: faiss.Index | SparseIndex     # image embeddings: answers text queries
    captions: faiss.Index | SparseIndex   # caption embeddings: answers image queries
    image_emb: np.ndarray        # (N_img, D) float32
    caption_emb: np.ndarray      # (N_cap, D) float32
    cfg: IndexConfig
    manifest: dict[str, Any]

    @property
    def seed(self) -> int:
        return int(self.manifest.get("seed", 0))

    def of_kind(self, kind: str, side: str = "images") -> faiss.Index | SparseIndex:
        """A `kind` index over the stored embeddings of `side` ("images" | "captions"), with the
        stored knobs and seed: another index kind compared without re-encoding anything."""
        emb = {"images": self.image_emb, "captions": self.caption_emb}[side]
        return build_index(emb, dataclasses.replace(self.cfg, kind=kind), self.seed)

    def with_kind(self, kind: str) -> "IndexDir":
        """This collection with both sides indexed as `kind` (see :meth:`of_kind`)."""
        return dataclasses.replace(self, images=self.of_kind(kind, "images"), captions=self.of_kind(kind, "captions"),
                                   cfg=dataclasses.replace(self.cfg, kind=kind))


def write_index(index: faiss.Index | SparseIndex, path: Path) -> None:
    """A faiss index file; for a SparseIndex, a marker (it is rebuilt from the stored embeddings)."""
    if isinstance(index, SparseIndex):
        path.write_text(json.dumps({"kind": "sparse", "n": index.ntotal, "d": index.d}) + "\n")
    else:
        faiss.write_index(index, str(path))


def read_index(path: Path, emb: np.ndarray, kind: str) -> faiss.Index | SparseIndex:
    """The index of `kind` written by :func:`write_index` (a sparse one rebuilt from `emb`)."""
    return SparseIndex(emb) if kind == "sparse" else faiss.read_index(str(path))


def save_index_dir(path: str | os.PathLike, image_emb: np.ndarray, caption_emb: np.ndarray,
                   cfg: IndexConfig, seed: int, provenance: dict[str, Any]) -> None:
    """Build both indexes and write them, their embeddings and the manifest atomically.

    `provenance` names what the embeddings came from, e.g.
    ``{"model": {"path": ..., "sha256": ...}, "features": {...}}``; it is stored verbatim.
    """
    embs = {"images": _as_f32(image_emb), "captions": _as_f32(caption_emb)}
    with atomic_path(path, is_dir=True) as tmp:
        sides = {}
        for side, emb_file in SIDES.items():
            emb = embs[side]
            np.save(tmp / emb_file, emb)
            write_index(build_index(emb, cfg, seed), tmp / f"{side}.faiss")
            sides[side] = {"index": f"{side}.faiss", "index_sha256": sha256_file(tmp / f"{side}.faiss"),
                           "embeddings": emb_file, "embeddings_sha256": sha256_file(tmp / emb_file),
                           "n": int(emb.shape[0]), "dim": int(emb.shape[1])}
        manifest = {"format_version": FORMAT_VERSION, "params": dataclasses.asdict(cfg), "seed": seed,
                    **provenance, **sides}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def load_index_dir(path: str | os.PathLike, model_path: str | os.PathLike | None = None,
                   cfg: IndexConfig | None = None) -> IndexDir:
    """Load and verify an index directory.

    Every file must match the sha256 in the manifest; when given, `model_path` must be the
    checkpoint the embeddings came from and `cfg` the params the indexes were built with
    (search-time knobs ef_search / nprobe may differ: they are applied). Otherwise DataError.
    """
    path = Path(path)
    manifest = read_json(path / "manifest.json")
    where = path / "manifest.json"
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{where}: unsupported format_version {manifest.get('format_version')!r}")
    try:
        built = from_dict(IndexConfig, manifest.get("params", {}), f"{where}: params")
    except ConfigError as e:
        raise DataError(str(e)) from None
    if cfg is not None:
        search_knobs = {"ef_search", "nprobe"}
        diff = [f"{k}: built {v!r}, params {getattr(cfg, k)!r}"
                for k, v in dataclasses.asdict(built).items() if k not in search_knobs and getattr(cfg, k) != v]
        if diff:
            raise DataError(f"{where}: index built with other params ({'; '.join(diff)}); rerun the index stage")
    if model_path is not None:
        got = sha256_file(model_path) if Path(model_path).is_file() else "missing"
        want = manifest.get("model", {}).get("sha256")
        if got != want:
            raise DataError(f"{where}: built from a checkpoint with sha256 {str(want)[:12]}, but {model_path} "
                            f"has {got[:12]}; rerun the index stage")
    loaded = {}
    for side in SIDES:
        info = manifest.get(side)
        if not isinstance(info, dict):
            raise DataError(f"{where}: missing the '{side}' entry")
        for key in ("embeddings", "index"):
            f = path / info[key]
            if not f.is_file():
                raise DataError(f"{f}: missing (listed in {where})")
            if sha256_file(f) != info[f"{key}_sha256"]:
                raise DataError(f"{f}: sha256 does not match {where}; the index directory is stale or "
                                "mixed with another run; rerun the index stage")
        emb = np.load(path / info["embeddings"])
        index = read_index(path / info["index"], emb, built.kind)
        if index.ntotal != emb.shape[0] or index.d != emb.shape[1]:
            raise DataError(f"{path / info['index']}: holds {index.ntotal} x {index.d}, embeddings are "
                            f"{emb.shape[0]} x {emb.shape[1]}")
        configure(index, cfg or built)
        loaded[side] = (index, emb)
    return IndexDir(images=loaded["images"][0], captions=loaded["captions"][0], image_emb=loaded["images"][1],
                    caption_emb=loaded["captions"][1], cfg=cfg or built, manifest=manifest)
