"""A user's indexed collection (``aladin-search index``) behind the same CLI / API as the test split.

Text -> images and image -> similar images over ``collections/NAME/`` (student embeddings in a
memory-mapped faiss index whose ids are file ids); with ``--rerank`` at indexing, the teacher
re-orders a text query's candidates from their memory-mapped region tokens. Thumbnails are made
from the collection's own files only: a path must be relative, free of '..', listed in the
manifest, and must still resolve inside the root (a file swapped for a symlink leading out is refused).
"""
from __future__ import annotations

import io
import time
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

import numpy as np
import torch
from PIL import Image

from ..collection import build, shards
from ..collection.encoder import Encoder, ModelSpec
from ..errors import DataError
from ..features import load_text_backbone, text_batch
from .engine import IMAGE_TYPES, EngineBase, Limits, QueryError

THUMBNAIL_PX = 256


class CollectionEngine(EngineBase):
    def __init__(self, folder: str | Path, limits: Limits = Limits(), concurrency: int = 1, teacher: bool = True,
                 rerank_k: int = 50, device: str = "cpu") -> None:
        self.folder = Path(folder)
        manifest = shards.read_manifest(self.folder)
        if manifest is None:
            raise DataError(f"{self.folder}: no collection here (index one: aladin-search index SOURCE "
                            f"--collection {self.folder.name})")
        spec = ModelSpec(**{k: v for k, v in manifest["model"].items() if k != "key"})
        spec = ModelSpec(**{**spec.to_dict(), "device": device, "threads": 0,
                            "teacher": spec.teacher if teacher else None})
        super().__init__(limits, concurrency, spec.dataset == "scenes")
        self.manifest, self.name, self.rerank_k = manifest, manifest["name"], rerank_k
        self.root = Path(manifest["root"])
        self.entries = manifest["files"]
        self.by_id = {e["id"]: e for e in self.entries}
        self.by_path = {e["path"]: e for e in self.entries}
        self.encoder = Encoder(spec)
        b = spec.backbone
        self.text = load_text_backbone(b["text_backbone"], b["max_tokens"], self.encoder.device, b["runtime"])
        self.kind = manifest["index"]["kind"]
        self.index = build.open_index(self.folder / manifest["index"]["file"], manifest["index"])
        self._tokens: dict[str, np.ndarray] = {}

    @property
    def rerank_available(self) -> bool:
        return self.encoder.teacher is not None

    # -- search -------------------------------------------------------------------------------
    def _check(self, k: int, rerank: bool, index: str | None) -> None:
        if index not in (None, "", self.kind):
            raise QueryError(f"index: unknown index {index!r}; this collection has {self.kind}")
        top = min(self.limits.max_k, len(self.entries))
        if not 1 <= k <= top:
            raise QueryError(f"k: must be between 1 and {top}, got {k}")
        if rerank and not self.rerank_available:
            raise QueryError("rerank: this collection was indexed without --rerank (or the service started "
                             "without the teacher): no region tokens to re-rank with")

    @torch.inference_mode()
    def search_text(self, query: str, k: int = 10, rerank: bool = False, index: str | None = None) -> dict[str, Any]:
        q = self.check_text(query)
        self._check(k, rerank, index)
        with self._slots:
            t0 = time.perf_counter()
            batch = text_batch(self.text, [q])
            emb = self.encoder.student.embed_texts(batch).float().cpu().numpy()
            scores, ids = self.index.search(emb, max(k, self.rerank_k if rerank else 0))
            scores, ids = scores[0][ids[0] >= 0], ids[0][ids[0] >= 0]
            if rerank:
                scores = self._teacher_scores(batch, ids)
                order = np.argsort(-scores, kind="stable")
                scores, ids = scores[order], ids[order]
            ms = (time.perf_counter() - t0) * 1e3
        return {**self._result(q, k, rerank, ms, scores[:k], ids[:k]), "unknown_words": self.unknown_words(q)}

    @torch.inference_mode()
    def search_image(self, image: Image.Image, k: int = 10, rerank: bool = False, index: str | None = None,
                     name: str = "") -> dict[str, Any]:
        if rerank:
            raise QueryError("rerank: the teacher scores texts against images; an image query finds similar "
                             "images with the student only")
        self._check(k, False, index)
        with self._slots:
            t0 = time.perf_counter()
            emb, _ = self.encoder([image])
            scores, ids = self.index.search(emb, k)
            ms = (time.perf_counter() - t0) * 1e3
        keep = ids[0] >= 0
        return self._result(name, k, False, ms, scores[0][keep], ids[0][keep])

    def _teacher_scores(self, batch, ids: np.ndarray) -> np.ndarray:
        teacher = self.encoder.teacher
        txt, txt_mask = teacher.embed_texts(batch)
        tokens = np.stack([self._shard_tokens(self.by_id[int(i)]["shard"])[self.by_id[int(i)]["row"]] for i in ids])
        img = torch.from_numpy(tokens.astype(np.float32)).to(self.encoder.device)
        mask = torch.ones(img.shape[:2], dtype=torch.bool, device=img.device)
        return teacher.score(img, mask, txt, txt_mask)[:, 0].float().cpu().numpy()

    def _shard_tokens(self, key: str) -> np.ndarray:
        if key not in self._tokens:
            self._tokens[key] = shards.shard_array(self.folder, key, tokens=True)
        return self._tokens[key]

    def _result(self, query: str, k: int, rerank: bool, ms: float, scores: np.ndarray, ids: np.ndarray) -> dict[str, Any]:
        hits = []
        for rank, (s, i) in enumerate(zip(scores, ids), 1):
            e = self.by_id[int(i)]
            hits.append({"rank": rank, "score": float(s), "id": str(e["id"]), "image_id": e["path"], "file": e["path"],
                         "sha256": e["sha256"], "image_url": "/files/" + quote(e["path"]), "captions": []})
        return {"query": query, "k": k, "rerank": rerank, "index": self.kind, "collection": self.name,
                "took_ms": ms, "hits": hits}

    # -- files ---------------------------------------------------------------------------------
    def image_file(self, image: int) -> Path:
        raise QueryError(f"image: collection {self.name!r} serves its files at /files/<path>", 404)

    def safe_path(self, path: str) -> Path:
        """The collection file at relative `path`, or QueryError: no way out of the root."""
        p = PurePosixPath(path)
        if not path or "\\" in path or "\x00" in path or p.is_absolute() or ".." in p.parts:
            raise QueryError("path: must be a relative path inside the collection, without '..'", 400)
        if path not in self.by_path:
            raise QueryError(f"path: {path!r} is not a file of collection {self.name!r}", 404)
        root = self.root.resolve()
        try:
            real = (root / path).resolve(strict=True)
        except (OSError, RuntimeError):
            raise QueryError(f"path: {path!r} is gone or unreadable", 404) from None
        if not real.is_relative_to(root) or not real.is_file():
            raise QueryError(f"path: {path!r} leads outside the collection's root", 403)
        return real

    def thumbnail(self, path: str) -> bytes:
        """A JPEG of at most THUMBNAIL_PX a side of collection file `path`."""
        try:
            with Image.open(self.safe_path(path)) as im:
                im = im.convert("RGB")
                im.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        except (OSError, ValueError, SyntaxError) as e:
            raise QueryError(f"path: {path!r} cannot be decoded ({e})", 404) from None
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=85)
        return buf.getvalue()

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "collection": self.name, "examples": self.examples(), "indexes": [self.kind],
                "default_index": self.kind, "n_images": len(self.entries), "n_captions": 0,
                "rerank_available": self.rerank_available, "max_k": self.limits.max_k,
                "max_query_chars": self.limits.max_query_chars, "max_upload_bytes": self.limits.max_upload_bytes,
                "image_types": list(IMAGE_TYPES),
                "concurrency": self.concurrency}
