"""What the cross-encoder trains on: each pair's positive against clean negatives in both directions,
drawn from the lists it will re-rank.

The cross-encoder re-ranks the student's top-k at test time, so every training pair (caption c,
image i) gives the two lists it will see, each scored by the joint transformer:

- caption c against [i, wrong images]: the text -> image ranking;
- image i against [c, wrong captions]: the image -> text ranking.

The wrong items come from the student's top-`pool` list of the query (:func:`student_lists`),
sampled ALBEF-style from the softmax of the teacher's scores over the list (not its top: the best
scored "negatives" are often true), plus `random` uniform draws over all items. They are clean:

- scenes data: no negative is a pair the caption parser finds true (:func:`aladin.data.oracle.oracle_truth`);
  23.9% of the teacher's top-16 "negatives" are true of their caption there;
- real data (no parser): no caption of the query's own image, and (NV-Retriever) only list items the
  teacher scores below ``margin`` x the positive pair's score.

The loss is the softmax cross-entropy of each list with the positive first (losses.list_softmax_loss),
at the same temperature as the sampling.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..models.cross_encoder import CrossEncoder
from ..retrieval.encode import encode_images, encode_texts
from ..retrieval.index import exact_topk
from ..retrieval.store_scores import score_store_pairs
from ..store import Batch, FeatureStore
from .losses import list_softmax_loss

IsTrue = Callable[[np.ndarray, np.ndarray], np.ndarray]   # (image ids, caption ids) -> bool, broadcast


@dataclass(frozen=True)
class Pool:
    """Per query, the first stage's candidate list with the teacher's scores and the verdicts."""

    items: np.ndarray    # (Q, P) int64 store ids, the student's best first
    scores: np.ndarray   # (Q, P) float32: the teacher's score of (query, item)
    true: np.ndarray     # (Q, P) bool: the item is a positive of the query (Negatives.is_true)


@dataclass(frozen=True)
class Negatives:
    """Where a training pair's negatives come from, and what must never be one."""

    images: Pool              # per caption
    captions: Pool            # per image
    positive: np.ndarray      # (N_cap,) the teacher's score of each caption with its own image
    is_true: IsTrue           # the parser's verdict or the same image (scenes); the same image (real data)
    oracle: bool              # is_true holds the parser's verdicts: no teacher-margin filter needed


