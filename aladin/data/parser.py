"""Caption parser: caption text -> claims, each checked against a scene record.

It reads nothing but the caption text and the lexicon (the language's dictionary), never the
generator's choices, so it independently verifies that every caption is true of its image.
Parsing is strict: an unknown word or an ungrammatical sequence is a ParseError.

Pipeline: tokens -> lexical items (longest phrase first) -> noun phrases -> claims:
  Exists(desc)                   "a big red circle"
  Count(desc, n)                 "two striped shapes", "there are three objects" (exact count)
  Relation(subject, rel, object) "A left of B", "to the left of B, there is A", "B with A to its
                                 left", "A is left of B, which is above C"
  Location(desc, where)          "A in the top left corner", "at the bottom, there is A"
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Union

from .lexicon import (COLOUR_POST_LINKS, COLOURS, FILLERS, GENERIC_NOUNS, LOCATION_PHRASES, LOCATIONS, NUMBERS,
                      PATTERN_POST, PATTERNS, RELATIONS, RELATIONS_ITS, SEPARATORS, SHAPES, SINGLE,
                      SIZES, WHICH, plural)

GRID = 3


class ParseError(ValueError):
    """The caption is not in the scenes' language."""


Desc = dict[str, str]             # attribute -> canonical value; no "shape" = any shape


@dataclass(frozen=True)
class Exists:
    desc: Desc


@dataclass(frozen=True)
class Count:
    desc: Desc
    n: int


@dataclass(frozen=True)
class Relation:
    subject: Desc
    relation: str
    object: Desc


@dataclass(frozen=True)
class Location:
    desc: Desc
    where: str


Claim = Union[Exists, Count, Relation, Location]


def _build_phrases() -> dict[tuple[str, ...], tuple]:
    table: dict[tuple[str, ...], tuple] = {}

    def add(phrase: str, item: tuple) -> None:
        key = tuple(_tokens(phrase))
        if table.get(key, item) != item:
            raise AssertionError(f"lexicon: {phrase!r} means both {table[key]} and {item}")
        table[key] = item

    for p in FILLERS:
        add(p, ("filler",))
    for p in SEPARATORS:
        add(p, ("sep",))
    for p in WHICH:
        add(p, ("which",))
    for p in ("a", "an", "the"):
        add(p, ("det",))
    for w, n in NUMBERS.items():
        add(w, ("num", n))
    for p in SINGLE:
        add(p, ("num", 1))
    for attr, table_ in (("size", SIZES), ("colour", COLOURS), ("pattern", PATTERNS)):
        for value, words in table_.items():
            for w in words:
                add(w, ("adj", attr, value))
    for value, words in COLOURS.items():
        for w in words:
            for link in COLOUR_POST_LINKS:
                add(f"{link} {w}", ("post", "colour", value))
    for value, phrases in PATTERN_POST.items():
        for p in phrases:
            add(p, ("post", "pattern", value))
    for value, words in SHAPES.items():
        for w in words:
            add(w, ("noun", value, False))
            add(plural(w), ("noun", value, True))
    for w in GENERIC_NOUNS:
        add(w, ("noun", None, False))
        add(plural(w), ("noun", None, True))
    for rel, phrases in RELATIONS.items():
        for p in phrases:
            add(p, ("rel", rel))
    for rel, phrases in RELATIONS_ITS.items():
        for p in phrases:
            add(p, ("relits", rel))
    for where, phrases in LOCATION_PHRASES.items():
        for p in phrases:
            add(p, ("loc", where))
    return table


def _tokens(text: str) -> list[str]:
    text = text.lower()
    tokens = re.findall(r"[a-z]+(?:['-][a-z]+)*|[,;:.]", text)
    leftover = re.sub(r"[a-z]+(?:['-][a-z]+)*|[,;:.]|\s", "", text)
    if leftover:
        raise ParseError(f"unexpected characters {leftover!r}")
    return tokens


PHRASES = _build_phrases()
LONGEST = max(len(k) for k in PHRASES)


def lex(text: str) -> list[tuple]:
    """Lexical items, longest phrase first; fillers dropped."""
    toks, items, i = _tokens(text), [], 0
    while i < len(toks):
        for n in range(min(LONGEST, len(toks) - i), 0, -1):
            item = PHRASES.get(tuple(toks[i:i + n]))
            if item is not None:
                if item[0] != "filler":
                    items.append(item)
                i += n
                break
        else:
            raise ParseError(f"unknown word {toks[i]!r}")
    return items


def unknown_words(text: str) -> list[str]:
    """The words of `text` that no phrase of the scenes' language covers (what a model trained on
    them has never seen), in order, each once; [] when every word is known."""
    toks = re.findall(r"[a-z]+(?:['-][a-z]+)*|[^a-z\s,;:.]+", text.lower())
    unknown, i = [], 0
    while i < len(toks):
        n = next((n for n in range(min(LONGEST, len(toks) - i), 0, -1) if tuple(toks[i:i + n]) in PHRASES), 0)
        if not n:
            unknown.append(toks[i])
        i += max(n, 1)
    return list(dict.fromkeys(unknown))


