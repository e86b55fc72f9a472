"""What the cross-encoder trains on: the lists it will re-rank, in both directions, with clean labels.

The cross-encoder re-ranks the student's top-k at test time, so every training pair (caption c,
image i) gives the two lists it will see, each scored by the cross-encoder:

- caption c against the student's top-`pool` images of c, plus i: the text -> image ranking;
- image i against the student's top-`pool` captions of i, plus c: the image -> text ranking.

Each list also gets `random` uniform draws over all items. With `hard` > 0 its wrong items are
instead `hard` draws from the softmax of the teacher's scores over the list (ALBEF samples; its
top is often true). With :class:`FoilTexts` (scenes data), image i's list also holds the verified
foil of caption c: the same words as a true caption, bound wrongly (aladin.data.foils). The labels
are clean:

- scenes data: an item the caption parser finds true is a positive, never a negative
  (:func:`aladin.data.oracle.oracle_truth`). 23.9% of the teacher's top-16 "negatives" are true of
  their caption there.
- real data (no parser): the query's own image or captions are the positives. List items the
  teacher scores at or above ``margin`` x the positive pair's score are left out (NV-Retriever).

The loss is the multi-positive softmax cross-entropy of each list (losses.multi_positive_list_loss)
at `temperature`, averaged over the two directions. A single positive per list is worse: with the
other true items dropped, the head learns which images are rarely described, not what is false
(docs/RESULTS.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..data.foils import family_foils
from ..features.query import text_batch
from ..features.text import TextBackbone
from ..models.cross_encoder import CrossEncoder
from ..retrieval.encode import encode_images, encode_texts
from ..retrieval.index import exact_topk
from ..retrieval.store_scores import score_store_pairs
from ..store import Batch, FeatureStore
from .losses import multi_positive_list_loss

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


def query_lists(pool: Pool, queries: np.ndarray, own: np.ndarray, keep: np.ndarray, hard: int, random: int,
                n_items: int, is_true: Callable[[np.ndarray], np.ndarray], temperature: float,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Each query's list: (Q, W) items (-1 = empty slot) and (Q, W) labels (True = positive).

    Column 0 is the query's own item `own`, then the pool's other true items (more positives),
    then its wrong items that `keep` allows (all of them, or `hard` softmax draws), then `random`
    uniform draws that ``is_true(draws)`` rejects while they are true of their query.
    """
    items, true = pool.items[queries], pool.true[queries]
    others = np.where(true & (items != own[:, None]), items, -1)
    wrong = keep & ~true
    listed = (draw_list(pool, queries, wrong, hard, 0, n_items, is_true, temperature, rng) if hard > 0
              else np.where(wrong, items, -1))
    drawn = draw_list(pool, queries, wrong, 0, random, n_items, is_true, temperature, rng)
    lists = np.concatenate([own[:, None], others, listed, drawn], axis=1)
    labels = np.zeros(lists.shape, dtype=bool)
    labels[:, 0] = True
    labels[:, 1:1 + others.shape[1]] = others >= 0
    return lists, labels


