"""Oracle ceiling: the caption parser's verdict on every (image, caption) pair as a score matrix.

``oracle_scores[i, j]`` is 1 where caption j is true of image i's scene, else 0. A caption is
often true of several scenes (it mentions a subset of a scene), so even this perfect reader
ties the correct image with others; under the project's pessimistic tie rule
(:mod:`aladin.evaluation.metrics`) every other true image counts ahead of the correct one (t2i), and every
caption of another image that is true of the query image counts ahead of its own (i2t: generic
captions such as "there are three shapes" are true of hundreds of scenes, so the oracle's i2t
recalls are near zero). These are the figures of a judge that knows only truth; a model can
pass them only by exploiting how captions are written (descriptions are chosen to single out
their object in its own scene), not by reading better.

Speed (5,000 scenes x 25,000 captions in about 10 s on 2 busy cores): each distinct caption
text is parsed once (:func:`aladin.data.parser.parse`, about 40% of the time); each distinct
claim is evaluated once against all scenes at once, with the semantics of
:func:`aladin.data.parser.holds`, on per-scene bit sets of objects; a caption's column is the
AND of its claims' columns, once per distinct set of claims.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import DataError
from .lexicon import LOCATIONS, RELATIONS
from .parser import Claim, Count, Desc, Exists, Location, Relation, _cell, parse

ATTRS = ("shape", "colour", "size", "pattern")
MAX_OBJECTS = 16                         # object sets are uint16 bit masks


class _Scenes:
    """Scene records as object bit sets, vectorised over scenes: bit k of entry s is object k of scene s."""

    def __init__(self, records: Sequence[dict[str, Any]]) -> None:
        n = len(records)
        self.n_objects = max((len(r["objects"]) for r in records), default=0)
        if self.n_objects > MAX_OBJECTS:
            raise ValueError(f"oracle: a scene has {self.n_objects} objects, at most {MAX_OBJECTS} supported")
        self.valid = np.zeros(n, np.uint16)
        self.values: dict[tuple[str, str], np.ndarray] = {}          # (attribute, value) -> objects with it
        self.places = {where: np.zeros(n, np.uint16) for where in LOCATIONS}
        # relation -> (O, N): row i holds the objects j with (i, relation, j) true
        self.relations = {r: np.zeros((self.n_objects, n), np.uint16) for r in RELATIONS}
        for s, rec in enumerate(records):
            for k, obj in enumerate(rec["objects"]):
                bit = np.uint16(1 << k)
                self.valid[s] |= bit
                for a in ATTRS:
                    self.values.setdefault((a, obj[a]), np.zeros(n, np.uint16))[s] |= bit
                # The parser locates objects by box centre, not by the record's cell.
                row, col = _cell(obj, rec["image_size"])
                for where, (rows, cols) in LOCATIONS.items():
                    if (rows is None or row in rows) and (cols is None or col in cols):
                        self.places[where][s] |= bit
            for i, r, j in rec["relations"]:
                if i != j:                                   # holds() never relates an object to itself
                    self.relations[r][i, s] |= np.uint16(1 << j)
        self._desc: dict[tuple, np.ndarray] = {}

    def matches(self, desc: Desc) -> np.ndarray:
        """(N,) bit sets of the objects that fit the description (cached per description)."""
        key = tuple(sorted(desc.items()))
        if key not in self._desc:
            m = self.valid.copy()
            for a, v in desc.items():
                m &= self.values.get((a, v), 0)              # a value no scene has matches nothing
            self._desc[key] = m
        return self._desc[key]

    def holds(self, claim: Claim) -> np.ndarray:
        """(N,) bool: the scenes in which the claim holds (parser.holds, every scene at once)."""
        if isinstance(claim, Exists):
            return self.matches(claim.desc) != 0
        if isinstance(claim, Count):
            m = self.matches(claim.desc)
            return sum((m >> k) & 1 for k in range(self.n_objects)) == claim.n
        if isinstance(claim, Location):
            return (self.matches(claim.desc) & self.places[claim.where]) != 0
        subject, obj = self.matches(claim.subject), self.matches(claim.object)
        rel = self.relations[claim.relation]
        out = np.zeros(len(subject), bool)
        for i in range(self.n_objects):
            out |= (((subject >> i) & 1) != 0) & ((rel[i] & obj) != 0)
        return out


def _claim_key(claim: Claim) -> tuple:
    if isinstance(claim, Relation):
        return ("rel", tuple(sorted(claim.subject.items())), claim.relation, tuple(sorted(claim.object.items())))
    extra = claim.n if isinstance(claim, Count) else claim.where if isinstance(claim, Location) else None
    return (type(claim).__name__, tuple(sorted(claim.desc.items())), extra)


def oracle_scores(records: Sequence[dict[str, Any]], captions: Sequence[str]) -> np.ndarray:
    """(N_img, N_cap) float32: 1 where the parser finds caption j true of scene record i, else 0
    (:func:`oracle_truth` as scores)."""
    return oracle_truth(records, captions).astype(np.float32)


def oracle_truth(records: Sequence[dict[str, Any]], captions: Sequence[str]) -> np.ndarray:
    """(N_img, N_cap) bool: True where the parser finds caption j true of scene record i.

    `records` are scene records (scenes.jsonl, :meth:`Scene.record`), `captions` any caption
    texts in the scenes' language (a caption the parser cannot read raises ParseError).
    Equal to ``[[is_true(c, r) for c in captions] for r in records]``, without the N x M loop.
    """
    scenes = _Scenes(records)
    claims: dict[tuple, np.ndarray] = {}
    columns: dict[frozenset, int] = {}           # distinct claim set -> column of `truth`
    truth: list[np.ndarray] = []
    by_text: dict[str, int] = {}
    col_of_caption = np.empty(len(captions), np.int64)
    for j, text in enumerate(captions):
        if text not in by_text:
            parsed = {_claim_key(c): c for c in parse(text)}
            key = frozenset(parsed)              # a caption is the AND of its claims: order-free
            if key not in columns:
                for k, c in parsed.items():
                    if k not in claims:
                        claims[k] = scenes.holds(c)
                column = np.ones(len(records), bool)
                for k in key:
                    column &= claims[k]
                columns[key] = len(truth)
                truth.append(column)
            by_text[text] = columns[key]
        col_of_caption[j] = by_text[text]
    if not truth:
        return np.zeros((len(records), len(captions)), bool)
    by_caption = np.stack(truth)[col_of_caption]                  # (N_cap, N_img): cheap row gather
    return np.ascontiguousarray(by_caption.T)


def scene_records(path: str | Path, image_ids: Sequence[str]) -> list[dict[str, Any]] | None:
    """The scene records of `image_ids`, in that order, from a scenes.jsonl; None when the file is
    absent (a real dataset has no scene records, hence no oracle and no scene families)."""
    path = Path(path)
    if not path.is_file():
        return None
    wanted = set(image_ids)
    by_id = {}
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            if record["id"] in wanted:
                by_id[record["id"]] = record
    missing = [i for i in image_ids if i not in by_id]
    if missing:
        raise DataError(f"{path}: no scene record for test image {missing[0]!r} ({len(missing)} missing); "
                        "rerun the data stage")
    return [by_id[i] for i in image_ids]
