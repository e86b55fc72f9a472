"""Feature stores of random vectors for tests about arithmetic rather than learning."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from aladin.store import FeatureStore, StoreWriter


def random_store(path: Path, n_img: int = 6, cpi: int = 2, r: int = 5, length: int = 6, d_img: int = 10,
                 d_txt: int = 9, seed: int = 0) -> FeatureStore:
    """n_img images of up to r regions, cpi captions each of up to `length` tokens, random counts."""
    rng = np.random.default_rng(seed)
    n_cap = n_img * cpi
    with StoreWriter(path, n_img, r, d_img, n_cap, length, d_txt) as w:
        w.write_images(0, rng.normal(size=(n_img, r, d_img)), rng.uniform(size=(n_img, r, 6)),
                       rng.integers(1, r + 1, size=n_img))
        w.write_captions(0, rng.normal(size=(n_cap, length, d_txt)), rng.integers(1, length + 1, size=n_cap))
        w.finish([str(i) for i in range(n_img)], [f"{i}.png" for i in range(n_img)],
                 [f"caption {j}" for j in range(n_cap)], np.repeat(np.arange(n_img), cpi), {})
    return FeatureStore(path)
