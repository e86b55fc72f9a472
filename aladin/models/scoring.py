"""Teacher (alignment) scores: exact masked pooling of the region x word cosine matrix, computed
in cache-sized blocks for many images x many captions (aladin.retrieval.store_scores runs it on stores).

For an image with region vectors r_1..r_R and a caption with word vectors w_1..w_L (unit norm):

- mrsw:   sum_l max_r <r, w_l>                 (ALADIN / TERAN: best region per word, summed)
- mravgw: mean_l max_r <r, w_l>
- lse:    sum_l T * logsumexp_r(<r, w_l> / T)  (soft max over regions, -> mrsw as T -> 0)

Padded regions never win the max; padded words add nothing. No region is dropped; the words
summed over are every valid token (``words="all"``, [CLS] and [SEP] included) or the valid
tokens without the first ([CLS]) and the last ([SEP]) of each caption (``"no_special"``).

Speed: the (n*R, d) @ (d, m*L) similarity block is reduced right after it is computed; the block
is kept small (``chunk_mb``) so that reduction reads it from cache, not from memory (a block
of a few MB runs at the matmul rate; one big block at a fifth of it).
"""
from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np
import torch
from tqdm import tqdm

log = logging.getLogger("aladin")

SCORE_CHUNK_MB = 2.0   # default similarity block: about the size of one core's L2 cache
Pooling = Literal["mrsw", "mravgw", "lse"]
POOLINGS = ("mrsw", "mravgw", "lse")
Words = Literal["all", "no_special"]
WORD_SETS = ("all", "no_special")


def word_mask(cap_mask: torch.Tensor, words: Words) -> torch.Tensor:
    """(M, L) mask of the words the pooling runs over, from the (M, L) valid-token mask.

    "no_special" drops each caption's first and last *valid* token ([CLS], [SEP]: the text
    features keep both, aladin.features.text), not the last padded position; a caption of two
    tokens or fewer keeps no word and scores 0.
    """
    if words == "all":
        return cap_mask
    length = cap_mask.shape[-1]
    pos = torch.arange(length, device=cap_mask.device)
    first = cap_mask.int().argmax(dim=-1)                             # argmax: the first True
    last = length - 1 - cap_mask.flip(-1).int().argmax(dim=-1)
    return cap_mask & (pos != first[..., None]) & (pos != last[..., None])


def pad_with_first_region(img: torch.Tensor, img_mask: torch.Tensor) -> torch.Tensor:
    """Padded regions become copies of the first region: the max over regions is unchanged,
    and the hot loop needs no mask pass over the big similarity block."""
    return torch.where(img_mask[..., None], img, img[:, :1])


def _pool(sim: torch.Tensor, img_mask: torch.Tensor, cap_mask: torch.Tensor, pooling: Pooling,
          temperature: float) -> torch.Tensor:
    """Scores (...) of similarity blocks (..., R, L): over regions (dim -2) a max (padded regions
    already copies of a real one) or a masked logsumexp (lse), then over the words of `cap_mask`
    (..., L) a sum or a mean. `img_mask` broadcasts to (..., R)."""
    if pooling == "lse":
        sim = sim.masked_fill(~img_mask[..., None], float("-inf"))
        best = temperature * torch.logsumexp(sim / temperature, dim=-2)   # (..., L)
    else:
        best = sim.max(dim=-2).values                                    # backward cheaper than amax
    total = best.masked_fill(~cap_mask, 0.0).sum(dim=-1)
    if pooling == "mravgw":
        total = total / cap_mask.sum(dim=-1).clamp(min=1)
    return total


def alignment_scores(img: torch.Tensor, img_mask: torch.Tensor, cap: torch.Tensor, cap_mask: torch.Tensor,
                     pooling: Pooling, temperature: float, words: Words) -> torch.Tensor:
    """(N, M) scores of images (N, R, d) with mask (N, R) x captions (M, L, d) with mask (M, L).

    Exact and differentiable; memory N*R*M*L floats (use :func:`score_embeddings` for big sets).
    `words`: the word set summed over (:func:`word_mask`).
    """
    cap_mask = word_mask(cap_mask, words)
    n, r, d = img.shape
    m, length, _ = cap.shape
    if pooling != "lse":
        img = pad_with_first_region(img, img_mask)                      # cheaper than masking sim
    sim = (img.reshape(n * r, d) @ cap.reshape(m * length, d).T).view(n, r, m, length)
    return _pool(sim.transpose(1, 2), img_mask[:, None], cap_mask[None], pooling, temperature)


