"""Non-learned retrieval baselines: what bags of words and colour statistics can do.

They show the data is "hard in the right way": attribute words and global colour are shared
within a scene family, so matching on them ranks the family together but cannot pick the
right member. Both return an (N_img, N_cap) score matrix for aladin.metrics.
"""
from __future__ import annotations

import os
import re
from typing import Any, Sequence

import numpy as np
from PIL import Image
from sklearn.feature_extraction.text import TfidfVectorizer

from .lexicon import COLOURS, RGB, word_for

COLOUR_NAMES = list(RGB)
COLOUR_RADIUS = 60.0              # RGB distance under which a pixel counts as a palette colour


def scene_words(record: dict[str, Any]) -> str:
    """The ground-truth bag of attribute words of a scene record (order carries nothing)."""
    return " ".join(word_for(a, o[a]) for o in record["objects"] for a in ("size", "colour", "pattern", "shape"))


def bow_scores(records: Sequence[dict[str, Any]], captions: Sequence[str]) -> np.ndarray:
    """Cosine of TF-IDF vectors: caption words against each scene's attribute words."""
    docs = [scene_words(r) for r in records]
    vec = TfidfVectorizer(token_pattern=r"[a-z]+").fit(docs + list(captions))
    scenes, caps = vec.transform(docs), vec.transform(captions)   # rows L2-normalised
    return (scenes @ caps.T).toarray().astype(np.float32)


def colour_histogram(path: str | os.PathLike) -> np.ndarray:
    """Fraction of an image's pixels near each palette colour, shape (n_colours,)."""
    px = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32).reshape(-1, 3)   # (P, 3)
    palette = np.asarray([RGB[c] for c in COLOUR_NAMES], dtype=np.float32)             # (C, 3)
    # Squared distances as |p|^2 - 2 p.c + |c|^2: one small matmul instead of a (P, C, 3) tensor.
    d2 = (px * px).sum(1, keepdims=True) - 2 * px @ palette.T + (palette * palette).sum(1)  # (P, C)
    near = d2.min(axis=1) < COLOUR_RADIUS ** 2
    return np.bincount(d2.argmin(axis=1)[near], minlength=len(palette)) / len(px)


def caption_colours(caption: str) -> np.ndarray:
    """Counts of each palette colour's words in a caption, shape (n_colours,)."""
    words = re.findall(r"[a-z]+", caption.lower())
    return np.asarray([sum(words.count(w) for w in COLOURS[c]) for c in COLOUR_NAMES], dtype=np.float32)


def colour_scores(image_files: Sequence[str | os.PathLike], captions: Sequence[str]) -> np.ndarray:
    """Cosine between caption colour words and image colour histograms."""
    h = np.stack([colour_histogram(f) for f in image_files]).astype(np.float32)
    c = np.stack([caption_colours(t) for t in captions])
    h /= np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-12)
    c /= np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    return h @ c.T
