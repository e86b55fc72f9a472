"""The search system: raw query -> backbone -> student embedding -> faiss (-> teacher re-rank).

Everything is loaded once; a query then costs one backbone forward pass, one small student
pass and one index search. Re-ranking reuses the query's backbone features (the same Batch
feeds the student and the teacher), so the backbone is never paid twice; the collection side
of the teacher is precomputed for images and computed for the k candidate captions only.

    r = Retriever()                                   # features/test, models/, index/
    r.search_text("a red cube left of a blue ball", k=10, rerank_k=100)   # student top-100, re-ranked
    r.search_image(PIL.Image.open(path), k=5)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import faiss
import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from ..features import image_batch, store_backbones, text_batch
from .index import IndexConfig, load_index_dir, search
from ..models.factory import STUDENTS, load_model
from .store_scores import embed_store_items
from ..store import Batch, open_split


def ranked(scores: np.ndarray, ids: np.ndarray, k: int,
           rescore: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One query's index hits (`ids` -1 = empty slot, dropped), re-ordered by `rescore(ids)` when
    given (a stable sort: equal scores keep the index's order); the top k (scores, ids)."""
    s, i = scores[ids >= 0], ids[ids >= 0]
    if rescore is not None:
        s = rescore(i)
        order = np.argsort(-s, kind="stable")
        s, i = s[order], i[order]
    return s[:k], i[:k]


@dataclass
class Hit:
    rank: int                    # 1-based
    index: int                   # row in the collection (image or caption index of the store)
    id: str                      # image id (for a caption: the id of the image it describes)
    score: float                 # student cosine, or teacher alignment score after re-ranking
    text: str | None = None      # caption text (image queries)
    file: str | None = None      # image file (text queries)


class Retriever:
    """Backbones + student + faiss indexes (+ teacher for re-ranking) over one feature-store split.

    ``student=None`` gives a teacher-only system (exhaustive teacher search, no index)."""

    def __init__(self, features_dir: str | Path = "features", split: str = "test",
                 student: str | Path | None = "models/student.pt", index_dir: str | Path = "index",
                 teacher: str | Path | None = "models/teacher.pt", device: str | torch.device = "cpu",
                 index_cfg: IndexConfig | None = None) -> None:
        self.device = torch.device(device)
        self.store = open_split(features_dir, split)
        self.text_backbone, self.vision_backbone = store_backbones(self.store, self.device)
        self.student = self.index = None
        if student is not None:
            self.student = load_model(student, self.device, kind=STUDENTS)
            self.index = load_index_dir(index_dir, model_path=student, cfg=index_cfg)
            if (self.index.images.ntotal, self.index.captions.ntotal) != (self.store.n_images, self.store.n_captions):
                raise DataError(f"{index_dir}: indexes hold {self.index.images.ntotal} images / "
                                f"{self.index.captions.ntotal} captions, {self.store.path} has "
                                f"{self.store.n_images} / {self.store.n_captions}")
        self.teacher = load_model(teacher, self.device, kind="alignment") if teacher is not None else None
        self.teacher_images = embed_store_items(self.teacher, self.store, "image", self.device) if self.teacher is not None else None

    # -- query encoding: the part every method pays ------------------------------------------------
    @torch.inference_mode()
    def encode_texts(self, queries: Sequence[str]) -> tuple[Batch, np.ndarray]:
        """Backbone features (Batch) and student embeddings (B, D) of raw caption queries."""
        batch = text_batch(self.text_backbone, list(queries))
        return batch, self.student.embed_texts(batch).float().cpu().numpy()

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image]) -> tuple[Batch, np.ndarray]:
        """Backbone features (Batch) and student embeddings (B, D) of raw image queries."""
        batch = image_batch(self.vision_backbone, [im.convert("RGB") for im in images])
        return batch, self.student.embed_images(batch).float().cpu().numpy()

    # -- teacher scoring ---------------------------------------------------------------------------
    def require_teacher(self) -> None:
        if self.teacher is None:
            raise DataError("re-ranking needs the teacher: build the Retriever with teacher=<checkpoint>")

    @torch.inference_mode()
    def teacher_scores_images(self, batch: Batch, row: int, images: np.ndarray | slice) -> np.ndarray:
        """Teacher scores of text query `row` of `batch` against collection `images`. Shape (n,)."""
        self.require_teacher()
        q = Batch(tokens=batch.tokens[row:row + 1], token_mask=batch.token_mask[row:row + 1])
        txt, txt_mask = self.teacher.embed_texts(q)
        emb, mask = self.teacher_images
        return self.teacher.score(emb[images], mask[images], txt, txt_mask)[:, 0].float().cpu().numpy()

    @torch.inference_mode()
    def teacher_scores_captions(self, batch: Batch, row: int, captions: np.ndarray) -> np.ndarray:
        """Teacher scores of image query `row` of `batch` against store captions `captions`. Shape (n,)."""
        self.require_teacher()
        q = Batch(regions=batch.regions[row:row + 1], boxes=batch.boxes[row:row + 1],
                  region_mask=batch.region_mask[row:row + 1])
        img, img_mask = self.teacher.embed_images(q)
        txt, txt_mask = self.teacher.embed_texts(self.store.caption_batch(captions).to(self.device))
        return self.teacher.score(img, img_mask, txt, txt_mask)[0].float().cpu().numpy()

    # -- search ------------------------------------------------------------------------------------
    def _search(self, batch: Batch, emb: np.ndarray, index: faiss.Index, k: int, rerank_k: int | None,
                teacher_scores: Callable[[Batch, int, np.ndarray], np.ndarray],
                hit: Callable[[int, int, float], Hit]) -> list[list[Hit]]:
        """Top-k of each query row through `index`, the student's top `rerank_k` re-ordered by
        `teacher_scores(batch, row, candidates)` when `rerank_k` is set; `hit(rank, id, score)`."""
        scores, ids = search(index, emb, max(k, rerank_k or 0))
        out = []
        for row in range(len(emb)):
            rescore = (lambda i, row=row: teacher_scores(batch, row, i)) if rerank_k else None
            s, i = ranked(scores[row], ids[row], k, rescore)
            out.append([hit(r + 1, int(j), float(v)) for r, (j, v) in enumerate(zip(i, s))])
        return out

    def search_texts(self, queries: Sequence[str], k: int = 10, rerank_k: int | None = None) -> list[list[Hit]]:
        """Ranked images for each caption query; `rerank_k`: the teacher re-orders the student's
        top `rerank_k` (None: the student's order)."""
        store = self.store
        return self._search(*self.encode_texts(queries), self.index.images, k, rerank_k, self.teacher_scores_images,
                            lambda r, j, v: Hit(r, j, store.image_ids[j], v, file=store.image_files[j]))

    def search_images(self, images: Sequence[Image.Image], k: int = 10,
                      rerank_k: int | None = None) -> list[list[Hit]]:
        """Ranked captions for each image query (`rerank_k` as in :meth:`search_texts`)."""
        store = self.store
        return self._search(*self.encode_images(images), self.index.captions, k, rerank_k,
                            self.teacher_scores_captions,
                            lambda r, j, v: Hit(r, j, store.image_ids[store.caption_image[j]], v, text=store.captions[j]))

    def search_text(self, query: str, k: int = 10, rerank_k: int | None = None) -> list[Hit]:
        return self.search_texts([query], k, rerank_k)[0]

    def search_image(self, image: Image.Image, k: int = 10, rerank_k: int | None = None) -> list[Hit]:
        return self.search_images([image], k, rerank_k)[0]
