"""Encode images and captions with the student: the one entry point for index, evaluation, search.

Hides batching, devices, eval mode and gradient tracking, like sentence-transformers' ``encode``::

    img = encode_images(student, store)                   # (N_img, D) float32
    txt = encode_texts(student, store, indices=[0, 5])    # (2, D)
    q = encode_texts(student, text_batch(backbone, ["a red cube"]))   # raw query as a Batch
"""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from ..store import Batch, FeatureStore

Indices = Sequence[int] | np.ndarray | None
# Show a progress bar only from this many batches on.
_PROGRESS_MIN_BATCHES = 20


def _chunks(n: int, indices: Indices, batch_size: int) -> list[np.ndarray]:
    idx = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)
    return [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]


@torch.no_grad()
def _encode(model: nn.Module, embed: Callable[[Batch], torch.Tensor], batches: Iterator[Batch],
            total: int, device: torch.device | str | None, desc: str) -> np.ndarray:
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        out = [embed(b.to(device)).float().cpu().numpy()
               for b in tqdm(batches, total=total, desc=desc, disable=total < _PROGRESS_MIN_BATCHES)]
    finally:
        model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, model.dim), np.float32)


def encode_images(model: nn.Module, source: FeatureStore | Batch, indices: Indices = None,
                  batch_size: int = 256, device: torch.device | str | None = None) -> np.ndarray:
    """Student embeddings of images: float32 (N, D); the score is their inner product with captions'
    (cosines for the transformer student, whose rows are L2-normalised; MrSw sums for the codebook's).

    `source` is a feature store (all its images, or `indices`) or a Batch of raw query images.
    `device` defaults to the model's device.
    """
    if isinstance(source, Batch):
        return _encode(model, model.embed_images, iter([source]), 1, device, "encode images")
    chunks = _chunks(source.n_images, indices, batch_size)
    return _encode(model, model.embed_images, (source.image_batch(c) for c in chunks), len(chunks),
                   device, "encode images")


def encode_texts(model: nn.Module, source: FeatureStore | Batch, indices: Indices = None,
                 batch_size: int = 256, device: torch.device | str | None = None) -> np.ndarray:
    """Student embeddings of captions: float32 (N, D), rows L2-normalised.

    `source` is a feature store (all its captions, or `indices`) or a Batch of raw query captions.
    """
    if isinstance(source, Batch):
        return _encode(model, model.embed_texts, iter([source]), 1, device, "encode texts")
    chunks = _chunks(source.n_captions, indices, batch_size)
    return _encode(model, model.embed_texts, (source.caption_batch(c) for c in chunks), len(chunks),
                   device, "encode texts")
