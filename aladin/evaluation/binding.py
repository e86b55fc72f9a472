"""Binding diagnostics: does a model tell a caption from its foil, is the binding in its
vectors, and how much does the teacher's target over a scene family say?

- Foil accuracy (ARO / SugarCrepe style): percent of (caption, foil) pairs where a scorer puts
  (caption, own image) above (foil, own image); chance 50. A text-only control (a bag of
  unigrams and bigrams, no image, no language model) trained to prefer captions over their foils
  measures how much of that is readable from the text alone: near 50 it is not.
- Linear probes (LABCLIP style): for each object whose key attribute (its shape) is unique in
  its scene or caption, predict the attribute bound to it (its colour) from a frozen embedding,
  one logistic regression per key value. Controls: the same probe on shuffled labels (chance
  for this probe), per-key majority, and a bag-of-attributes code of the same content (what a
  vector that knows every attribute but no binding can reach).
- The teacher's distillation target over a family: softmax over a caption's family images of
  the teacher's scores at the distillation temperature; its entropy and the mass on the own image.
"""
from __future__ import annotations

import math
from typing import Any, Hashable, Sequence

import numpy as np
import torch
from scipy.sparse import vstack
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from ..data.lexicon import ATTRIBUTES
from ..data.parser import Count, Exists, parse
from ..features import TextBackbone, text_batch
from ..models.alignment import AlignmentModel
from ..retrieval.store_scores import embed_store_items
from ..store import Batch, FeatureStore

ATTR_VALUES: tuple[tuple[str, str], ...] = tuple((a, v) for a, table in ATTRIBUTES.items() for v in table)


# --- foil accuracy ---------------------------------------------------------------------------------

def foil_accuracy(caption_scores: np.ndarray, foil_scores: np.ndarray) -> float:
    """Percent of pairs whose caption outscores its foil; a tie counts half (a coin flip), so a
    scorer blind to the edit sits at exactly 50."""
    c, f = np.asarray(caption_scores, np.float64), np.asarray(foil_scores, np.float64)
    if c.shape != f.shape or c.ndim != 1:
        raise ValueError(f"foil_accuracy: caption scores {c.shape} and foil scores {f.shape} must be equal 1-d")
    return float(100.0 * np.mean((c > f) + 0.5 * (c == f))) if len(c) else float("nan")


def raw_text_batches(backbone: TextBackbone, texts: Sequence[str], batch_size: int = 128) -> list[Batch]:
    """Raw texts through the text backbone end to end, as a search query is (a foil is in no
    store), `batch_size` at a time: encoded once, then scored by every model."""
    return [text_batch(backbone, list(texts[s:s + batch_size])) for s in range(0, len(texts), batch_size)]