def training_lists(neg: Negatives, store: FeatureStore, captions: np.ndarray, hard: int, random: int,
                   temperature: float, margin: float,
                   rng: np.random.Generator) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray],
                                                      dict[str, float]]:
    """The two lists of the pairs (caption captions[b], its image): ((t2i items, labels), (i2t items,
    labels)) as :func:`query_lists` gives them, and what the cleaning did: ``pool_dropped``, the
    share of list entries left out as too close to the positive (real data), and on the scenes
    data ``neg_false``, the share of negatives the parser finds true (0 by construction: a check,
    logged per epoch)."""
    images = np.asarray(store.caption_image)[captions]
    keep_img = np.ones(neg.images.items[captions].shape, dtype=bool)
    keep_cap = np.ones(neg.captions.items[images].shape, dtype=bool)
    if not neg.oracle:                                   # NV-Retriever: far enough below the positive
        bar = margin * neg.positive[captions][:, None]
        keep_img = neg.images.scores[captions] < bar
        keep_cap = neg.captions.scores[images] < bar
    t2i = query_lists(neg.images, captions, images, keep_img, hard, random, store.n_images,
                      lambda d: neg.is_true(d, captions[:, None]), temperature, rng)
    i2t = query_lists(neg.captions, images, captions, keep_cap, hard, random, store.n_captions,
                      lambda d: neg.is_true(images[:, None], d), temperature, rng)
    logs = {"pool_dropped": float(1.0 - (keep_img.mean() + keep_cap.mean()) / 2)}
    if neg.oracle:
        def false_share(items: np.ndarray, labels: np.ndarray, truth: np.ndarray) -> float:
            negative = (items >= 0) & ~labels
            return float((truth & negative).sum() / max(negative.sum(), 1))
        logs["neg_false"] = (false_share(*t2i, neg.is_true(np.maximum(t2i[0], 0), captions[:, None]))
                             + false_share(*i2t, neg.is_true(images[:, None], np.maximum(i2t[0], 0)))) / 2
    return t2i, i2t, logs


