"""What the cross-encoder trains on: each pair's positive against hard negatives in both directions.

VinVL's retrieval fine-tuning swaps the caption of a pair half the time and the image the other
half; ALBEF / BLIP mine the swapped item among a first-stage model's best candidates. Here every
training pair (caption c, image i) gives two lists, each scored by the joint transformer:

- caption c against [i, wrong images]: the text -> image ranking;
- image i against [c, wrong captions]: the image -> text ranking.

The wrong items are `hard` draws from the teacher's top-`pool` wrong candidates of the query
(aladin.training.batching.teacher_candidates) plus `random` uniform draws over all wrong items, and the
loss is the softmax cross-entropy of each list with the positive first (losses.list_softmax_loss).
"""
from __future__ import annotations

import numpy as np
import torch

from ..models.cross_encoder import CrossEncoder
from ..store import Batch, FeatureStore
from .batching import Candidates
from .losses import list_softmax_loss


def draw_negatives(pool: np.ndarray, queries: np.ndarray, hard: int, random: int, n_items: int,
                   is_positive, rng: np.random.Generator) -> np.ndarray:
    """(Q, hard + random) wrong items per query: `hard` distinct picks from its row of `pool`
    (candidates, best first) and `random` uniform picks over all `n_items`, redrawn until
    ``is_positive(queries, items)`` (elementwise, broadcast) is False everywhere."""
    rows = pool[queries]                                                     # (Q, P)
    picks = np.argsort(rng.random(rows.shape), axis=1)[:, :hard]             # distinct columns
    out = [np.take_along_axis(rows, picks, 1)]
    if random:
        draw = rng.integers(0, n_items, (len(queries), random))
        bad = is_positive(queries[:, None], draw)
        while bad.any():
            draw[bad] = rng.integers(0, n_items, int(bad.sum()))
            bad = is_positive(queries[:, None], draw)
        out.append(draw)
    return np.concatenate(out, axis=1)


def list_logits(model: CrossEncoder, store: FeatureStore, captions: np.ndarray, candidates: Candidates,
                hard: int, random: int, rng: np.random.Generator,
                device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of the two lists of each training pair (caption `captions[b]`, its image).

    Returns (t2i (B, 1+n), i2t (B, 1+n)): column 0 the positive, then the negatives; n = hard + random.
    """
    caption_image = np.asarray(store.caption_image)
    images = caption_image[captions]
    neg_img = draw_negatives(candidates.images, captions, hard, random, store.n_images,
                             lambda c, i: caption_image[c] == i, rng)        # per caption: wrong images
    neg_cap = draw_negatives(candidates.captions, images, hard, random, store.n_captions,
                             lambda i, c: caption_image[c] == i, rng)        # per image: wrong captions
    b, n = len(captions), neg_img.shape[1]
    img = model.embed_images(store.image_batch(np.concatenate([images, neg_img.ravel()])).to(device))
    txt = model.embed_texts(store.caption_batch(np.concatenate([captions, neg_cap.ravel()])).to(device))
    own = torch.arange(b, device=img[0].device)[:, None]                     # (B, 1): the pair's row
    others = b + torch.arange(b * n, device=own.device).view(b, n)           # (B, n): its negatives' rows
    lists = torch.cat([own, others], 1).reshape(-1)                          # (B * (1+n),)
    fixed = own.expand(b, 1 + n).reshape(-1)

    def score(img_rows: torch.Tensor, cap_rows: torch.Tensor) -> torch.Tensor:
        return model.joint(img[0][img_rows], img[1][img_rows], txt[0][cap_rows], txt[1][cap_rows]).view(b, 1 + n)
    return score(lists, fixed), score(fixed, lists)


class CrossLoss:
    """loss_fn(cross-encoder, pair batch) -> (loss, logs) for :func:`aladin.training.loop.fit`: the
    listwise softmax loss of both lists of every pair, averaged over the two directions."""

    def __init__(self, store: FeatureStore, candidates: Candidates, hard: int, random: int,
                 device: torch.device | str) -> None:
        self.store, self.candidates, self.hard, self.random, self.device = store, candidates, hard, random, device

    def __call__(self, model: CrossEncoder, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        # Negatives drawn from torch's RNG, which fit reseeds every epoch: a resumed run redraws the same.
        rng = np.random.default_rng(int(torch.randint(2**62, ())))
        t2i, i2t = list_logits(model, self.store, batch.caption_index.cpu().numpy(), self.candidates,
                               self.hard, self.random, rng, self.device)
        loss_t2i, loss_i2t = list_softmax_loss(t2i), list_softmax_loss(i2t)
        return (loss_t2i + loss_i2t) / 2, {"loss_t2i": loss_t2i.item(), "loss_i2t": loss_i2t.item()}
