"""The cross-attention baseline: one joint vision-language transformer per image-text pair.

This is the kind of model ALADIN is measured against (VinVL / Oscar, shrunk to fit a CPU): region
tokens (region vector + 6-d box) and word tokens, projected from the same frozen features as the
teacher and student, are concatenated behind a [CLS] token, with a modality (type) embedding, into
ONE transformer; a linear head on the [CLS] output gives the pair's match logit. Every token sees
every other, so beyond the input projections nothing can be computed per item: scoring a query
against N items costs N transformer passes, which is what makes it accurate and slow.

With ``inputs: teacher_tokens`` the fusion layers read the frozen teacher encoders' contextual
region and word embeddings instead of the raw features (ALBEF / BLIP build their matchers on
unimodal encoders the same way); the encoders are part of the checkpoint and never trained here.

With ``residual: true`` the pair's score is the teacher's alignment score plus the fusion head,
whose last layer starts at zero: at step 0 the model ranks exactly as the teacher, and training
learns a correction (BLIP ranks by ITM logit + first-stage similarity; a fusion model from random
weights on a CPU budget stays near chance). The word tokens attend to region tokens that carry
their box geometry, so a correction can tie an attribute word and its noun to one region.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from ..params import CrossEncoderConfig
from ..store import Batch
from .token_inputs import TokenInputs

IMAGE, TEXT = 0, 1  # modality (type) ids


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # x: (B, T, d); mask: (B, T) bool, True = real token. Padded keys are never attended to.
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :],
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-norm transformer block (attention + MLP, each residual)."""

    def __init__(self, width: int, heads: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(width, ff), nn.GELU(), nn.Linear(ff, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), mask))
        return x + self.drop(self.mlp(self.ln2(x)))


class CrossEncoder(TokenInputs):
    """``embed_images`` / ``embed_texts`` project items once; ``joint`` scores aligned pairs of them."""

    Config = CrossEncoderConfig

    def __init__(self, cfg: Config, d_img: int, d_txt: int, token_encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.cfg, self.d_img, self.d_txt = cfg, d_img, d_txt
        d = cfg.width
        d_regions, d_words = self.init_token_inputs(cfg.inputs, token_encoder, d_img, d_txt)
        self.region_proj = nn.Linear(d_regions, d)
        self.box_proj = nn.Linear(6, d)
        self.word_proj = nn.Linear(d_words, d)
        self.ln_img, self.ln_txt = nn.LayerNorm(d), nn.LayerNorm(d)
        self.type_emb = nn.Embedding(2, d)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(d, cfg.heads, cfg.ff, cfg.dropout) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, 1)
        if cfg.residual:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    # Per-item token projections: the only work that can be shared across pairs. With `residual`
    # each token also carries the teacher's own token (last dims), so that every caller indexing
    # (tokens, mask) rows hands joint() what the teacher's score needs.
    def _tokens(self, x: torch.Tensor, teacher_tokens: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, teacher_tokens], dim=-1) if self.cfg.residual else x

    def embed_images(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, R, d) region tokens with their type embedding (+ the teacher's), and the (B, R) validity mask."""
        regions = self.region_inputs(batch)
        x = self.ln_img(self.region_proj(regions) + self.box_proj(batch.boxes)) + self.type_emb.weight[IMAGE]
        return self._tokens(x, regions), batch.region_mask

    def embed_texts(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, d) word tokens with their type embedding (+ the teacher's), and the (B, L) validity mask."""
        words = self.word_inputs(batch)
        x = self.ln_txt(self.word_proj(words)) + self.type_emb.weight[TEXT]
        return self._tokens(x, words), batch.token_mask

    def joint(self, img: torch.Tensor, img_mask: torch.Tensor,
              txt: torch.Tensor, txt_mask: torch.Tensor) -> torch.Tensor:
        """Match logits (B,) of aligned rows: image tokens img[b] with word tokens txt[b]."""
        b, d = img.shape[0], self.cfg.width
        x = torch.cat([self.cls.expand(b, -1, -1), img[..., :d], txt[..., :d]], dim=1)   # (B, 1+R+L, d)
        mask = torch.cat([img_mask.new_ones(b, 1), img_mask, txt_mask], dim=1)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, mask)
        logit = self.head(self.ln_f(x[:, 0])).squeeze(-1)
        if not self.cfg.residual:
            return logit
        return self.token_encoder.score_pairs(img[..., d:], img_mask, txt[..., d:], txt_mask) + logit
