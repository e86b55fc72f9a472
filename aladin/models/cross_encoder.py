"""The cross-encoder: a joint model per image-text pair, the cross-attention row ALADIN is measured against.

Beyond the per-item token projections nothing can be computed per item: scoring a query against
N items costs N fusion passes, which is what makes a cross-encoder slow. Two fusions (``fusion``):

- ``transformer`` (VinVL / Oscar, shrunk to fit a CPU): region tokens (region vector + 6-d box)
  and word tokens, with a modality (type) embedding, are concatenated behind a [CLS] token into ONE
  transformer; a linear head on the [CLS] output gives the pair's match logit. Every token sees
  every other, so words attend to regions that carry their box geometry.
- ``grounding`` (:class:`Grounding`), which learns on a CPU budget. The teacher cannot check a
  relation ("the orange shape is below the green ball"): MrSw matches every word to its best
  region on its own. Grounding keeps the teacher's word-to-region attention and adds what MrSw
  drops: where each word landed. Every word reads the places of the words around it, and a query
  from its backbone feature (contextual, so "below" knows which phrases it relates) scores them.

With ``inputs: teacher_tokens`` the fusion reads the frozen teacher encoders' contextual region
and word embeddings instead of the raw features (ALBEF / BLIP build their matchers on unimodal
encoders the same way); the encoders are part of the checkpoint and never trained here.

With ``residual: true`` the pair's score is the teacher's alignment score plus the fusion's
logit, which starts at zero (the transformer's head, the grounding queries): at step 0 the model
ranks exactly as the teacher, and training learns a correction (BLIP ranks by ITM logit +
first-stage similarity; a fusion model from random weights on a CPU budget stays near chance).
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


def box_centres(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 6) boxes (x1, y1, x2, y2, w, h in image fractions) -> (..., 2) centres, image centre at 0."""
    return (boxes[..., :2] + boxes[..., 2:4]) / 2 - 0.5


class Grounding(nn.Module):
    """Places of words, read by their neighbours: the residual that checks relations and locations.

    Word t attends to the regions by the teacher's cosines: a_t = softmax_r(<w_t, r> / temperature).
    Its place is p_t = sum_r a_t(r) centre(r), and its sharpness is m_t = max_r a_t(r). It reads
    three places: the m-weighted mean place of the `before` words just before it, of the `after`
    words just after it, and its own. Its query q_t (6 numbers, a linear map of the backbone's
    word feature) scores them. logit = sum_t <q_t, places_t>. The queries start at zero.
    """

    def __init__(self, d_txt: int, temperature: float, before: int, after: int) -> None:
        super().__init__()
        self.temperature, self.before, self.after = temperature, before, after
        self.query = nn.Linear(d_txt, 6)
        nn.init.zeros_(self.query.weight)
        nn.init.zeros_(self.query.bias)

    def forward(self, regions: torch.Tensor, img_mask: torch.Tensor, centres: torch.Tensor,
                words: torch.Tensor, queries: torch.Tensor, txt_mask: torch.Tensor) -> torch.Tensor:
        # regions (B, R, d), centres (B, R, 2); words (B, L, d), queries (B, L, 6); masks True = real.
        sim = words @ regions.transpose(1, 2)                                            # (B, L, R)
        attn = torch.softmax((sim / self.temperature).masked_fill(~img_mask[:, None, :], -1e9), -1)
        place = attn @ centres                                                           # (B, L, 2)
        sharp = attn.amax(-1) * txt_mask                                                 # (B, L)
        t = torch.arange(words.shape[1], device=words.device)
        offset = t[None, :] - t[:, None]                                                 # (L, L): u - t
        places = [place]
        for window in ((offset < 0) & (offset >= -self.before), (offset > 0) & (offset <= self.after)):
            weight = window * sharp[:, None, :]                                          # (B, L, L)
            places.append(weight @ place / weight.sum(-1, keepdim=True).clamp_min(1e-6))
        reads = torch.cat(places[1:] + places[:1], -1)                                   # (B, L, 6)
        return ((queries * reads).sum(-1) * txt_mask).sum(-1)


class CrossEncoder(TokenInputs):
    """``embed_images`` / ``embed_texts`` project items once; ``joint`` scores aligned pairs of them."""

    Config = CrossEncoderConfig

    def __init__(self, cfg: Config, d_img: int, d_txt: int, token_encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.cfg, self.d_img, self.d_txt = cfg, d_img, d_txt
        d_regions, d_words = self.init_token_inputs(cfg.inputs, token_encoder, d_img, d_txt)
        if cfg.fusion == "grounding":
            self.grounding = Grounding(d_txt, cfg.ground_temperature, cfg.before, cfg.after)
            return
        d = cfg.width
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

    # Per-item token projections: the only work that can be shared across pairs. Each token carries
    # what joint() needs of it, so that every caller indexing (tokens, mask) rows hands it over:
    # transformer: the projected token (first `width` dims), then the teacher's (residual);
    # grounding: the teacher's token, then the region's centre (2) or the word's query (6).
    def _tokens(self, x: torch.Tensor, teacher_tokens: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, teacher_tokens], dim=-1) if self.cfg.residual else x

    def embed_images(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, R, D) region tokens and the (B, R) validity mask (layout: see _tokens)."""
        regions = self.region_inputs(batch)
        if self.cfg.fusion == "grounding":
            return torch.cat([regions, box_centres(batch.boxes)], -1), batch.region_mask
        x = self.ln_img(self.region_proj(regions) + self.box_proj(batch.boxes)) + self.type_emb.weight[IMAGE]
        return self._tokens(x, regions), batch.region_mask

    def embed_texts(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, D) word tokens and the (B, L) validity mask (layout: see _tokens)."""
        words = self.word_inputs(batch)
        if self.cfg.fusion == "grounding":
            return torch.cat([words, self.grounding.query(batch.tokens)], -1), batch.token_mask
        x = self.ln_txt(self.word_proj(words)) + self.type_emb.weight[TEXT]
        return self._tokens(x, words), batch.token_mask

    def joint(self, img: torch.Tensor, img_mask: torch.Tensor,
              txt: torch.Tensor, txt_mask: torch.Tensor) -> torch.Tensor:
        """Match logits (B,) of aligned rows: image tokens img[b] with word tokens txt[b]."""
        if self.cfg.fusion == "grounding":
            regions, words = img[..., :-2], txt[..., :-6]
            logit = self.grounding(regions, img_mask, img[..., -2:], words, txt[..., -6:], txt_mask)
        else:
            b, d = img.shape[0], self.cfg.width
            x = torch.cat([self.cls.expand(b, -1, -1), img[..., :d], txt[..., :d]], dim=1)   # (B, 1+R+L, d)
            mask = torch.cat([img_mask.new_ones(b, 1), img_mask, txt_mask], dim=1)
            x = self.drop(x)
            for block in self.blocks:
                x = block(x, mask)
            logit = self.head(self.ln_f(x[:, 0])).squeeze(-1)
            regions, words = img[..., d:], txt[..., d:]
        if not self.cfg.residual:
            return logit
        return self.token_encoder.score_pairs(regions, img_mask, words, txt_mask) + logit
