"""Non-learned retrieval baselines: what bags of words and colour statistics can do.

They show the data is "hard in the right way": attribute words and global colour are shared
within a scene family, so matching on them ranks the family together but cannot pick the
right member. Both return an (N_img, N_cap) score matrix for aladin.evaluation.metrics.
"""
from __future__ import annotations

import os
import re
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from .images import load_rgb
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
    # The vocabulary is small (~100 words): dense float32 beats a sparse product that fills in.
    scenes = vec.transform(docs).toarray().astype(np.float32)     # (N_img, V), rows L2-normalised
    caps = vec.transform(captions).toarray().astype(np.float32)   # (N_cap, V)
    return scenes @ caps.T


@lru_cache(maxsize=1)
def _palette_lut() -> np.ndarray:
    """Palette index (n_colours = none) of every RGB colour quantised to 5 bits per channel."""
    levels = np.arange(32, dtype=np.float32) * 8 + 4                                    # bin centres
    rgb = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)  # (32768, 3)
    palette = np.asarray([RGB[c] for c in COLOUR_NAMES], dtype=np.float32)             # (C, 3)
    d = np.linalg.norm(rgb[:, None] - palette[None], axis=2)                           # (32768, C)
    return np.where(d.min(1) < COLOUR_RADIUS, d.argmin(1), len(palette))


def colour_histogram(path: str | os.PathLike) -> np.ndarray:
    """Fraction of an image's pixels near each palette colour, shape (n_colours,)."""
    q = np.asarray(load_rgb(path)).reshape(-1, 3) >> 3                # (P, 3) in [0, 32)
    idx = _palette_lut()[(q[:, 0].astype(np.int32) << 10) | (q[:, 1].astype(np.int32) << 5) | q[:, 2]]
    return np.bincount(idx, minlength=len(COLOUR_NAMES) + 1)[:-1] / len(idx)


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
