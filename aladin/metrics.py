"""Retrieval metrics with the field's conventions (VSE++ / SCAN / ALADIN evaluation code).

``scores`` is always an (N_img, N_cap) matrix, higher = more similar, and ``caption_image[j]``
is the image that caption j describes.

- image->text: an image query's rank is the best rank among its captions;
- text->image: every caption is a query with exactly one correct image;
- ranks are 1-based; ties count against the query (a wrong item with the same score as the
  correct one ranks ahead of it), so a constant scorer gets no credit;
- R@K in percent, rsum = sum of the six recalls.
"""
from __future__ import annotations

import numpy as np
import torch

KS = (1, 5, 10)


def ranks_i2t(scores: np.ndarray | torch.Tensor, caption_image: np.ndarray) -> np.ndarray:
    """1-based rank of the best-ranked correct caption for each image query. Shape (N_img,)."""
    s = torch.as_tensor(scores, dtype=torch.float32)
    cap_img = torch.as_tensor(np.asarray(caption_image), dtype=torch.long)
    positive = cap_img[None, :] == torch.arange(s.shape[0])[:, None]           # (N_img, N_cap)
    best_pos = s.masked_fill(~positive, float("-inf")).max(dim=1).values        # (N_img,)
    # Rank = 1 + number of *negatives* scoring >= the best positive (ties count against us).
    beaten = ((s >= best_pos[:, None]) & ~positive).sum(dim=1)
    return (beaten + 1).numpy()


def ranks_t2i(scores: np.ndarray | torch.Tensor, caption_image: np.ndarray) -> np.ndarray:
    """1-based rank of the correct image for each caption query. Shape (N_cap,)."""
    s = torch.as_tensor(scores, dtype=torch.float32).T                          # (N_cap, N_img)
    cap_img = torch.as_tensor(np.asarray(caption_image), dtype=torch.long)
    pos = s.gather(1, cap_img[:, None])                                         # (N_cap, 1)
    beaten = (s >= pos).sum(dim=1) - 1                                          # minus itself
    return (beaten + 1).numpy()


def summarize(r_i2t: np.ndarray, r_t2i: np.ndarray) -> dict[str, float]:
    """R@1/5/10, median and mean rank for both directions, and rsum."""
    out: dict[str, float] = {}
    for name, r in (("i2t", r_i2t), ("t2i", r_t2i)):
        for k in KS:
            out[f"{name}_r{k}"] = float(100.0 * np.mean(r <= k))
        out[f"{name}_medr"] = float(np.median(r))
        out[f"{name}_meanr"] = float(np.mean(r))
    out["rsum"] = float(sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in KS))
    return out


def retrieval_metrics(scores: np.ndarray | torch.Tensor, caption_image: np.ndarray) -> dict[str, float]:
    """All metrics of one (N_img, N_cap) score matrix."""
    return summarize(ranks_i2t(scores, caption_image), ranks_t2i(scores, caption_image))


def fold_slices(n_images: int, captions_per_image: int, fold_size: int = 1000) -> list[tuple[slice, slice]]:
    """(image slice, caption slice) of each COCO-style 1K fold (5 folds for the 5K test set)."""
    if n_images % fold_size:
        raise ValueError(f"{n_images} images do not split into folds of {fold_size}")
    return [(slice(f * fold_size, (f + 1) * fold_size),
             slice(f * fold_size * captions_per_image, (f + 1) * fold_size * captions_per_image))
            for f in range(n_images // fold_size)]


def protocol_metrics(scores: np.ndarray | torch.Tensor, caption_image: np.ndarray,
                     fold_size: int = 1000) -> dict[str, dict[str, float]]:
    """COCO protocols from one full score matrix: '1k' = mean over folds, '5k' = all at once.

    The full-set key is named after its size ('5k' for 5,000 images). Captions must be ordered
    image by image with a fixed number per image, as the feature store guarantees.
    """
    s = torch.as_tensor(scores, dtype=torch.float32)
    cap_img = np.asarray(caption_image)
    n_img, n_cap = s.shape
    per_image = n_cap // n_img
    if per_image * n_img != n_cap or not np.array_equal(cap_img, np.repeat(np.arange(n_img), per_image)):
        raise ValueError("protocol_metrics needs captions ordered image by image, same count per image")
    out = {f"{n_img // 1000}k" if n_img % 1000 == 0 else f"n{n_img}": retrieval_metrics(s, cap_img)}
    if n_img > fold_size and n_img % fold_size == 0:
        folds = [retrieval_metrics(s[i, c], cap_img[c] - i.start)
                 for i, c in fold_slices(n_img, per_image, fold_size)]
        out["1k"] = {k: float(np.mean([f[k] for f in folds])) for k in folds[0]}
    return out
