"""The matching head (student): one L2-normalised global vector per image and per caption.

Region vectors (+ their 6-d boxes) and token vectors are projected to ``d_model`` by
modality-specific input projections, contextualised by a small transformer encoder, pooled to
one vector, projected to ``dim`` and L2-normalised. The image-caption score is the dot product,
so retrieval over a collection is an exact or approximate kNN search.

With ``inputs: teacher_tokens`` the head reads, instead of the backbone features, the frozen
teacher's contextual region and word embeddings (its two encoders are part of the student and of
its checkpoint, never trained here): in ALADIN the matching head sits on the backbone that the
alignment stage fine-tuned, next to the alignment head.

Reference (ALADIN): 2 layers, d_model 768, 4 heads, feed-forward 768, dropout 0.1, one encoder
shared by both modalities. The sizes here are parameters (the CPU default is smaller).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..params import MatchingConfig, Pooling
from ..store import Batch
from .token_inputs import TokenInputs


class Pool(nn.Module):
    """Sequence (B, L, d) + validity mask (B, L) -> (B, d)."""

    def __init__(self, d_model: int, pooling: Pooling) -> None:
        super().__init__()
        self.pooling = pooling
        # Attention pooling: a learned scoring of each position, softmax over the valid ones.
        self.score = nn.Linear(d_model, 1) if pooling == "attention" else None

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "first":
            return h[:, 0]
        if self.pooling == "mean":
            m = mask.unsqueeze(-1).to(h.dtype)
            return (h * m).sum(1) / m.sum(1).clamp_min(1.0)
        w = self.score(h).squeeze(-1).masked_fill(~mask, float("-inf")).softmax(dim=1)  # (B, L)
        return torch.einsum("bl,bld->bd", w, h)


class Tower(nn.Module):
    """Transformer encoder + pooling + output projection; shared by both modalities or not."""

    def __init__(self, d_model: int, layers: int, heads: int, ff: int, dropout: float,
                 pooling: Pooling, dim: int) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model, heads, ff, dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.pool = Pool(d_model, pooling)
        self.out = nn.Linear(d_model, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x, src_key_padding_mask=~mask)
        return F.normalize(self.out(self.pool(h, mask)), dim=-1)


class MatchingHead(TokenInputs):
    """The student. ``embed_images(batch) -> (B, dim)``, ``embed_texts(batch) -> (B, dim)``."""

    Config = MatchingConfig

    def __init__(self, cfg: Config, d_img: int, d_txt: int, token_encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.cfg, self.d_img, self.d_txt, self.dim = cfg, d_img, d_txt, cfg.dim
        d = cfg.d_model
        d_regions, d_tokens = self.init_token_inputs(cfg.inputs, token_encoder, d_img, d_txt)
        self.region_proj = nn.Linear(d_regions, d)
        self.box_proj = nn.Linear(6, d)
        self.token_proj = nn.Linear(d_tokens, d)
        self.img_norm = nn.LayerNorm(d)
        self.txt_norm = nn.LayerNorm(d)
        # Images have no [CLS]; with `first` pooling they get a learned one. Captions already
        # start with the text backbone's [CLS] token.
        self.img_cls = nn.Parameter(torch.randn(1, 1, d) * 0.02) if cfg.pooling == "first" else None
        self.towers = nn.ModuleList(
            Tower(d, cfg.layers, cfg.heads, cfg.ff, cfg.dropout, cfg.pooling, cfg.dim)
            for _ in range(1 if cfg.shared else 2))

    @property
    def img_tower(self) -> Tower:
        return self.towers[0]

    @property
    def txt_tower(self) -> Tower:
        return self.towers[-1]

    def embed_images(self, batch: Batch) -> torch.Tensor:
        x = self.img_norm(self.region_proj(self.region_inputs(batch)) + self.box_proj(batch.boxes))       # (B, R, d)
        mask = batch.region_mask
        if self.img_cls is not None:
            x = torch.cat([self.img_cls.expand(x.shape[0], -1, -1), x], dim=1)      # (B, 1+R, d)
            mask = torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)
        return self.img_tower(x, mask)

    def embed_texts(self, batch: Batch) -> torch.Tensor:
        return self.txt_tower(self.txt_norm(self.token_proj(self.word_inputs(batch))), batch.token_mask)

    def forward(self, batch: Batch) -> torch.Tensor:
        """(B_img, B_cap) cosine scores between the batch's images and captions."""
        return self.embed_images(batch) @ self.embed_texts(batch).T