def student_lists(student: torch.nn.Module, store: FeatureStore, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The student's exact top-k: images per caption (N_cap, k) and captions per image (N_img, k)."""
    img, cap = encode_images(student, store), encode_texts(student, store)
    return exact_topk(img, cap, min(k, store.n_images)), exact_topk(cap, img, min(k, store.n_captions))


def build_negatives(teacher: torch.nn.Module, store: FeatureStore, lists: tuple[np.ndarray, np.ndarray],
                    truth: np.ndarray | None, device: torch.device | str) -> Negatives:
    """Negatives over `lists` (:func:`student_lists`) with the teacher's scores; `truth` (N_img,
    N_cap) bool is the caption parser's verdict on the scenes data, None on real data."""
    caption_image = np.asarray(store.caption_image)
    own = truth is None
    if own:
        def is_true(i: np.ndarray, c: np.ndarray) -> np.ndarray:
            return caption_image[c] == i
    else:
        def is_true(i: np.ndarray, c: np.ndarray) -> np.ndarray:
            return truth[i, c] | (caption_image[c] == i)
    per_cap, per_img = lists
    cap_q = np.broadcast_to(np.arange(store.n_captions)[:, None], per_cap.shape)
    img_q = np.broadcast_to(np.arange(store.n_images)[:, None], per_img.shape)
    scores = score_store_pairs(teacher, store, np.concatenate([per_cap.ravel(), img_q.ravel(), caption_image]),
                               np.concatenate([cap_q.ravel(), per_img.ravel(), np.arange(store.n_captions)]), device)
    a, b = per_cap.size, per_cap.size + per_img.size
    return Negatives(images=Pool(per_cap, scores[:a].reshape(per_cap.shape), is_true(per_cap, cap_q)),
                     captions=Pool(per_img, scores[a:b].reshape(per_img.shape), is_true(img_q, per_img)),
                     positive=scores[b:], is_true=is_true, oracle=not own)


def softmax_draws(scores: np.ndarray, allowed: np.ndarray, n: int, temperature: float,
                  rng: np.random.Generator) -> np.ndarray:
    """(Q, n) columns drawn without replacement from softmax(scores / temperature) over each row's
    allowed entries; -1 where a row has fewer than n. Gumbel top-n: the n largest of scores / T +
    Gumbel noise are a draw of the successive softmax sampling (the first one: exactly the softmax)."""
    keys = np.where(allowed, scores / temperature + rng.gumbel(size=scores.shape), -np.inf)
    cols = np.argsort(-keys, axis=1, kind="stable")[:, :n]
    return np.where(np.take_along_axis(allowed, cols, 1), cols, -1)


def draw_list(pool: Pool, queries: np.ndarray, allowed: np.ndarray, hard: int, random: int, n_items: int,
              is_bad: Callable[[np.ndarray], np.ndarray], temperature: float, rng: np.random.Generator) -> np.ndarray:
    """(Q, hard + random) negatives: `hard` softmax draws from the allowed list entries, then
    uniform draws over all `n_items` for the rest (and for any list too short), redrawn until
    ``is_bad(draws)`` (elementwise) is False where they were drawn."""
    cols = softmax_draws(pool.scores[queries], allowed, hard, temperature, rng)
    listed = np.where(cols >= 0, np.take_along_axis(pool.items[queries], np.maximum(cols, 0), 1), -1)
    draws = np.concatenate([listed, np.full((len(queries), random), -1)], axis=1)
    todo = draws < 0
    while todo.any():
        draws[todo] = rng.integers(0, n_items, int(todo.sum()))
        todo &= is_bad(draws)
    return draws


def draw_negatives(neg: Negatives, store: FeatureStore, captions: np.ndarray, hard: int, random: int,
                   temperature: float, margin: float,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Wrong images per caption and wrong captions per image of the pairs (caption captions[b], its
    image), (B, hard + random) each, and what the cleaning did: ``pool_dropped``, the share of
    list entries excluded, and on the scenes data ``neg_false``, the share of drawn negatives the
    parser finds true (0 by construction: a check, logged per epoch)."""
    images = np.asarray(store.caption_image)[captions]
    ok_img, ok_cap = ~neg.images.true[captions], ~neg.captions.true[images]
    if not neg.oracle:                                   # NV-Retriever: far enough below the positive
        bar = margin * neg.positive[captions][:, None]
        ok_img &= neg.images.scores[captions] < bar
        ok_cap &= neg.captions.scores[images] < bar
    neg_img = draw_list(neg.images, captions, ok_img, hard, random, store.n_images,
                        lambda d: neg.is_true(d, captions[:, None]), temperature, rng)
    neg_cap = draw_list(neg.captions, images, ok_cap, hard, random, store.n_captions,
                        lambda d: neg.is_true(images[:, None], d), temperature, rng)
    logs = {"pool_dropped": 1.0 - (ok_img.mean() + ok_cap.mean()) / 2}
    if neg.oracle:
        logs["neg_false"] = float((neg.is_true(neg_img, captions[:, None]).mean()
                                   + neg.is_true(images[:, None], neg_cap).mean()) / 2)
    return neg_img, neg_cap, logs


def list_logits(model: CrossEncoder, store: FeatureStore, captions: np.ndarray, neg_img: np.ndarray,
                neg_cap: np.ndarray, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of the two lists of each training pair (caption `captions[b]`, its image).

    Returns (t2i (B, 1+n), i2t (B, 1+n)): column 0 the positive, then the negatives of
    `neg_img` / `neg_cap` (B, n).
    """
    images = np.asarray(store.caption_image)[captions]
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


def list_accuracy(logits: torch.Tensor) -> float:
    """Share of lists (Q, 1+n) whose positive (column 0) scores strictly above every negative."""
    return float((logits[:, 0] > logits[:, 1:].max(dim=1).values).float().mean())


class CrossLoss:
    """loss_fn(cross-encoder, pair batch) -> (loss, logs) for :func:`aladin.training.loop.fit`: the
    listwise softmax loss (scores / temperature) of both lists of every pair, averaged over the two
    directions; logs each direction's loss and list accuracy and the cleaning of the negatives."""

    def __init__(self, store: FeatureStore, negatives: Negatives, hard: int, random: int, temperature: float,
                 margin: float, device: torch.device | str) -> None:
        self.store, self.negatives, self.device = store, negatives, device
        self.hard, self.random, self.temperature, self.margin = hard, random, temperature, margin

    def __call__(self, model: CrossEncoder, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        # Negatives drawn from torch's RNG, which fit reseeds every epoch: a resumed run redraws the same.
        rng = np.random.default_rng(int(torch.randint(2**62, ())))
        captions = batch.caption_index.cpu().numpy()
        neg_img, neg_cap, logs = draw_negatives(self.negatives, self.store, captions, self.hard, self.random,
                                                self.temperature, self.margin, rng)
        t2i, i2t = list_logits(model, self.store, captions, neg_img, neg_cap, self.device)
        # The lists' softmax at the sampling's temperature: in teacher units, a residual's teacher
        # term differs by a few hundredths between candidates, which a softmax of raw scores ignores.
        loss_t2i, loss_i2t = list_softmax_loss(t2i / self.temperature), list_softmax_loss(i2t / self.temperature)
        return (loss_t2i + loss_i2t) / 2, {"loss_t2i": loss_t2i.item(), "loss_i2t": loss_i2t.item(),
                                           "acc_t2i": list_accuracy(t2i), "acc_i2t": list_accuracy(i2t), **logs}
