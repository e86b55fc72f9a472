"""Stage `latency`, cross-encoder rows: one joint pass per (query, image) pair, alone and as the
re-ranker of the student's top-k."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

from ..evaluation.cross import score_rows
from ..features import text_batch
from ..models.cross_encoder import CrossEncoder
from ..retrieval.index import search
from ..retrieval.retriever import Retriever, ranked
from ..retrieval.store_scores import embed_store_items
from ..store import Batch, FeatureStore
from .timing import per_query

if TYPE_CHECKING:
    from ..params import LatencyParams

log = logging.getLogger("aladin")

def text_search_fn(model: CrossEncoder, store: FeatureStore, n_images: int, device: torch.device | str,
                   batch_size: int = 2048) -> Callable[..., np.ndarray]:
    """``search(query, images=None) -> (n,)`` logits of one text query against the first `n_images`
    images, or against those of them in `images` (a candidate list to re-rank).

    What a cross-encoder search costs per query, for the latency harness: image tokens are
    projected once beforehand (the only per-item precomputation a cross-encoder allows), then
    one fusion pass per image. `query` is a store caption id (its stored tokens: the text
    backbone left out) or a one-caption Batch from aladin.features.text_batch (raw text).
    Puts the model in eval mode.
    """
    model.eval()
    img = embed_store_items(model, store, "image", device, np.arange(n_images))
    every = torch.arange(n_images, device=img[0].device)

    @torch.no_grad()
    def search(query: int | Batch, images: np.ndarray | None = None) -> np.ndarray:
        batch = query if isinstance(query, Batch) else store.caption_batch([int(query)])
        txt = model.embed_texts(batch.to(device))
        rows = every if images is None else torch.as_tensor(images, device=every.device)
        return score_rows(model, img, txt, rows, torch.zeros_like(rows), batch_size).numpy()
    return search


def cross_encoder_rows(retr: Retriever, model: torch.nn.Module, texts: Sequence[str], cfg: LatencyParams,
                       rerank_k: int) -> list[dict[str, Any]]:
    """Text-query latency of the cross-encoder: raw text -> backbone -> one joint pass per image
    (``cross_encoder``), and as a re-ranker of the student's top `rerank_k` on the whole test
    collection (``cross_rerank``: raw text -> backbone -> student -> index -> rerank_k passes).

    Real test images only (sizes past the test set are skipped): its cost is one transformer
    pass per pair, so a fixed sample of `cross_queries` queries is timed.
    """
    store, queries, rows = retr.store, texts[:cfg.cross_queries], []
    device = next(model.parameters()).device
    for n in sorted(n for n in set(cfg.cross_sizes) if n <= store.n_images):
        search_fn = text_search_fn(model, store, n, device)

        def query(q: str) -> np.ndarray:
            scores = torch.as_tensor(search_fn(text_batch(retr.text_backbone, [q])))
            return torch.topk(scores, min(cfg.k, n)).indices.numpy()
        row = per_query(query, queries, min(cfg.warmup, 1))
        rows.append({"method": "cross_encoder", "query": "text", "n_images": n, "synthetic": False, **row})
        log.info("cross-encoder, %d images: %.1f ms (p50, %d queries)", n, row["p50_ms"], len(queries))

    rescore = text_search_fn(model, store, store.n_images, device)

    def rerank(q: str) -> np.ndarray:
        batch, emb = retr.encode_texts([q])                          # one backbone pass serves both
        scores, ids = search(retr.index.images, emb, rerank_k)
        return ranked(scores[0], ids[0], cfg.k, lambda i: rescore(batch, i))[1]
    row = per_query(rerank, texts[:cfg.n_queries], cfg.warmup)
    rows.append({"method": "cross_rerank", "query": "text", "n_images": store.n_images, "synthetic": False,
                 "rerank_k": rerank_k, **row})
    log.info("cross-encoder re-ranking the student's top %d: %.1f ms (p50)", rerank_k, row["p50_ms"])
    return rows
