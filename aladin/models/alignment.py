"""The alignment head (teacher): images and captions encoded separately into token sequences,
scored by the region x word cosine matrix (TERAN / ALADIN).

Image side: region vector (D_img) and box geometry (6) -> width d -> transformer encoder.
Text side: contextual word-piece vectors (D_txt) -> width d -> transformer encoder.
Every output token is L2-normalised, so region x word dot products are cosines.
"""
from __future__ import annotations


import torch
from torch import nn
import torch.nn.functional as F

from ..params import AlignmentConfig
from .scoring import SCORE_CHUNK_MB, alignment_scores, paired_alignment_scores, score_embeddings
from ..store import Batch


class Encoder(nn.Module):
    """Linear projection to width d, then pre-norm transformer layers over the valid tokens."""

    def __init__(self, d_in: int, cfg: AlignmentConfig) -> None:
        super().__init__()
        self.proj = nn.Linear(d_in, cfg.d)
        layer = nn.TransformerEncoderLayer(cfg.d, cfg.heads, cfg.ff, cfg.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        # No nested-tensor fast path: outputs must not depend on how much padding a batch has.
        self.layers = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False) if cfg.layers else None
        self.norm = nn.LayerNorm(cfg.d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)                                           # (B, T, d)
        if self.layers is not None:
            h = self.layers(h, src_key_padding_mask=~mask)
        return F.normalize(self.norm(h), dim=-1)


class AlignmentModel(nn.Module):
    Config = AlignmentConfig

    def __init__(self, cfg: AlignmentConfig, d_img: int, d_txt: int) -> None:
        super().__init__()
        self.cfg, self.d_img, self.d_txt = cfg, d_img, d_txt
        self.image_encoder = Encoder(d_img + 6, cfg)
        self.text_encoder = Encoder(d_txt, cfg)

    def embed_images(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, R, d) unit region vectors and the (B, R) valid-region mask."""
        x = torch.cat([batch.regions, batch.boxes], dim=-1)      # (B, R, D_img + 6)
        return self.image_encoder(x, batch.region_mask), batch.region_mask

    def embed_texts(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, d) unit word vectors and the (B, L) valid-word mask."""
        return self.text_encoder(batch.tokens, batch.token_mask), batch.token_mask

    def score(self, img: torch.Tensor, img_mask: torch.Tensor, cap: torch.Tensor,
              cap_mask: torch.Tensor, chunk_mb: float = SCORE_CHUNK_MB) -> torch.Tensor:
        """(N_img, N_cap) alignment scores of embedded images x embedded captions.

        `cap_mask` is the valid-token mask (as embed_texts returns it); cfg.words picks the
        words summed over, so every caller scores with the checkpoint's word set.

        Differentiable when gradients are on; otherwise the cache-blocked scorer (same values).
        """
        if torch.is_grad_enabled() and (img.requires_grad or cap.requires_grad):
            return alignment_scores(img, img_mask, cap, cap_mask, self.cfg.pooling, self.cfg.temperature,
                                    self.cfg.words)
        return score_embeddings(img, img_mask, [(cap, cap_mask)], self.cfg.pooling, self.cfg.temperature,
                                chunk_mb, progress=False, words=self.cfg.words)

    def score_pairs(self, img: torch.Tensor, img_mask: torch.Tensor, cap: torch.Tensor,
                    cap_mask: torch.Tensor) -> torch.Tensor:
        """(B,) alignment scores of aligned rows: embedded image img[b] with embedded caption cap[b]."""
        return paired_alignment_scores(img, img_mask, cap, cap_mask, self.cfg.pooling, self.cfg.temperature,
                                       self.cfg.words)

    def forward(self, batch: Batch) -> torch.Tensor:
        """In-batch (B, B) score matrix of a pair batch: images as rows, captions as columns."""
        return self.score(*self.embed_images(batch), *self.embed_texts(batch))
