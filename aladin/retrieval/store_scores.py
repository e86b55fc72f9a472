"""Whole feature stores through a token model: every item embedded once (the teacher, the
cross-encoder), and the teacher's exhaustive image x caption score matrix (validation, mining,
5K evaluation) computed in cache-sized blocks by :func:`aladin.models.scoring.score_embeddings`.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from ..models.scoring import SCORE_CHUNK_MB, score_embeddings


@torch.no_grad()
def embed_store_items(model: torch.nn.Module, store, kind: Literal["image", "caption"], device: torch.device | str,
                      index: np.ndarray | None = None, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T, d) token embeddings and (N, T) validity mask of store images or captions `index`
    (all by default), `batch_size` at a time, padded to the longest: for any model whose
    ``embed_images`` / ``embed_texts`` return (tokens, mask) (the teacher, the cross-encoder)."""
    n = store.n_images if kind == "image" else store.n_captions
    index = np.arange(n) if index is None else np.asarray(index, dtype=np.int64)
    counts = np.asarray(store.region_counts if kind == "image" else store.token_counts)[index]
    width = int(counts.max()) if len(index) else 1
    embed, fetch = ((model.embed_images, store.image_batch) if kind == "image"
                    else (model.embed_texts, store.caption_batch))
    embs, masks = [], []
    for s in range(0, len(index), batch_size):
        e, mk = embed(fetch(index[s:s + batch_size]).to(device))
        pad = width - e.shape[1]
        embs.append(torch.nn.functional.pad(e, (0, 0, 0, pad)))
        masks.append(torch.nn.functional.pad(mk, (0, pad), value=False))
    return torch.cat(embs), torch.cat(masks)


@torch.no_grad()
def score_store(model: torch.nn.Module, store, device: torch.device | str, chunk_mb: float = SCORE_CHUNK_MB,
                image_idx: np.ndarray | None = None, caption_idx: np.ndarray | None = None,
                batch_size: int = 256, progress: bool = True) -> torch.Tensor:
    """(N_img, N_cap) teacher scores of store images x store captions (all of them by default).

    Embeds every item once, then scores exhaustively in cache-sized blocks. Captions are
    embedded and scored in order of length (less padding); columns come back in the given order.
    """
    model.eval()
    image_idx = np.arange(store.n_images) if image_idx is None else np.asarray(image_idx, dtype=np.int64)
    caption_idx = np.arange(store.n_captions) if caption_idx is None else np.asarray(caption_idx, dtype=np.int64)
    img, img_mask = embed_store_items(model, store, "image", device, image_idx, batch_size)
    order = np.argsort(np.asarray(store.token_counts)[caption_idx], kind="stable")
    caps, columns = [], []
    for s in range(0, len(order), batch_size):
        group = order[s:s + batch_size]
        caps.append(model.embed_texts(store.caption_batch(caption_idx[group]).to(device)))
        columns.append(torch.from_numpy(group).to(img.device))
    return score_embeddings(img, img_mask, caps, model.cfg.pooling, model.cfg.temperature, chunk_mb,
                            columns=columns, progress=progress, words=model.cfg.words)


@torch.no_grad()
def score_store_pairs(model: torch.nn.Module, store, image_idx: np.ndarray, caption_idx: np.ndarray,
                      device: torch.device | str, batch_size: int = 4096) -> np.ndarray:
    """(P,) teacher scores of the pairs (store image image_idx[p], store caption caption_idx[p]):
    every distinct item embedded once, then ``model.score_pairs`` `batch_size` pairs at a time."""
    model.eval()
    images, img_row = np.unique(np.asarray(image_idx, dtype=np.int64), return_inverse=True)
    captions, cap_row = np.unique(np.asarray(caption_idx, dtype=np.int64), return_inverse=True)
    img, img_mask = embed_store_items(model, store, "image", device, images)
    cap, cap_mask = embed_store_items(model, store, "caption", device, captions)
    out = []
    for s in range(0, len(img_row), batch_size):
        i = torch.as_tensor(img_row[s:s + batch_size], device=img.device)
        c = torch.as_tensor(cap_row[s:s + batch_size], device=cap.device)
        out.append(model.score_pairs(img[i], img_mask[i], cap[c], cap_mask[c]).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)
