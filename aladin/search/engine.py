"""The search engine behind the CLI and the HTTP service.

Wraps one loaded :class:`aladin.retrieval.retriever.Retriever` (backbones, student, teacher: loaded once)
and exposes its collection through one or more faiss index kinds. The index stored in
``index/`` is served under its own kind; other kinds are built at start from the embeddings
stored beside it (seconds for 5K items), sharing everything else. The engine validates
queries (the same messages for the CLI and the API), bounds how many queries run at once,
and turns hits into plain JSON-able dicts.
"""
from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.parser import unknown_words
from ..data.images import ImageRejected, decode_bytes
from ..errors import AladinError, ConfigError
from ..retrieval.index import KINDS
from ..retrieval.retriever import Hit, Retriever


class QueryError(AladinError):
    """A bad query; `status` is the HTTP status the service answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    max_query_chars: int = 500
    max_k: int = 100
    max_upload_bytes: int = 10 * 2**20
    max_image_pixels: int = 40_000_000     # PIL's decompression-bomb guard, made an error


# The formats a query image may come in: what browsers and phones send, all decoded by Pillow.
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff")

# Queries in the embedded scenes' words (the page offers them; tests parse them with the caption parser).
EXAMPLES = ("a small red square to the left of a blue circle", "two green triangles",
            "a striped yellow star in the top left corner", "a big purple diamond above a white cross")


def check_text(query: str, limits: Limits = Limits()) -> str:
    """The stripped query, or QueryError when it is empty or too long."""
    q = query.strip()
    if not q:
        raise QueryError("q: the query is empty")
    if len(q) > limits.max_query_chars:
        raise QueryError(f"q: the query has {len(q)} characters, at most {limits.max_query_chars} allowed")
    return q


def with_index_kind(retriever: Retriever, kind: str) -> Retriever:
    """A view of `retriever` searching a `kind` index built from its stored embeddings, with the
    stored index's knobs and seed. Shallow copy: backbones, student, teacher and feature store
    are shared, not reloaded.
    """
    if kind not in KINDS:
        raise ConfigError(f"--index: unknown index kind {kind!r}; known: {', '.join(KINDS)}")
    view = copy.copy(retriever)
    view.index = retriever.index.with_kind(kind)
    return view


class EngineBase:
    """What every search engine shares: limits, query validation, image decoding, bounded
    concurrency, and the vocabulary note for models trained on the embedded scenes.

    `concurrency` caps the queries that run at once (the rest wait): with torch using
    ``threads`` intra-op threads per query, ``concurrency * threads`` should not exceed the
    cores, or concurrent queries slow each other down.
    """

    def __init__(self, limits: Limits, concurrency: int, scenes_vocabulary: bool) -> None:
        if concurrency < 1:
            raise ConfigError(f"--concurrency: must be >= 1, got {concurrency}")
        self.limits = limits
        self.concurrency = concurrency
        self.scenes_vocabulary = scenes_vocabulary      # the student learnt the scenes' words only
        self._slots = threading.BoundedSemaphore(concurrency)

    def check_text(self, query: str) -> str:
        return check_text(query, self.limits)

    def unknown_words(self, query: str) -> list[str]:
        """Words of `query` the scenes' caption grammar does not know (only for scenes-trained models)."""
        return unknown_words(query) if self.scenes_vocabulary else []

    def examples(self) -> list[str]:
        return list(EXAMPLES) if self.scenes_vocabulary else []

    def decode_image(self, data: bytes, name: str = "file") -> Image.Image:
        return decode_upload(data, self.limits, name)


def decode_upload(data: bytes, limits: Limits, name: str = "file") -> Image.Image:
    """Uploaded bytes -> RGB image, or QueryError (empty, too large, not an image, bomb)."""
    if not data:
        raise QueryError(f"{name}: the uploaded file is empty")
    if len(data) > limits.max_upload_bytes:
        raise QueryError(f"{name}: larger than the {limits.max_upload_bytes} bytes allowed", 413)
    try:
        return decode_bytes(data, limits.max_image_pixels)
    except ImageRejected as e:
        if e.kind == "pixels":
            raise QueryError(f"{name}: {e.size[0]}x{e.size[1]} pixels, at most {limits.max_image_pixels} allowed"
                             if e.size else f"{name}: too many pixels ({e.detail})", 413) from None
        raise QueryError(f"{name}: not a readable image ({e.detail}); accepted: {', '.join(IMAGE_TYPES)}", 415) from None


