"""The cross-attention baseline: one joint vision-language transformer per image-text pair.

This is the kind of model ALADIN is measured against (VinVL / Oscar, shrunk to fit a CPU): region
tokens (region vector + 6-d box) and word tokens, projected from the same frozen features as the
teacher and student, are concatenated behind a [CLS] token, with a modality (type) embedding, into
ONE transformer; a linear head on the [CLS] output gives the pair's match logit. Every token sees
every other, so beyond the input projections nothing can be computed per item: scoring a query
against N items costs N transformer passes, which is what makes it accurate and slow.
"""
from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..params import CrossEncoderConfig
from ..errors import DataError
from ..store import Batch

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


class CrossEncoder(nn.Module):
    """``score_pairs(batch) -> (B,)`` logits; ``score_matrix(images, captions) -> (N_img, N_cap)``."""

    Config = CrossEncoderConfig

    def __init__(self, cfg: Config, d_img: int, d_txt: int) -> None:
        super().__init__()
        self.cfg, self.d_img, self.d_txt = cfg, d_img, d_txt
        d = cfg.width
        self.region_proj = nn.Linear(d_img, d)
        self.box_proj = nn.Linear(6, d)
        self.word_proj = nn.Linear(d_txt, d)
        self.ln_img, self.ln_txt = nn.LayerNorm(d), nn.LayerNorm(d)
        self.type_emb = nn.Embedding(2, d)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(d, cfg.heads, cfg.ff, cfg.dropout) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, 1)

    # Per-item token projections: the only work that can be shared across pairs.
    def embed_images(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, R, d) region tokens with their type embedding, and the (B, R) validity mask."""
        x = self.region_proj(batch.regions) + self.box_proj(batch.boxes)
        return self.ln_img(x) + self.type_emb.weight[IMAGE], batch.region_mask

    def embed_texts(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, d) word tokens with their type embedding, and the (B, L) validity mask."""
        return self.ln_txt(self.word_proj(batch.tokens)) + self.type_emb.weight[TEXT], batch.token_mask

    def joint(self, img: torch.Tensor, img_mask: torch.Tensor,
              txt: torch.Tensor, txt_mask: torch.Tensor) -> torch.Tensor:
        """Match logits (B,) of aligned rows: image tokens img[b] with word tokens txt[b]."""
        b = img.shape[0]
        x = torch.cat([self.cls.expand(b, -1, -1), img, txt], dim=1)              # (B, 1+R+L, d)
        mask = torch.cat([img_mask.new_ones(b, 1), img_mask, txt_mask], dim=1)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.ln_f(x[:, 0])).squeeze(-1)

    def score_pairs(self, batch: Batch) -> torch.Tensor:
        """Match logits (B,) of the aligned image/caption rows of a pair batch."""
        return self.joint(*self.embed_images(batch), *self.embed_texts(batch))

    def score_index_pairs(self, img: tuple[torch.Tensor, torch.Tensor], txt: tuple[torch.Tensor, torch.Tensor],
                          image_rows: torch.Tensor, caption_rows: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """Logits (P,) of arbitrary pairs (img row image_rows[p], caption row caption_rows[p]).

        `img` / `txt` are the outputs of embed_images / embed_texts, so each item is projected
        once however many pairs it is in; pairs run through the transformer `chunk` at a time.
        """
        (it, im), (tt, tm) = img, txt
        out = []
        for s in range(0, len(image_rows), chunk):
            i, c = image_rows[s:s + chunk], caption_rows[s:s + chunk]
            out.append(self.joint(it[i], im[i], tt[c], tm[c]))
        return torch.cat(out) if out else it.new_zeros(0)

    def score_matrix(self, images: Batch, captions: Batch, chunk: int = 4096) -> torch.Tensor:
        """(N_img, N_cap) logits of every image against every caption (N_img * N_cap passes)."""
        img, txt = self.embed_images(images), self.embed_texts(captions)
        n_img, n_cap = img[0].shape[0], txt[0].shape[0]
        i, c = torch.meshgrid(torch.arange(n_img, device=img[0].device),
                              torch.arange(n_cap, device=img[0].device), indexing="ij")
        return self.score_index_pairs(img, txt, i.reshape(-1), c.reshape(-1), chunk).view(n_img, n_cap)


def sample_negatives(image_index: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(B, n) distinct batch rows whose image differs from row b's image, uniformly drawn.

    Rows sharing an image (two captions of one image in the batch) are never negatives. Fewer
    than n columns come back when some row has fewer than n wrong images in the batch.
    """
    image_index = np.asarray(image_index)
    wrong = image_index[None, :] != image_index[:, None]                    # (B, B)
    keys = np.where(wrong, rng.random(wrong.shape), -1.0)                   # wrong rows sort first
    n = min(n, int(wrong.sum(axis=1).min()))
    return np.argsort(-keys, axis=1)[:, :n]


def mined_pair_logits(model: CrossEncoder, batch: Batch, n_candidates: int,
                      rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and 0/1 labels for a pair batch: B positives, B hard and B random negatives.

    Hard negative of caption b: the highest-scoring (under the current model, no gradient) of
    `n_candidates` random wrong images of the batch; the random negative is one more wrong image,
    distinct from those candidates. Scoring every image of the batch would cost B^2 passes.
    """
    b = batch.tokens.shape[0]
    img, txt = model.embed_images(batch), model.embed_texts(batch)
    cand = torch.as_tensor(sample_negatives(batch.image_index.cpu().numpy(), n_candidates + 1, rng),
                           device=img[0].device)                           # (B, n_candidates + 1)
    if cand.shape[1] < 2:
        raise DataError("cross.batch_size: a training batch needs at least two wrong images per caption")
    mine, rand = cand[:, :-1], cand[:, -1]
    rows = torch.arange(b, device=cand.device)
    with torch.no_grad():
        detached = [tuple(t.detach() for t in img), tuple(t.detach() for t in txt)]
        s = model.score_index_pairs(*detached, mine.reshape(-1), rows.repeat_interleave(mine.shape[1]))
    hard = mine.gather(1, s.view(b, -1).argmax(dim=1, keepdim=True)).squeeze(1)
    neg = model.score_index_pairs(img, txt, torch.cat([hard, rand]), torch.cat([rows, rows]))
    logits = torch.cat([model.joint(*img, *txt), neg])
    labels = torch.cat([torch.ones(b), torch.zeros(2 * b)]).to(logits.device)
    return logits, labels