def paired_alignment_scores(img: torch.Tensor, img_mask: torch.Tensor, cap: torch.Tensor, cap_mask: torch.Tensor,
                            pooling: Pooling, temperature: float, words: Words) -> torch.Tensor:
    """(B,) scores of aligned pairs: image img[b] (R, d) with caption cap[b] (L, d), the diagonal
    of :func:`alignment_scores` at B times less work (a re-ranker scores lists of pairs)."""
    if pooling != "lse":
        img = pad_with_first_region(img, img_mask)
    return _pool(img @ cap.transpose(1, 2), img_mask, word_mask(cap_mask, words), pooling, temperature)


def score_embeddings(img: torch.Tensor, img_mask: torch.Tensor, caps: list[tuple[torch.Tensor, torch.Tensor]],
                     pooling: Pooling, temperature: float, chunk_mb: float = SCORE_CHUNK_MB,
                     columns: list[torch.Tensor] | None = None, progress: bool = True, *,
                     words: Words) -> torch.Tensor:
    """(N, sum M_k) scores of embedded images against caption groups [(cap (M_k, L_k, d), mask)].

    Captions come in groups so each group can be padded to its own length (sorted by length,
    that removes most padding). ``columns[k]`` (optional) are the output columns of group k,
    default: groups side by side. One step's similarity block holds at most ``chunk_mb`` MB.

    On CPU the images are split between torch.get_num_threads() worker threads, each running
    single-threaded ops on its own blocks: small blocks parallelise badly inside one op (a
    barrier per op), and on a busy machine collapse to a fraction of the speed.
    """
    n, r, d = img.shape
    total_caps = sum(c.shape[0] for c, _ in caps)
    out = torch.empty(n, total_caps, dtype=torch.float32, device=img.device)
    if columns is None:
        columns = list(torch.arange(total_caps, device=img.device).split([c.shape[0] for c, _ in caps]))
    caps = [(cap, word_mask(cap_mask, words)) for cap, cap_mask in caps]
    fast = pooling != "lse"
    if fast:
        img = pad_with_first_region(img, img_mask)
        caps = [(cap * cap_mask[..., None], cap_mask) for cap, cap_mask in caps]   # padded words score 0
    rows = img.reshape(n * r, d)
    budget = chunk_mb * 2**20 / 4                                         # floats per block
    bar = tqdm(total=n * total_caps, desc="teacher scoring", unit="pair", unit_scale=True,
               disable=not progress, leave=False)

    def work(lo: int, hi: int) -> None:
        """Score images lo:hi against every caption, block by block."""
        torch.set_num_threads(1)
        for (cap, cap_mask), cols in zip(caps, columns):
            m, length, _ = cap.shape
            # Block = n_img x m_cap pairs of R x L floats; aim for a square-ish block of pairs.
            pairs = max(1, int(budget // (r * length)))
            m_step = max(1, min(m, int(math.sqrt(pairs))))
            n_step = max(1, min(hi - lo, pairs // m_step))
            for j in range(0, m, m_step):
                c, c_mask, c_cols = cap[j:j + m_step], cap_mask[j:j + m_step], cols[j:j + m_step]
                mc = c.shape[0]
                c_t = c.reshape(mc * length, d).T.contiguous()            # (d, mc*L)
                for i in range(lo, hi, n_step):
                    ni = min(n_step, hi - i)
                    if fast:
                        block = (rows[i * r:(i + ni) * r] @ c_t).view(ni, r, mc, length)
                        s = block.amax(dim=1).sum(dim=-1)                 # (ni, mc)
                        if pooling == "mravgw":
                            s = s / c_mask.sum(dim=-1).clamp(min=1)[None]
                    else:
                        s = alignment_scores(img[i:i + ni], img_mask[i:i + ni], c, c_mask, pooling, temperature,
                                             "all")                       # c_mask is already the word set
                    out[i:i + ni, c_cols] = s
                    bar.update(ni * mc)

    workers = min(n, torch.get_num_threads()) if img.device.type == "cpu" else 1
    threads = torch.get_num_threads()
    try:
        if workers <= 1:
            work(0, n)
        else:
            bounds = np.linspace(0, n, workers + 1).astype(int)
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(work, bounds[:-1], bounds[1:]))
    finally:
        torch.set_num_threads(threads)
        bar.close()
    return out