def list_logits(model: CrossEncoder, store: FeatureStore, images: np.ndarray, captions: np.ndarray,
                t2i_items: np.ndarray, i2t_items: np.ndarray, device: torch.device | str,
                foils: tuple[np.ndarray, Batch | None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of the two lists of each training pair (caption `captions[b]`, image `images[b]`):
    t2i (B, W) the caption against `t2i_items` (B, W) images, i2t (B, W') the image against
    `i2t_items` (B, W') captions; -inf at empty slots (-1). Each distinct item is embedded once.
    With `foils` = (has (B,) bool, the Batch of those foils in order, as :meth:`FoilTexts.batch`
    gives them), i2t gains a last column: image images[b] against its caption's foil, -inf where
    it has none."""
    img_ids, img_rows = np.unique(np.concatenate([images, np.maximum(t2i_items, 0).ravel()]), return_inverse=True)
    cap_ids, cap_rows = np.unique(np.concatenate([captions, np.maximum(i2t_items, 0).ravel()]), return_inverse=True)
    img = model.embed_images(store.image_batch(img_ids).to(device))
    txt = model.embed_texts(store.caption_batch(cap_ids).to(device))
    b = len(captions)

    def score(img_at: np.ndarray, cap_at: np.ndarray, empty: np.ndarray) -> torch.Tensor:
        i, c = torch.as_tensor(img_at.ravel(), device=img[0].device), torch.as_tensor(cap_at.ravel(), device=img[0].device)
        s = model.joint(img[0][i], img[1][i], txt[0][c], txt[1][c]).view(empty.shape)
        return s.masked_fill(torch.as_tensor(empty, device=s.device), float("-inf"))

    own_img, listed_img = img_rows[:b], img_rows[b:].reshape(t2i_items.shape)
    own_cap, listed_cap = cap_rows[:b], cap_rows[b:].reshape(i2t_items.shape)
    t2i = score(listed_img, np.broadcast_to(own_cap[:, None], t2i_items.shape), t2i_items < 0)
    i2t = score(np.broadcast_to(own_img[:, None], i2t_items.shape), listed_cap, i2t_items < 0)
    if foils is not None:
        has, batch = foils
        column = torch.full((b, 1), float("-inf"), device=i2t.device, dtype=i2t.dtype)
        if batch is not None:                            # the pair's image, already embedded, with the foil
            rows, foil = torch.as_tensor(own_img[has], device=img[0].device), model.embed_texts(batch.to(device))
            column[torch.as_tensor(has, device=i2t.device), 0] = model.joint(img[0][rows], img[1][rows], *foil).to(i2t.dtype)
        i2t = torch.cat([i2t, column], 1)
    return t2i, i2t


class FoilTexts:
    """Each training caption's verified foil (or None), encoded by the text backbone when a batch
    needs it: a foil is in no feature store. Caption j's foil depends on (seed, j) only."""

    def __init__(self, texts: list[str | None], backbone: TextBackbone) -> None:
        self.texts, self.backbone = texts, backbone

    @classmethod
    def for_store(cls, store: FeatureStore, records: list[dict], seed: int, backbone: TextBackbone) -> "FoilTexts":
        """The foils of every caption of `store`, whose images `records` (scenes.jsonl) describe."""
        foils = family_foils(store.captions, store.caption_image, records, seed)
        return cls([None if f is None else f.text for f in foils], backbone)

    @property
    def coverage(self) -> float:
        """Share of the captions that have a foil."""
        return sum(t is not None for t in self.texts) / max(len(self.texts), 1)

    def batch(self, captions: np.ndarray) -> tuple[np.ndarray, Batch | None]:
        """(B,) bool: caption captions[b] has a foil; the Batch of those foils in order (None if none)."""
        texts = [self.texts[c] for c in captions]
        has = np.array([t is not None for t in texts], dtype=bool)
        return has, text_batch(self.backbone, [t for t in texts if t is not None]) if has.any() else None


def list_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of lists (Q, W) with a negative whose best positive scores strictly above every negative."""
    negative = ~labels & torch.isfinite(logits)
    best_pos = logits.masked_fill(~labels, float("-inf")).amax(1)
    best_neg = logits.masked_fill(~negative, float("-inf")).amax(1)
    has = negative.any(1)
    return float((best_pos > best_neg)[has].float().mean()) if has.any() else float("nan")


class CrossLoss:
    """loss_fn(cross-encoder, pair batch) -> (loss, logs) for :func:`aladin.training.loop.fit`: the
    multi-positive listwise loss (scores / temperature) of both lists of every pair, averaged over
    the two directions; logs each direction's loss and list accuracy and the cleaning of the lists.
    With `foils`, each image list ends with its caption's foil (a negative), and ``foil_acc`` logs
    the share of pairs whose caption outscores its foil."""

    def __init__(self, store: FeatureStore, negatives: Negatives, hard: int, random: int, temperature: float,
                 margin: float, device: torch.device | str, foils: FoilTexts | None = None) -> None:
        self.store, self.negatives, self.device, self.foils = store, negatives, device, foils
        self.hard, self.random, self.temperature, self.margin = hard, random, temperature, margin

    def __call__(self, model: CrossEncoder, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        # Lists drawn from torch's RNG, which fit reseeds every epoch: a resumed run redraws the same.
        rng = np.random.default_rng(int(torch.randint(2**62, ())))
        captions = batch.caption_index.cpu().numpy()
        images = np.asarray(self.store.caption_image)[captions]
        (t2i_items, t2i_labels), (i2t_items, i2t_labels), logs = training_lists(
            self.negatives, self.store, captions, self.hard, self.random, self.temperature, self.margin, rng)
        foils = None if self.foils is None else self.foils.batch(captions)
        t2i, i2t = list_logits(model, self.store, images, captions, t2i_items, i2t_items, self.device, foils)
        if foils is not None:
            has = foils[0]
            i2t_labels = np.concatenate([i2t_labels, np.zeros((len(captions), 1), dtype=bool)], 1)
            # Column 0 is the pair's own caption; nan only for a batch without foils (every rank logs it).
            logs["foil_acc"] = float((i2t[has, 0] > i2t[has, -1]).float().mean()) if has.any() else float("nan")
        t2i_labels, i2t_labels = (torch.as_tensor(x, device=t2i.device) for x in (t2i_labels, i2t_labels))
        # The lists' softmax at the sampling's temperature: in teacher units, a residual's teacher
        # term differs by a few hundredths between candidates, which a softmax of raw scores ignores.
        loss_t2i = multi_positive_list_loss(t2i / self.temperature, t2i_labels)
        loss_i2t = multi_positive_list_loss(i2t / self.temperature, i2t_labels)
        return (loss_t2i + loss_i2t) / 2, {"loss_t2i": loss_t2i.item(), "loss_i2t": loss_i2t.item(),
                                           "acc_t2i": list_accuracy(t2i, t2i_labels),
                                           "acc_i2t": list_accuracy(i2t, i2t_labels), **logs}
