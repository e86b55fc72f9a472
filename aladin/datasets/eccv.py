"""ECCV Caption (Chun et al. 2022) and CxC metrics on the COCO 5K test set, via `eccv-caption`.

The package ships the 5K test's COCO ids and the extended positives; it is given, per query, the
retrieved items' COCO ids best first. Ranked lists only need to be as long as the largest
positive set (mAP@R reads the top R) or the largest K, so top-k lists are exact.
Values are returned in percent, like the R@K of aladin.evaluation.metrics.
"""
from __future__ import annotations

import contextlib
import functools
import io
import warnings
from typing import Sequence

import numpy as np
import torch

from ..errors import DataError

KS = (1, 5, 10)


@functools.lru_cache(maxsize=1)
def _package_metrics():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # "failed to import ujson": plain json is fine
        from eccv_caption import Metrics
    return Metrics()


def required_k(metrics=None, ks: Sequence[int] = KS) -> tuple[int, int]:
    """Shortest exact (i2t, t2i) ranked-list lengths: the largest positive set or K."""
    m = metrics or _package_metrics()
    return tuple(max(max(ks), *(len(v) for gts in (m.eccv_gts, m.cxc_gts) for v in gts[d].values()))
                 for d in ("i2t", "t2i"))


def eccv_metrics_from_topk(i2t_topk: np.ndarray, t2i_topk: np.ndarray, image_ids: Sequence[int],
                           caption_ids: Sequence[int], ks: Sequence[int] = KS) -> dict[str, float]:
    """Metrics from ranked store indices: i2t_topk (N_img, k) caption rows, t2i_topk (N_cap, k) image rows.

    `image_ids[i]` / `caption_ids[j]` are the COCO ids of store image i / caption j. Keys:
    ``eccv_map_at_r_{i2t,t2i}``, ``eccv_rprecision_*``, ``eccv_r{K}_*``, ``cxc_r{K}_*``.
    """
    m = _package_metrics()
    image_ids, caption_ids = np.asarray(image_ids, dtype=np.int64), np.asarray(caption_ids, dtype=np.int64)
    need_i, need_t = set(m.cxc_gts["i2t"]) | set(m.eccv_gts["i2t"]), set(m.cxc_gts["t2i"]) | set(m.eccv_gts["t2i"])
    missing = len(need_i - set(image_ids.tolist())) + len(need_t - set(caption_ids.tolist()))
    if missing:
        raise DataError(f"ECCV Caption: {missing} of its COCO 5K test images/captions are not in the "
                        f"test split (it needs the Karpathy 5K test set with COCO ids)")
    k_i, k_t = required_k(m, ks)
    if i2t_topk.shape[1] < min(k_i, len(caption_ids)) or t2i_topk.shape[1] < min(k_t, len(image_ids)):
        raise ValueError(f"ECCV Caption needs top-{k_i} (i2t) and top-{k_t} (t2i) lists, "
                         f"got {i2t_topk.shape[1]} and {t2i_topk.shape[1]}")
    retrieved = {
        "i2t": dict(zip(image_ids.tolist(), caption_ids[i2t_topk].tolist())),
        "t2i": dict(zip(caption_ids.tolist(), image_ids[t2i_topk].tolist())),
    }
    out: dict[str, float] = {}
    with contextlib.redirect_stderr(io.StringIO()):  # the package draws tqdm bars unconditionally
        results = dict(m.eccv_metrics(retrieved, "all"))
        for k in ks:
            results[f"eccv_r{k}"] = m.eccv_recalls(retrieved, "all", K=k)
            results[f"cxc_r{k}"] = m.cxc_recalls(retrieved, "all", K=k)
    for name, per_dir in results.items():
        for direction, value in per_dir.items():
            out[f"{name}_{direction}"] = 100.0 * float(value)
    return out


def eccv_metrics(scores: np.ndarray | torch.Tensor, image_ids: Sequence[int], caption_ids: Sequence[int],
                 ks: Sequence[int] = KS) -> dict[str, float]:
    """Metrics of a full (N_img, N_cap) test score matrix (higher = more similar)."""
    s = torch.as_tensor(scores, dtype=torch.float32)
    k_i, k_t = required_k(ks=ks)
    i2t = s.topk(min(k_i, s.shape[1]), dim=1).indices.numpy()
    t2i = s.T.topk(min(k_t, s.shape[0]), dim=1).indices.numpy()
    return eccv_metrics_from_topk(i2t, t2i, image_ids, caption_ids, ks)
