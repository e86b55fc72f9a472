"""The fixed query sample every timing stage uses, and synthetic collections of a given width."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from PIL import Image

from ..data.images import load_rgb
from ..errors import DataError
from ..store import FeatureStore

if TYPE_CHECKING:
    from ..params import LatencyParams

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


def word_count_queries(n: int, dim: int, words: int, seed: int) -> np.ndarray:
    """`n` codebook-student-like text queries: each a count vector of `words` codes drawn uniformly
    from `dim` (aladin.models.codebook: a caption's vector counts its words' codes)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, dim), np.float32)
    np.add.at(out, (np.repeat(np.arange(n), words), rng.integers(dim, size=n * words)), 1.0)
    return out


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
