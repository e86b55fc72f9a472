"""Stage `latency_teacher`: exhaustive teacher scoring of one query as the collection grows."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ..features import image_batch, text_batch
from ..retrieval.retriever import Retriever
from ..retrieval.store_scores import embed_store_items
from .timing import per_query

if TYPE_CHECKING:
    from ..params import LatencyParams

log = logging.getLogger("aladin")

@torch.inference_mode()
def _teacher_text_search(retr: Retriever, query: str, n_images: int, k: int) -> np.ndarray:
    """Exhaustive teacher scoring of one text query against `n_images` images.

    Past the real collection the real teacher region vectors are scored again, chunk after chunk:
    the same FLOPs and memory traffic as that many distinct images (teacher cost is linear in N).
    """
    teacher, (emb, mask) = retr.teacher, retr.teacher_images
    txt, txt_mask = teacher.embed_texts(text_batch(retr.text_backbone, [query]))
    scores = []
    for start in range(0, n_images, len(emb)):
        m = min(len(emb), n_images - start)
        scores.append(teacher.score(emb[:m], mask[:m], txt, txt_mask)[:, 0])
    return torch.topk(torch.cat(scores), min(k, n_images)).indices.numpy()


def teacher_latency(retr: Retriever, texts: Sequence[str], images: Sequence[Image.Image],
                    cfg: LatencyParams) -> dict[str, Any]:
    """The exhaustive teacher: text-query rows per collection size, and image queries against
    every test caption, each on a fixed sample of `teacher_queries` queries."""
    few, warm = texts[:cfg.teacher_queries], min(cfg.warmup, 2)
    n_base, rows = retr.store.n_images, []
    for n in sorted(set(cfg.teacher_sizes)):
        row = per_query(lambda q: _teacher_text_search(retr, q, n, cfg.k), few, warm)
        rows.append({"method": "teacher", "query": "text", "n_images": n, "synthetic": n > n_base, **row})
        log.info("teacher, %d images: %.1f ms (p50, %d queries)", n, row["p50_ms"], len(few))
    search_image = teacher_image_search(retr)
    image = per_query(lambda x: search_image(x, cfg.k), images[:cfg.teacher_queries], warm)
    return {"scaling": rows, "image": image}



def teacher_image_search(retr: Retriever) -> Callable[[Image.Image, int], np.ndarray]:
    """``search(image, k) -> top-k caption ids`` by exhaustive teacher scoring against every test
    caption; the captions' teacher vectors are embedded once, here, as a search engine would."""
    retr.require_teacher()
    captions = embed_store_items(retr.teacher, retr.store, "caption", retr.device)

    @torch.inference_mode()
    def search(image: Image.Image, k: int) -> np.ndarray:
        img, img_mask = retr.teacher.embed_images(image_batch(retr.vision_backbone, [image.convert("RGB")]))
        s = retr.teacher.score(img, img_mask, *captions)[0].float().cpu().numpy()
        return np.argsort(-s, kind="stable")[:k]
    return search