class SearchEngine(EngineBase):
    """Named index views of the pipeline's test split, with validation and bounded concurrency."""

    def __init__(self, retrievers: dict[str, Retriever], default_index: str | None = None,
                 root: str | Path = ".", limits: Limits = Limits(), concurrency: int = 1, *,
                 rerank_k: int) -> None:
        if not retrievers:
            raise ConfigError("search engine: no index to serve")
        store = next(iter(retrievers.values())).store
        super().__init__(limits, concurrency, store.manifest.get("dataset") == "scenes")
        self.retrievers = retrievers
        self.default_index = default_index or next(iter(retrievers))
        if self.default_index not in retrievers:
            raise ConfigError(f"--index: default {self.default_index!r} is not among {list(retrievers)}")
        self.root = Path(root)
        self.rerank_k = rerank_k                 # student candidates the teacher re-orders
        self.store = store
        # Captions are ordered image by image: image i owns rows [starts[i], starts[i + 1]).
        self._caption_starts = np.searchsorted(store.caption_image, np.arange(store.n_images + 1))

    # -- validation ---------------------------------------------------------------------------
    def _retriever(self, index: str | None) -> Retriever:
        name = index or self.default_index
        if name not in self.retrievers:
            raise QueryError(f"index: unknown index {name!r}; this service has {', '.join(self.retrievers)}")
        return self.retrievers[name]

    def _check(self, k: int, rerank: bool, retriever: Retriever, n: int) -> None:
        top = min(self.limits.max_k, n)
        if not 1 <= k <= top:
            raise QueryError(f"k: must be between 1 and {top}, got {k}")
        if rerank and retriever.teacher is None:
            raise QueryError("rerank: re-ranking needs the teacher, and this service was started without one")

    # -- search -------------------------------------------------------------------------------
    def search_text(self, query: str, k: int = 10, rerank: bool = False, index: str | None = None) -> dict[str, Any]:
        """Text -> images: the top-k images with scores, files and their captions."""
        q = self.check_text(query)
        r = self._retriever(index)
        self._check(k, rerank, r, self.store.n_images)
        hits, ms = self._run(r.search_text, q, k, rerank)
        return {**self._result(q, k, rerank, index, ms, [self._image_hit(h) for h in hits]),
                "unknown_words": self.unknown_words(q)}

    def search_image(self, image: Image.Image, k: int = 10, rerank: bool = False,
                     index: str | None = None, name: str = "") -> dict[str, Any]:
        """Image -> captions: the top-k captions with scores and the image each describes."""
        r = self._retriever(index)
        self._check(k, rerank, r, self.store.n_captions)
        hits, ms = self._run(r.search_image, image, k, rerank)
        return self._result(name, k, rerank, index, ms, [self._caption_hit(h) for h in hits])

    def _run(self, fn, query: Any, k: int, rerank: bool) -> tuple[list[Hit], float]:
        with self._slots:
            t0 = time.perf_counter()
            hits = fn(query, k, self.rerank_k if rerank else None)
            return hits, (time.perf_counter() - t0) * 1e3

    def _result(self, query: str, k: int, rerank: bool, index: str | None, ms: float,
                hits: list[dict[str, Any]]) -> dict[str, Any]:
        return {"query": query, "k": k, "rerank": rerank, "index": index or self.default_index,
                "took_ms": ms, "hits": hits}

    def _image_hit(self, h: Hit) -> dict[str, Any]:
        return {"rank": h.rank, "score": h.score, "image_index": h.index, "image_id": h.id,
                "file": h.file, "image_url": f"/images/{h.index}", "captions": self.captions_of(h.index)}

    def _caption_hit(self, h: Hit) -> dict[str, Any]:
        image = int(self.store.caption_image[h.index])
        return {"rank": h.rank, "score": h.score, "caption_index": h.index, "caption": h.text,
                "image_index": image, "image_id": h.id, "file": self.store.image_files[image],
                "image_url": f"/images/{image}"}

    # -- collection ---------------------------------------------------------------------------
    def captions_of(self, image: int) -> list[str]:
        return self.store.captions[self._caption_starts[image]:self._caption_starts[image + 1]]

    def image_file(self, image: int) -> Path:
        """The file of collection image `image` (relative paths are relative to the root)."""
        if not 0 <= image < self.store.n_images:
            raise QueryError(f"image: no image {image} in a collection of {self.store.n_images}", 404)
        f = Path(self.store.image_files[image])
        f = f if f.is_absolute() else self.root / f
        if not f.is_file():
            raise QueryError(f"image: file of image {image} not found", 404)
        return f

    def thumbnail(self, path: str) -> bytes:
        raise QueryError("path: this service serves the pipeline's test split, whose images are at /images/{i}; "
                         "start it with --collection NAME to search your own images", 404)

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "collection": None, "examples": self.examples(), "indexes": list(self.retrievers), "default_index": self.default_index,
                "n_images": self.store.n_images, "n_captions": self.store.n_captions,
                "rerank_available": next(iter(self.retrievers.values())).teacher is not None,
                "max_k": self.limits.max_k, "max_query_chars": self.limits.max_query_chars,
                "max_upload_bytes": self.limits.max_upload_bytes, "image_types": list(IMAGE_TYPES),
                "concurrency": self.concurrency}