def chunk(items: list[tuple]) -> list[tuple]:
    """Group determiner/number + adjectives + noun + post-modifiers into ("np", desc, count)."""
    out, i = [], 0
    while i < len(items):
        kind = items[i][0]
        if kind not in ("det", "num", "adj", "noun"):
            if kind == "post":
                raise ParseError(f"modifier {items[i]} without a noun")
            out.append(items[i])
            i += 1
            continue
        if kind == "adj" or kind == "noun":
            raise ParseError("noun phrase without a determiner or number")
        count = items[i][1] if kind == "num" else None
        i += 1
        desc: Desc = {}
        while i < len(items) and items[i][0] == "adj":
            _, attr, value = items[i]
            if attr in desc:
                raise ParseError(f"{attr} given twice")
            desc[attr] = value
            i += 1
        if i >= len(items) or items[i][0] != "noun":
            raise ParseError("expected a noun")
        _, shape, is_plural = items[i]
        i += 1
        if shape is not None:
            desc["shape"] = shape
        while i < len(items) and items[i][0] == "post":
            _, attr, value = items[i]
            if attr in desc:
                raise ParseError(f"{attr} given twice")
            desc[attr] = value
            i += 1
        if is_plural != (count is not None and count > 1):
            raise ParseError("number and noun disagree")
        out.append(("np", desc, count))
    return out


def _np(seq: list[tuple], k: int) -> Desc | None:
    """The description at position k if it is an uncounted noun phrase."""
    if 0 <= k < len(seq) and seq[k][0] == "np" and seq[k][2] is None:
        return seq[k][1]
    return None


def _np_skip_sep(seq: list[tuple], k: int, step: int) -> Desc | None:
    """The noun phrase at k, or the one next to a separator at k (step +1: after, -1: before)."""
    if 0 <= k < len(seq) and seq[k][0] == "sep":
        return _np(seq, k + step)
    return _np(seq, k)


def parse(caption: str) -> list[Claim]:
    seq = chunk(lex(caption))
    if not any(it[0] == "np" for it in seq):
        raise ParseError("no noun phrase")
    claims: list[Claim] = []
    for k, item in enumerate(seq):
        kind = item[0]
        prev = seq[k - 1][0] if k > 0 else "sep"
        if kind == "np":
            claims.append(Exists(item[1]) if item[2] is None else Count(item[1], item[2]))
        elif kind in ("rel", "loc"):
            if prev == "np":                        # A left of B / A at the top
                subject, nxt = _np(seq, k - 1), k + 1
            elif prev == "which":                   # ..., B, which is left of C
                subject, nxt = _np_skip_sep(seq, k - 2, -1), k + 1
            elif prev == "sep":                     # fronted: left of B, there is A / at the top, A
                subject, nxt = _np_skip_sep(seq, k + 2 if kind == "rel" else k + 1, +1), k + 1
            else:
                raise ParseError(f"unexpected {item} after {prev}")
            if subject is None:
                raise ParseError(f"{item} without a subject")
            if kind == "loc":
                claims.append(Location(subject, item[1]))
                continue
            obj = _np(seq, nxt)
            if obj is None:
                raise ParseError(f"{item} without an object")
            claims.append(Relation(subject, item[1], obj))
        elif kind == "relits":                      # B with A to its left
            subject, obj = _np(seq, k - 1), _np(seq, k - 2)
            if subject is None or obj is None:
                raise ParseError(f"{item} needs two noun phrases before it")
            claims.append(Relation(subject, item[1], obj))
    return claims


# --- checking claims against a scene record (scenes.jsonl) -------------------------------------

def _matches(obj: dict[str, Any], desc: Desc) -> bool:
    return all(obj[a] == v for a, v in desc.items())


def _cell(obj: dict[str, Any], image_size: int) -> tuple[int, int]:
    """(row, col) on the 3x3 grid, from the box centre in pixels."""
    x0, y0, x1, y1 = obj["box"]
    def third(v: float) -> int:
        return min(GRID - 1, int(GRID * v / image_size))
    return third((y0 + y1) / 2), third((x0 + x1) / 2)


def holds(claim: Claim, record: dict[str, Any]) -> bool:
    objs = record["objects"]
    if isinstance(claim, Exists):
        return any(_matches(o, claim.desc) for o in objs)
    if isinstance(claim, Count):
        return sum(_matches(o, claim.desc) for o in objs) == claim.n
    if isinstance(claim, Location):
        rows, cols = LOCATIONS[claim.where]
        for o in objs:
            if _matches(o, claim.desc):
                r, c = _cell(o, record["image_size"])
                if (rows is None or r in rows) and (cols is None or c in cols):
                    return True
        return False
    true_rels = {(i, r, j) for i, r, j in record["relations"]}
    return any((i, claim.relation, j) in true_rels
               for i, a in enumerate(objs) if _matches(a, claim.subject)
               for j, b in enumerate(objs) if j != i and _matches(b, claim.object))


def is_true(caption: str, record: dict[str, Any]) -> bool:
    """Whether every claim of the caption holds in the scene (a parse error raises)."""
    return all(holds(c, record) for c in parse(caption))
