"""Retrieval metrics with the field's conventions (VSE++ / SCAN / ALADIN evaluation code).

``scores`` is always an (N_img, N_cap) matrix, higher = more similar, and ``caption_image[j]``
is the image that caption j describes.

- image->text: an image query's rank is the best rank among its captions;
- text->image: every caption is a query with exactly one correct image;
- ranks are 1-based; ties count against the query (a wrong item with the same score as the
  correct one ranks ahead of it), so a constant scorer gets no credit. "Wrong" is the
  protocol's: for a caption query every image but its own, even one the caption is also true
  of (an oracle that scores every true image alike ranks the correct one behind all of them);
  for an image query every caption of another image, while its own captions never push each
  other down (only the best of them counts);
- R@K in percent, rsum = sum of the six recalls;
- medr = floor of the median rank (VSE++'s ``floor(median(0-based ranks)) + 1``), so it is
  always a rank; meanr = mean rank.

Retrieval through a top-k list (an index, a re-ranker) only knows the first k positions; see
:func:`topk_ranks_t2i` for how ranks beyond k are filled in.
"""
from __future__ import annotations

import functools
import logging
from typing import Callable, Hashable, Sequence

import numpy as np
import torch

from ..errors import DataError

log = logging.getLogger("aladin")

KS = (1, 5, 10)
# Query rows per chunk: bounds the (chunk, N) temporaries to a few hundred MB at COCO 5K.
_CHUNK = 1024
FOLD_SIZE = 1000        # images per fold of the 1K protocol
COCO_5K = 5000          # images of the 5K protocol


def _check(scores: torch.Tensor, caption_image: np.ndarray) -> torch.Tensor:
    if scores.ndim != 2:
        raise DataError(f"scores: expected an (N_img, N_cap) matrix, got shape {tuple(scores.shape)}")
    n_img, n_cap = scores.shape
    cap_img = torch.tensor(np.asarray(caption_image), dtype=torch.long)       # a copy: the store's array is read-only
    if cap_img.shape != (n_cap,):
        raise DataError(f"caption_image: {tuple(cap_img.shape)} entries for {n_cap} captions")
    if n_cap and (cap_img.min() < 0 or cap_img.max() >= n_img):
        raise DataError(f"caption_image: image index out of range [0, {n_img})")
    if not torch.isfinite(scores).all():
        raise DataError("scores: contains NaN or infinite values")
    return cap_img


def ranks_i2t(scores: np.ndarray | torch.Tensor, caption_image: np.ndarray,
              query_images: np.ndarray | None = None) -> np.ndarray:
    """1-based rank of the best-ranked correct caption for each image query. Row q of `scores`
    is image q, or image ``query_images[q]`` when given (a sample of image queries, each of which
    must have a caption among the columns). Shape (N_rows,)."""
    s = torch.as_tensor(scores, dtype=torch.float32)
    if query_images is None:
        cap_img = _check(s, caption_image)
        query = torch.arange(s.shape[0])
        has_caption = torch.bincount(cap_img, minlength=s.shape[0]) > 0
    else:
        cap_img = torch.tensor(np.asarray(caption_image), dtype=torch.long)
        query = torch.tensor(np.asarray(query_images), dtype=torch.long)
        if s.ndim != 2 or s.shape != (len(query), len(cap_img)):
            raise DataError(f"scores: expected ({len(query)}, {len(cap_img)}) for the query images and captions, "
                            f"got {tuple(s.shape)}")
        has_caption = torch.isin(query, cap_img)
    if not has_caption.all():
        raise DataError("caption_image: some image has no caption, its i2t rank is undefined")
    out = []
    for start in range(0, s.shape[0], _CHUNK):
        rows = s[start:start + _CHUNK]                                                  # (C, N_cap)
        positive = cap_img[None, :] == query[start:start + rows.shape[0], None]
        best_pos = rows.masked_fill(~positive, float("-inf")).max(dim=1).values         # (C,)
        # Rank = 1 + number of *negatives* scoring >= the best positive (ties count against us).
        out.append(((rows >= best_pos[:, None]) & ~positive).sum(dim=1) + 1)
    return torch.cat(out).numpy() if out else np.zeros(0, np.int64)


