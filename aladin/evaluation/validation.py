"""Model selection: each training stage's validation metrics on a whole split, per model kind.

The training loop calls ``validate(model)`` once per epoch; stages bind these functions to their
val split (functools.partial), so no stage carries its own closure.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..retrieval.encode import encode_images, encode_texts
from ..retrieval.store_scores import score_store
from ..store import FeatureStore
from .metrics import retrieval_metrics


def teacher_metrics(model: nn.Module, store: FeatureStore, device: torch.device | str,
                    chunk_mb: float) -> dict[str, float]:
    """Retrieval metrics of the alignment head: exhaustive teacher scores of the whole split."""
    return retrieval_metrics(score_store(model, store, device, chunk_mb, progress=False), store.caption_image)


def student_metrics(model: nn.Module, store: FeatureStore, batch_size: int = 256) -> dict[str, float]:
    """Retrieval metrics of the student on a whole split: exact dot-product kNN, both directions."""
    img = encode_images(model, store, batch_size=batch_size)
    txt = encode_texts(model, store, batch_size=batch_size)
    return retrieval_metrics(img @ txt.T, np.array(store.caption_image))