@torch.no_grad()
def pair_scores(model: nn.Module, store: FeatureStore, image_idx: Sequence[int], texts: Sequence[Batch],
                device: torch.device | str = "cpu") -> np.ndarray:
    """(N,) score of text k against store image ``image_idx[k]``: the teacher's alignment score or
    the student's cosine. `texts`: :func:`raw_text_batches` of the N texts, in order."""
    image_idx = np.asarray(image_idx, dtype=np.int64)
    out, s = [], 0
    for txt in texts:
        n = txt.tokens.shape[0]
        imgs, txt = store.image_batch(image_idx[s:s + n]).to(device), txt.to(device)
        if isinstance(model, AlignmentModel):
            scores = model.score(*model.embed_images(imgs), *model.embed_texts(txt)).diagonal()
        else:
            scores = (model.embed_images(imgs) * model.embed_texts(txt)).sum(-1)
        out.append(scores.float().cpu().numpy())
        s += n
    if s != len(image_idx):
        raise ValueError(f"pair_scores: {s} texts for {len(image_idx)} images")
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def text_only_scores(train: Sequence[tuple[str, str]], test: Sequence[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """A text-only scorer's (caption scores, foil scores) of the `test` (caption, foil) pairs, for
    :func:`foil_accuracy`: w . (unigram + bigram counts of a text), w fitted by logistic regression
    on the `train` pairs' (caption - foil) differences, both orientations, no intercept. Words only,
    lower-cased, "a" and "an" kept (article errors count); no image, no language model."""
    vec = CountVectorizer(ngram_range=(1, 2), token_pattern=r"[a-z]+(?:['-][a-z]+)*", lowercase=True)
    vec.fit([t for pair in train for t in pair])
    d = vec.transform([c for c, _ in train]) - vec.transform([f for _, f in train])
    clf = LogisticRegression(fit_intercept=False, max_iter=2000)
    clf.fit(vstack([d, -d]), np.r_[np.ones(d.shape[0]), np.zeros(d.shape[0])])
    return (clf.decision_function(vec.transform([c for c, _ in test])),
            clf.decision_function(vec.transform([f for _, f in test])))


def text_detectable(accuracy: float, n: int) -> bool:
    """Whether a text-only accuracy is far above 50: by more than 5 points and 3 standard errors."""
    return accuracy - 50.0 > max(5.0, 3 * 50.0 / math.sqrt(max(n, 1)))


# --- linear probes ---------------------------------------------------------------------------------

def image_probe_rows(records: Sequence[dict[str, Any]], key: str = "shape",
                     target: str = "colour") -> tuple[np.ndarray, list[str], list[str]]:
    """(item index, key value, target value) of every object whose key value is unique in its
    scene: "the colour of the circle" has one answer there."""
    rows, qs, ys = [], [], []
    for k, rec in enumerate(records):
        keys = [o[key] for o in rec["objects"]]
        for o in rec["objects"]:
            if keys.count(o[key]) == 1:
                rows.append(k)
                qs.append(o[key])
                ys.append(o[target])
    return np.asarray(rows, dtype=np.int64), qs, ys


def caption_descs(caption: str) -> list[dict[str, str]]:
    """The descriptions of the objects a caption mentions (its noun phrases)."""
    return [c.desc for c in parse(caption) if isinstance(c, (Exists, Count))]


def caption_probe_rows(captions: Sequence[str], key: str = "shape",
                       target: str = "colour") -> tuple[np.ndarray, list[str], list[str]]:
    """(item index, key value, target value) for every key value a caption binds to exactly one
    target value ("a red circle left of a blue square": circle -> red, square -> blue)."""
    rows, qs, ys = [], [], []
    for k, text in enumerate(captions):
        bound: dict[str, set[str]] = {}
        for d in caption_descs(text):
            if key in d and target in d:
                bound.setdefault(d[key], set()).add(d[target])
        for q, values in bound.items():
            if len(values) == 1:
                rows.append(k)
                qs.append(q)
                ys.append(next(iter(values)))
    return np.asarray(rows, dtype=np.int64), qs, ys


def bag_features(descs: Sequence[Sequence[dict[str, str]]]) -> np.ndarray:
    """(N, A) counts of each (attribute, value) over an item's objects (scene record objects or
    caption descriptions; other fields ignored): its content without the binding."""
    col = {av: i for i, av in enumerate(ATTR_VALUES)}
    x = np.zeros((len(descs), len(col)), np.float32)
    for k, objs in enumerate(descs):
        for d in objs:
            for a in ATTRIBUTES:
                if a in d:
                    x[k, col[(a, d[a])]] += 1
    return x


def _fit_predict(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, seed: int) -> np.ndarray:
    labels = np.unique(y_tr)
    if len(labels) == 1:
        return np.full(len(x_te), labels[0], dtype=y_tr.dtype)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
    return clf.fit(x_tr, y_tr).predict(x_te)


def binding_probe(x_train: np.ndarray, q_train: Sequence[Hashable], y_train: Sequence[Hashable],
                  x_test: np.ndarray, q_test: Sequence[Hashable], y_test: Sequence[Hashable],
                  seed: int = 0) -> dict[str, float]:
    """Test accuracy (percent) of one logistic regression per key value q (rows with key q:
    features -> target), beside the same probe fitted on labels shuffled within each key value
    (``shuffled``: what a probe finds where there is nothing) and the train majority per key
    (``majority``). A key value absent from train predicts the overall train majority."""
    code: dict[Hashable, int] = {}            # targets as integer classes, whatever their type
    y_tr = np.asarray([code.setdefault(v, len(code)) for v in y_train], dtype=np.int64)
    y_te = np.asarray([code.setdefault(v, len(code)) for v in y_test], dtype=np.int64)
    q_tr, q_te = np.asarray(q_train, dtype=object), np.asarray(q_test, dtype=object)
    if len(x_train) != len(y_tr) or len(x_test) != len(y_te) or len(q_tr) != len(y_tr) or len(q_te) != len(y_te):
        raise ValueError("binding_probe: features, keys and targets must have one row each")
    if not len(y_tr):
        raise ValueError("binding_probe: no train rows")
    rng = np.random.default_rng(seed)
    shuffled = y_tr.copy()
    for q in dict.fromkeys(q_tr):             # first-appearance order: the same shuffle on every run
        rows = np.flatnonzero(q_tr == q)
        shuffled[rows] = y_tr[rng.permutation(rows)]
    values, counts = np.unique(y_tr, return_counts=True)
    overall = values[np.argmax(counts)]
    pred = {name: np.empty(len(y_te), dtype=np.int64) for name in ("accuracy", "shuffled", "majority")}
    for q in dict.fromkeys(q_te):
        te, tr = np.flatnonzero(q_te == q), np.flatnonzero(q_tr == q)
        if len(tr) == 0:
            for p in pred.values():
                p[te] = overall
            continue
        pred["accuracy"][te] = _fit_predict(x_train[tr], y_tr[tr], x_test[te], seed)
        pred["shuffled"][te] = _fit_predict(x_train[tr], shuffled[tr], x_test[te], seed)
        v, c = np.unique(y_tr[tr], return_counts=True)
        pred["majority"][te] = v[np.argmax(c)]
    out = {name: float(100.0 * np.mean(p == y_te)) if len(y_te) else float("nan") for name, p in pred.items()}
    return {**out, "n_train": float(len(y_tr)), "n_test": float(len(y_te))}


@torch.no_grad()
def mean_tokens(model: nn.Module, store: FeatureStore, kind: str, index: np.ndarray,
                device: torch.device | str = "cpu") -> np.ndarray:
    """(N, d) the teacher's token embeddings of store images or captions, mean-pooled over the valid ones."""
    emb, mask = embed_store_items(model, store, kind, device, index)
    m = mask[..., None].float()
    return ((emb * m).sum(1) / m.sum(1).clamp(min=1)).cpu().numpy()


# --- the teacher's target over a family --------------------------------------------------------------

@torch.no_grad()
def family_scores(teacher: nn.Module, store: FeatureStore, families: Sequence[Hashable], caption_idx: Sequence[int],
                  device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(N, F) teacher scores of store captions `caption_idx` against the images of their own
    image's family (``families[i]``: the family of store image i), padded with -inf to the
    largest family, and (N,) the column of each caption's own image."""
    caption_idx = np.asarray(caption_idx, dtype=np.int64)
    if len(families) != store.n_images:
        raise ValueError(f"family_scores: {len(families)} families for the {store.n_images} images of {store.path}")
    own_img = np.asarray(store.caption_image)[caption_idx]
    images_of: dict[Hashable, list[int]] = {}
    for i, f in enumerate(families):
        images_of.setdefault(f, []).append(i)
    rows_of: dict[Hashable, list[int]] = {}
    for row, i in enumerate(own_img):
        rows_of.setdefault(families[i], []).append(row)
    members = {f: np.asarray(images_of[f], dtype=np.int64) for f in rows_of}
    width = max((len(m) for m in members.values()), default=1)
    needed = np.unique(np.concatenate([np.zeros(0, np.int64), *members.values()]))
    img, img_mask = embed_store_items(teacher, store, "image", device, needed)          # once each
    cap, cap_mask = embed_store_items(teacher, store, "caption", device, caption_idx)
    scores = np.full((len(caption_idx), width), -np.inf, np.float32)
    own = np.zeros(len(caption_idx), np.int64)
    for f, imgs in members.items():
        rows = np.asarray(rows_of[f], dtype=np.int64)
        at = torch.as_tensor(np.searchsorted(needed, imgs), device=img.device)
        on = torch.as_tensor(rows, device=cap.device)
        block = teacher.score(img[at], img_mask[at], cap[on], cap_mask[on])              # (F, C)
        scores[rows, :len(imgs)] = block.T.float().cpu().numpy()
        own[rows] = np.searchsorted(imgs, own_img[rows])
    return scores, own


def target_entropy(scores: np.ndarray, own: np.ndarray, temperature: float) -> dict[str, float]:
    """Summary of softmax(scores / temperature) per row (-inf = not a family member): mean
    entropy in nats beside that of the uniform target (log family size), the mean target mass on
    the own image, and the teacher's family R@1 (own image strictly above every sibling)."""
    s = torch.as_tensor(scores, dtype=torch.float64) / temperature
    p = s.softmax(dim=1)
    entropy = -(p * s.log_softmax(dim=1)).nan_to_num(0.0).sum(dim=1)      # 0 log 0 = 0 on the pads
    size = torch.isfinite(s).sum(dim=1).double()
    own_t = torch.as_tensor(own, dtype=torch.long)[:, None]
    own_score = s.gather(1, own_t)
    wins = ((s >= own_score).sum(dim=1) == 1).double()
    return {"entropy": float(entropy.mean()), "uniform_entropy": float(size.log().mean()),
            "p_own": float(p.gather(1, own_t).mean()), "family_r1": float(100.0 * wins.mean()),
            "family_size": float(size.mean())}