def ranks_t2i(scores: np.ndarray | torch.Tensor, caption_image: np.ndarray) -> np.ndarray:
    """1-based rank of the correct image for each caption query. Shape (N_cap,)."""
    s = torch.as_tensor(scores, dtype=torch.float32)
    cap_img = _check(s, caption_image)
    s = s.T                                                                              # (N_cap, N_img)
    out = []
    for start in range(0, s.shape[0], _CHUNK):
        rows = s[start:start + _CHUNK]
        pos = rows.gather(1, cap_img[start:start + _CHUNK, None])                        # (C, 1)
        out.append((rows >= pos).sum(dim=1))        # counts the correct image itself: rank is 1-based
    return torch.cat(out).numpy() if out else np.zeros(0, np.int64)


def _first_hit(hit: np.ndarray, fallback: np.ndarray, k: int) -> np.ndarray:
    """Rank from a (Q, k) hit mask: position of the first hit, else max(k + 1, fallback)."""
    found = hit.any(axis=1)
    first = hit.argmax(axis=1) + 1
    beyond = np.maximum(np.asarray(fallback, dtype=np.int64), k + 1)
    return np.where(found, first, beyond)


def _scored_hit(hit: np.ndarray, valid: np.ndarray, scores: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Rank from a (Q, k) hit mask and the list's scores, with the tie rule of ranks_i2t/ranks_t2i:
    1 + the listed non-hits scoring >= the best hit, whatever the list's order; else as _first_hit."""
    s = np.asarray(scores, dtype=np.float32)               # the dtype the exhaustive ranks compare in
    best = np.where(hit, s, -np.inf).max(axis=1, initial=-np.inf)
    ahead = (valid & ~hit & (s >= best[:, None])).sum(axis=1)
    beyond = np.maximum(np.asarray(fallback, dtype=np.int64), hit.shape[1] + 1)
    return np.where(hit.any(axis=1), ahead + 1, beyond)


def topk_ranks_t2i(topk_images: np.ndarray, caption_image: np.ndarray, fallback: np.ndarray,
                   topk_scores: np.ndarray | None = None) -> np.ndarray:
    """Ranks of caption queries answered by a top-k list of image ids (Q, k), best first.

    Within the list: without `topk_scores`, the list's order (an index's answer); with the
    (Q, k) scores of the listed items (a re-ranker's), the tie rule of :func:`ranks_t2i`, so
    a listed image tied with the correct one counts ahead of it and a list holding the whole
    collection gives exactly the exhaustive ranks of those scores.

    Convention for a correct image that is not in the list: its rank is
    ``max(k + 1, fallback)``, where `fallback` is its rank under exhaustive scoring of the
    same embeddings (for a re-ranker: the first stage's rank, i.e. the list continued in the
    first stage's order). So R@K for K <= k is exactly what the top-k list delivers (an
    approximate index's misses count as misses), and medr / meanr stay finite and honest.
    Ids of -1 (faiss: fewer than k results) never match and never count ahead.
    """
    topk_images = np.asarray(topk_images)
    hit = topk_images == np.asarray(caption_image)[:, None]
    if topk_scores is None:
        return _first_hit(hit, fallback, topk_images.shape[1])
    return _scored_hit(hit, topk_images >= 0, topk_scores, fallback)


def topk_ranks_i2t(topk_captions: np.ndarray, caption_image: np.ndarray, fallback: np.ndarray,
                   topk_scores: np.ndarray | None = None) -> np.ndarray:
    """Ranks of image queries answered by a top-k list of caption ids (Q, k): first correct caption.

    Same conventions as :func:`topk_ranks_t2i`; with `topk_scores`, the tie rule of
    :func:`ranks_i2t` (the best-scored own caption against the listed captions of other images).
    """
    topk_captions = np.asarray(topk_captions)
    cap_img = np.asarray(caption_image)
    valid = topk_captions >= 0
    hit = valid & (cap_img[np.where(valid, topk_captions, 0)] == np.arange(len(topk_captions))[:, None])
    if topk_scores is None:
        return _first_hit(hit, fallback, topk_captions.shape[1])
    return _scored_hit(hit, valid, topk_scores, fallback)


def within_family_metrics(scores: np.ndarray | torch.Tensor, caption_image: np.ndarray,
                          family_of_image: Sequence[Hashable]) -> dict[str, float]:
    """Text->image retrieval among the images of the caption's own scene family only.

    Family members share every attribute word and differ only in how they bind them, so this
    isolates binding from the easy part of retrieval (telling families apart). For caption j
    the rank is 1 + the number of *other* images of its image's family scoring >= its image
    (the tie rule of :func:`ranks_t2i`). Returns ``t2i_family_r1`` (percent of captions
    ranking their image first in its family), ``family_size`` (mean number of candidates per
    caption, its own image included) and ``t2i_family_chance_r1`` (the expected R@1 of a random
    order, 100 * mean(1 / family size)). Applied to the oracle's scores it is the family-wise
    ceiling. Scores keep their float dtype (a composed two-stage matrix needs float64).
    """
    s = torch.as_tensor(scores)
    s = s if s.is_floating_point() else s.float()
    cap_img = _check(s, caption_image).numpy()
    families, fam = np.unique(np.asarray(family_of_image), return_inverse=True)
    if fam.shape != (s.shape[0],):
        raise DataError(f"family_of_image: {fam.shape[0]} entries for {s.shape[0]} images")
    # members[f] = the images of family f, padded with -1 to the largest family.
    order = np.argsort(fam, kind="stable")
    sizes = np.bincount(fam, minlength=len(families))
    slot = np.arange(len(order)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    members = np.full((len(families), max(int(sizes.max(initial=0)), 1)), -1)
    members[fam[order], slot] = order
    cand = members[fam[cap_img]]                                                   # (N_cap, F)
    valid = cand >= 0
    cols = np.arange(len(cap_img))[:, None]
    sc = s.numpy()[np.where(valid, cand, 0), cols]                                  # (N_cap, F)
    pos = sc[valid & (cand == cap_img[:, None])]                                    # (N_cap,)
    rank = (valid & (sc >= pos[:, None])).sum(axis=1)                               # counts itself
    size = valid.sum(axis=1)
    return {"t2i_family_r1": float(100.0 * np.mean(rank == 1)), "family_size": float(np.mean(size)),
            "t2i_family_chance_r1": float(100.0 * np.mean(1.0 / size))}


def t2i_recall_random_ties(scores: np.ndarray | torch.Tensor, caption_image: np.ndarray) -> dict[str, float]:
    """Expected text->image R@1/5/10 when ties are broken uniformly at random (the other tie rule).

    For a caption with ``a`` wrong images scoring above its image and ``t`` tied with it, the
    rank is uniform on a+1 .. a+t+1, so P(rank <= K) = clip((K - a) / (t + 1), 0, 1). For the
    oracle this is the judge that picks at random among the images its caption is true of.
    """
    s = torch.as_tensor(scores, dtype=torch.float32)
    cap_img = _check(s, caption_image)
    s = s.T                                                                              # (N_cap, N_img)
    above, tied = [], []
    for start in range(0, s.shape[0], _CHUNK):
        rows = s[start:start + _CHUNK]
        pos = rows.gather(1, cap_img[start:start + _CHUNK, None])
        above.append((rows > pos).sum(dim=1))
        tied.append((rows == pos).sum(dim=1) - 1)                                        # not itself
    a, t = torch.cat(above).double(), torch.cat(tied).double()
    return {f"t2i_r{k}": float(100.0 * ((k - a) / (t + 1)).clamp(0, 1).mean()) for k in KS}


def count_score_ties(scores: np.ndarray | torch.Tensor, caption_image: np.ndarray) -> dict[str, float]:
    """How many queries the pessimistic tie rule touches: a wrong item scores exactly the correct one.

    t2i: captions with another image scoring exactly their image's score; i2t: images with a
    caption of another image scoring exactly their best own caption's score. On these queries
    the pessimistic rank is worse than an optimistic one, and a sort-based script's rank is
    arbitrary. Counts (``t2i_tied``, ``i2t_tied``) and percent of queries (``*_tied_pct``).
    """
    s = torch.as_tensor(scores, dtype=torch.float32)
    cap_img = _check(s, caption_image)
    n_img, n_cap = s.shape
    t2i = i2t = 0
    for start in range(0, n_cap, _CHUNK):
        cols = s[:, start:start + _CHUNK]                                               # (N_img, C)
        own = cap_img[start:start + _CHUNK]
        wrong = own[None, :] != torch.arange(n_img)[:, None]
        pos = cols.gather(0, own[None, :])
        t2i += int(((cols == pos) & wrong).any(dim=0).sum())
    for start in range(0, n_img, _CHUNK):
        rows = s[start:start + _CHUNK]                                                  # (C, N_cap)
        positive = cap_img[None, :] == torch.arange(start, start + rows.shape[0])[:, None]
        best = rows.masked_fill(~positive, float("-inf")).max(dim=1).values
        i2t += int(((rows == best[:, None]) & ~positive).any(dim=1).sum())
    return {"t2i_tied": t2i, "t2i_tied_pct": 100.0 * t2i / max(n_cap, 1),
            "i2t_tied": i2t, "i2t_tied_pct": 100.0 * i2t / max(n_img, 1)}


def duplicate_captions(captions: Sequence[str], caption_image: np.ndarray) -> int:
    """Number of captions whose exact text is also a caption of another image.

    Identical texts get identical embeddings, so every such pair ties exactly under any model
    (t2i: the other image; i2t: the other image's copy), and no scorer can tell them apart.
    """
    images_of: dict[str, set[int]] = {}
    for text, image in zip(captions, np.asarray(caption_image).tolist()):
        images_of.setdefault(text, set()).add(image)
    return sum(len(images_of[text]) > 1 for text in captions)


def summarize(r_i2t: np.ndarray, r_t2i: np.ndarray) -> dict[str, float]:
    """R@1/5/10, median and mean rank for both directions, and rsum."""
    out: dict[str, float] = {}
    for name, r in (("i2t", r_i2t), ("t2i", r_t2i)):
        for k in KS:
            out[f"{name}_r{k}"] = float(100.0 * np.mean(r <= k))
        out[f"{name}_medr"] = float(np.floor(np.median(r)))
        out[f"{name}_meanr"] = float(np.mean(r))
    out["rsum"] = float(sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in KS))
    return out


def bootstrap_interval(r_i2t: np.ndarray, r_t2i: np.ndarray, n_boot: int = 2000, seed: int = 0,
                       level: float = 0.95,
                       baseline: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, list[float]]:
    """Percentile bootstrap intervals over queries of each R@K and of rsum.

    Each resample draws the image queries and the caption queries with replacement (each direction
    its own queries, as sampled); a metric's interval is the central `level` of its resampled values.
    With `baseline` (another model's (r_i2t, r_t2i) on the same queries, in the same order) the
    intervals are of the differences, this model minus the baseline, on the same resamples (paired).
    """
    rng = np.random.default_rng(seed)
    draws: dict[str, np.ndarray] = {}
    base = (np.zeros(0), np.zeros(0)) if baseline is None else baseline
    for name, r, b in (("i2t", np.asarray(r_i2t), np.asarray(base[0])), ("t2i", np.asarray(r_t2i), np.asarray(base[1]))):
        pick = rng.integers(0, len(r), (n_boot, len(r)))                     # (n_boot, Q) resampled queries
        for k in KS:
            draws[f"{name}_r{k}"] = 100.0 * (r[pick] <= k).mean(axis=1)
            if baseline is not None:
                draws[f"{name}_r{k}"] -= 100.0 * (b[pick] <= k).mean(axis=1)
    draws["rsum"] = sum(draws[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in KS)
    tail = 100 * (1 - level) / 2
    return {key: [float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))] for key, v in draws.items()}


