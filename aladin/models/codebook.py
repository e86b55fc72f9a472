"""The codebook student: the teacher's own score, factorised into one vector per image and per caption.

The teacher scores an image (unit region vectors r) against a caption (unit word vectors w) by
MrSw, s(I, C) = sum_w max_r <r, w>. Quantise each word to the nearest of K unit codes
c_1..c_K (PLAID's centroid interaction) and the sum factorises into a dot product:

    s(I, C) ~= sum_w max_r <r, c_k(w)> = <phi(I), psi(C)>
    phi(I)_k = max_r <r, c_k>            (K,) the best region's match to each code
    psi(C)_k = #{words w of C : k(w) = k} (K,) the caption's code counts

so phi and psi are global embeddings (D = K) and retrieval is an inner-product kNN search. The
teacher's words are contextual, so "red" beside "circle" and "red" beside "square" fall on
different codes, and phi keeps, per code, the region that matches it best: the region that is a
red circle. That is the binding a pooled transformer vector did not learn (docs/RESULTS.md).

The codes start as spherical k-means of the teacher's training word vectors (:meth:`fit_codes`)
and are then distilled: the listwise loss moves them through phi (the assignment of words is a
hard argmax, no gradient). Scores are sums of cosines, the teacher's scale, not cosines.
The head reads the frozen teacher's tokens; its two encoders are part of it and of its checkpoint.
"""
from __future__ import annotations

import logging

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..errors import ConfigError
from ..params import CodebookConfig
from ..store import Batch, FeatureStore
from .scoring import pad_with_first_region, word_mask
from .token_inputs import TokenInputs

log = logging.getLogger("aladin")


class CodebookHead(TokenInputs):
    """``embed_images(batch) -> (B, K)`` region maxima per code, ``embed_texts(batch) -> (B, K)`` code counts."""

    Config = CodebookConfig

    def __init__(self, cfg: Config, d_img: int, d_txt: int, token_encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.cfg, self.d_img, self.d_txt, self.dim = cfg, d_img, d_txt, cfg.codes
        d, _ = self.init_token_inputs("teacher_tokens", token_encoder, d_img, d_txt)
        self.codes = nn.Parameter(F.normalize(torch.randn(cfg.codes, d), dim=-1))     # (K, d); fit_codes sets them

    def unit_codes(self) -> torch.Tensor:
        return F.normalize(self.codes, dim=-1)

    def embed_images(self, batch: Batch) -> torch.Tensor:
        r = pad_with_first_region(*self.token_encoder.embed_images(batch))   # (B, R, d) unit; padding never wins
        return torch.einsum("brd,kd->brk", r, self.unit_codes()).amax(dim=1)   # (B, K)

    def word_codes(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) index of each token's nearest code and the (B, L) mask of the words the teacher sums."""
        w, mask = self.token_encoder.embed_texts(batch)                    # (B, L, d) unit, (B, L)
        nearest = torch.einsum("bld,kd->blk", w, self.unit_codes()).argmax(dim=-1)
        return nearest, word_mask(mask, self.token_encoder.cfg.words)

    def embed_texts(self, batch: Batch) -> torch.Tensor:
        nearest, words = self.word_codes(batch)
        counts = torch.zeros(nearest.shape[0], self.dim, device=nearest.device)
        return counts.scatter_add_(1, nearest, words.to(counts.dtype))   # (B, K)

    def forward(self, batch: Batch) -> torch.Tensor:
        """(B_img, B_cap) scores between the batch's images and captions."""
        return self.embed_images(batch) @ self.embed_texts(batch).T

    @torch.no_grad()
    def fit_codes(self, store: FeatureStore, seed: int, batch_size: int = 512) -> None:
        """Codes <- spherical k-means (faiss, seeded) of the teacher's word vectors of `store`'s captions."""
        words = []
        for lo in tqdm(range(0, store.n_captions, batch_size), desc="codebook: word vectors", unit="batch",
                       leave=False):
            batch = store.caption_batch(np.arange(lo, min(lo + batch_size, store.n_captions)))
            w, mask = self.token_encoder.embed_texts(batch.to(self.codes.device))
            words.append(w[word_mask(mask, self.token_encoder.cfg.words)].float().cpu().numpy())
        x = np.ascontiguousarray(np.concatenate(words), dtype=np.float32)
        if len(x) < self.dim:
            raise ConfigError(f"distill.codebook.codes: {self.dim} codes need at least as many word vectors; "
                              f"the captions of {store.path} have {len(x)}")
        log.info("codebook: k-means of %d word vectors into %d codes", len(x), self.dim)
        kmeans = faiss.Kmeans(x.shape[1], self.dim, niter=self.cfg.kmeans_iters, seed=seed, spherical=True)
        kmeans.train(x)
        self.codes.copy_(torch.from_numpy(kmeans.centroids).to(self.codes))