def retrieval_metrics(scores: np.ndarray | torch.Tensor, caption_image: np.ndarray) -> dict[str, float]:
    """All metrics of one (N_img, N_cap) score matrix."""
    return summarize(ranks_i2t(scores, caption_image), ranks_t2i(scores, caption_image))


def fold_slices(n_images: int, captions_per_image: int, fold_size: int = FOLD_SIZE) -> list[tuple[slice, slice]]:
    """(image slice, caption slice) of each COCO-style 1K fold (5 folds for the 5K test set)."""
    if n_images % fold_size:
        raise DataError(f"{n_images} images do not split into folds of {fold_size}")
    return [(slice(f * fold_size, (f + 1) * fold_size),
             slice(f * fold_size * captions_per_image, (f + 1) * fold_size * captions_per_image))
            for f in range(n_images // fold_size)]


def captions_per_image(caption_image: np.ndarray, n_images: int) -> int:
    """The fixed caption count per image; DataError unless captions are ordered image by image."""
    cap_img = np.asarray(caption_image)
    per_image = len(cap_img) // max(n_images, 1)
    if per_image == 0 or not np.array_equal(cap_img, np.repeat(np.arange(n_images), per_image)):
        raise DataError("caption_image: the 1K/5K protocol needs captions ordered image by image, "
                        "the same number per image")
    return per_image


def full_key(n_images: int) -> str:
    """Protocol name of the whole set: '5k' for 5,000 images, 'n<N>' when not a multiple of 1,000."""
    return f"{n_images // 1000}k" if n_images % 1000 == 0 else f"n{n_images}"


def supported_protocols(n_images: int, fold_size: int = FOLD_SIZE) -> tuple[str, ...]:
    """The COCO protocols a test set of `n_images` supports.

    '1k': the mean over folds of `fold_size` images, so `n_images` must be a positive multiple of
    it (COCO 5K: 5 folds; Flickr30K's 1,000: one fold, the whole set). '5k': exactly 5,000 images.
    The whole set is reported in any case, under :func:`full_key`.
    """
    out = ("1k",) if n_images >= fold_size and n_images % fold_size == 0 else ()
    return out + (("5k",) if n_images == COCO_5K else ())


@functools.cache
def check_protocols(n_images: int, fold_size: int = FOLD_SIZE) -> tuple[str, ...]:
    """:func:`supported_protocols`, with one warning per size and process when it supports neither
    (every metrics row of a stage goes through here; the user needs to read it once)."""
    supported = supported_protocols(n_images, fold_size)
    if not supported:
        log.warning("%d test images support neither the COCO 1K protocol (a multiple of %d images) nor "
                    "5K (exactly %d): metrics are for the whole set only, under '%s'",
                    n_images, fold_size, COCO_5K, full_key(n_images))
    return supported


def protocol_description(n_images: int, fold_size: int = FOLD_SIZE) -> dict[str, str]:
    """What each metrics key of :func:`protocol_from_ranks` measures at this size (for eval.json)."""
    supported = supported_protocols(n_images, fold_size)
    full = f"the whole test set of {n_images} images"
    if "5k" in supported:
        full += " (the 5K protocol)"
    elif n_images == fold_size:
        full += " (one fold: the 1K protocol)"
    elif not supported:
        full += (f" (supports neither the 1K protocol, which needs a multiple of {fold_size} images, "
                 f"nor 5K, which needs exactly {COCO_5K})")
    out = {full_key(n_images): full}
    if "1k" in supported and n_images > fold_size:
        out["1k"] = (f"mean of {n_images // fold_size} folds of {fold_size} images "
                     f"(each fold its own collection)")
    return out


RankFn = Callable[[slice, slice], tuple[np.ndarray, np.ndarray]]


def protocol_from_ranks(rank_fn: RankFn, n_images: int, per_image: int,
                        fold_size: int = FOLD_SIZE) -> dict[str, dict[str, float]]:
    """COCO protocols for any retrieval method: the whole set, plus '1k' = mean over folds when the
    size supports it (:func:`supported_protocols`; keys as in :func:`protocol_description`).

    ``rank_fn(image_slice, caption_slice) -> (ranks_i2t, ranks_t2i)`` retrieves within that
    sub-collection only (a 1K fold is its own collection of 1,000 images). The full-set key is
    named after its size ('5k' for 5,000 images, 'n<N>' when N is not a multiple of 1,000).
    """
    if n_images < 1 or per_image < 1:
        # Means over no queries would be NaN.
        raise DataError(f"retrieval metrics: {n_images} test images with {per_image} captions each")
    full = (slice(0, n_images), slice(0, n_images * per_image))
    out = {full_key(n_images): summarize(*rank_fn(*full))}
    # At n_images == fold_size the one fold is the whole set, already reported.
    if "1k" in check_protocols(n_images, fold_size) and n_images > fold_size:
        folds = [summarize(*rank_fn(i, c)) for i, c in fold_slices(n_images, per_image, fold_size)]
        out["1k"] = {k: float(np.mean([f[k] for f in folds])) for k in folds[0]}
    return out


def protocol_metrics(scores: np.ndarray | torch.Tensor, caption_image: np.ndarray,
                     fold_size: int = FOLD_SIZE) -> dict[str, dict[str, float]]:
    """COCO protocols from one full (N_img, N_cap) score matrix (see :func:`protocol_from_ranks`)."""
    s = torch.as_tensor(scores, dtype=torch.float32)
    cap_img = np.asarray(caption_image)
    per_image = captions_per_image(cap_img, s.shape[0])

    def rank_fn(i: slice, c: slice) -> tuple[np.ndarray, np.ndarray]:
        sub, sub_cap = s[i, c], cap_img[c] - i.start
        return ranks_i2t(sub, sub_cap), ranks_t2i(sub, sub_cap)

    return protocol_from_ranks(rank_fn, s.shape[0], per_image, fold_size)
