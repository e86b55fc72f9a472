"""Foils: captions edited into near-misses, for binding diagnostics and hard negative texts.

Scenes data (verified): a caption is lexed and chunked with the parser's own lexicon
(:mod:`aladin.data.parser`), one edit is made to its text, and the result is kept only if

- the parser reads it and finds the intended claim in it (the edit says what it was meant to),
- the parser finds it FALSE of the caption's own scene record,
- it is not one of the captions of any image of the scene's family (``exclude``): a foil must
  never be the ground truth of a sibling, which the training would then push away.

Kinds: ``swap_attribute`` (two described objects exchange a colour, size, pattern or shape word:
the bag of words is unchanged, only the binding differs), ``swap_relation`` (the two arguments of
a relation exchange places: "A left of B" -> "B left of A"), ``change_attribute`` (one stated
attribute takes another value, one that another object of the scene has tried first: a binding
error rather than a hallucinated word).

Real datasets (unverified, ``verified=False``): NegCLIP-style rule swaps by word lists (two
adjectives, two nouns, the nouns around a relation word). Nothing checks them against the image,
so some are still true of it; and rule-made foils are often detectable from the text alone
(SugarCrepe), which a text-only control must measure.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, Collection, Sequence

from .lexicon import COLOURS, PATTERN_POST, PATTERNS, RELATIONS, SHAPES, SIZES, plural
from .parser import LONGEST, PHRASES, Count, Exists, ParseError, Relation, _tokens, is_true, parse

SCENE_KINDS = ("swap_attribute", "swap_relation", "change_attribute")
ATTRS = ("colour", "size", "pattern", "shape")
WORDS = {"colour": COLOURS, "size": SIZES, "pattern": PATTERNS, "shape": SHAPES}
LEMMA = {plural(w): w for ws in SHAPES.values() for w in ws}       # "boxes" -> "box"


@dataclass(frozen=True)
class Foil:
    text: str
    kind: str
    verified: bool          # True: parsed and found false of its scene; False: a rule-made swap only


@dataclass(frozen=True)
class _Item:
    """One lexical item of a caption (parser.lex's item) and where it sits in the text."""
    item: tuple
    start: int
    end: int


@dataclass
class _Phrase:
    """A noun phrase as parser.chunk groups it, by item index."""
    det: int | None                 # the a / an / the item; None when it opens with a number
    slots: dict[str, int]           # attribute -> the item that states it
    start: int                      # items [start, end)
    end: int
    plural: bool
    desc: dict[str, str]
    count: int | None


def normalise(text: str) -> str:
    """Caption identity for exclusion: the parser's tokens, trailing full stop dropped."""
    toks = _tokens(text)
    return " ".join(toks[:-1] if toks and toks[-1] == "." else toks)


def _located_items(text: str) -> list[_Item]:
    """parser.lex with character offsets (longest phrase first, fillers dropped)."""
    low, toks = text.lower(), _tokens(text)
    spans, pos = [], 0
    for t in toks:                  # tokens appear in order, separated by whitespace only
        s = low.index(t, pos)
        spans.append((s, s + len(t)))
        pos = s + len(t)
    items, i = [], 0
    while i < len(toks):
        for n in range(min(LONGEST, len(toks) - i), 0, -1):
            item = PHRASES.get(tuple(toks[i:i + n]))
            if item is not None:
                if item[0] != "filler":
                    items.append(_Item(item, spans[i][0], spans[i + n - 1][1]))
                i += n
                break
        else:
            raise ParseError(f"unknown word {toks[i]!r}")
    return items


def _phrases(items: list[_Item]) -> list[_Phrase]:
    """Noun phrases: determiner or number, adjectives, noun, post-modifiers (parser.chunk's grammar)."""
    out, i = [], 0
    while i < len(items):
        kind = items[i].item[0]
        if kind not in ("det", "num"):
            i += 1
            continue
        start, count = i, items[i].item[1] if kind == "num" else None
        det = i if kind == "det" else None
        slots, desc = {}, {}
        i += 1
        while i < len(items) and items[i].item[0] == "adj":
            _, attr, value = items[i].item
            slots[attr], desc[attr] = i, value
            i += 1
        if i >= len(items) or items[i].item[0] != "noun":
            raise ParseError("expected a noun")
        _, shape, is_plural = items[i].item
        if shape is not None:
            slots["shape"], desc["shape"] = i, shape
        i += 1
        while i < len(items) and items[i].item[0] == "post":
            _, attr, value = items[i].item
            slots[attr], desc[attr] = i, value
            i += 1
        out.append(_Phrase(det, slots, start, i, is_plural, desc, count))
    return out


def _surface(text: str, item: _Item) -> str:
    return text[item.start:item.end].lower()


def _value_word(text: str, item: _Item, attr: str) -> str:
    """The word(s) that carry the value in this slot: reusable by a slot of the same form."""
    s = _surface(text, item)
    if item.item[0] == "noun":
        return LEMMA.get(s, s)
    if item.item[0] == "post" and attr == "colour":
        return s.split()[-1]        # "that is red" -> "red"
    return s


def _say(text: str, item: _Item, attr: str, value: str, is_plural: bool, rng: random.Random,
         word: str | None) -> str | None:
    """Text stating attr = value in the slot `item`, in the slot's own form (None: the form cannot
    say it, e.g. "with stripes" has no plain counterpart). `word`: the other object's word, reused
    when it fits, so a swap keeps the caption's bag of words exactly."""
    kind = item.item[0]
    if kind == "noun":
        lemma = word or rng.choice(SHAPES[value])
        return plural(lemma) if is_plural else lemma
    if kind == "adj":
        return word or rng.choice(WORDS[attr][value])
    if attr == "colour":            # "in red": keep the link, replace the colour
        link = _surface(text, item).rsplit(" ", 1)[0]
        return f"{link} {word or rng.choice(COLOURS[value])}"
    options = PATTERN_POST.get(value)
    return (word if word in (options or ()) else rng.choice(options)) if options else None


def _splice(text: str, edits: dict[tuple[int, int], str]) -> str:
    """Replace character spans; a replacement at a capital (sentence start) is capitalised."""
    for (s, e), new in sorted(edits.items(), reverse=True):
        new = new[0].upper() + new[1:] if text[s].isupper() else new[0].lower() + new[1:]
        text = text[:s] + new + text[e:]
    return text


def _fix_articles(text: str, items: list[_Item], phrases: list[_Phrase], edits: dict[tuple[int, int], str]) -> None:
    """a / an before an edited first word, so the foil is not told apart by its grammar."""
    for p in phrases:
        if p.det is None or _surface(text, items[p.det]) not in ("a", "an"):
            continue
        nxt = items[p.det + 1]
        first = edits.get((nxt.start, nxt.end), _surface(text, nxt))
        article = "an" if first[0] in "aeiou" else "a"
        if article != _surface(text, items[p.det]):
            edits[(items[p.det].start, items[p.det].end)] = article


def _set_attrs(text: str, items: list[_Item], phrases: list[_Phrase],
               changes: list[tuple[int, str, str, str | None]], rng: random.Random) -> str | None:
    """Apply (phrase, attribute, new value, word to reuse) edits; None when a slot cannot say it."""
    edits: dict[tuple[int, int], str] = {}
    for k, attr, value, word in changes:
        p = phrases[k]
        item = items[p.slots[attr]]
        new = _say(text, item, attr, value, p.plural, rng, word)
        if new is None:
            return None
        edits[(item.start, item.end)] = new
    _fix_articles(text, items, phrases, edits)
    return _splice(text, edits)


def _np_claim(p: _Phrase, desc: dict[str, str]) -> Exists | Count:
    return Exists(desc) if p.count is None else Count(desc, p.count)


def _candidates(caption: str, record: dict[str, Any], rng: random.Random) -> list[tuple[str, str, Any, tuple]]:
    """(kind, foil text, the claim the foil must contain, the slot edited) for every edit of the
    caption; a slot gets at most one foil (change_attribute tries several values per slot)."""
    items = _located_items(caption)
    phrases = _phrases(items)
    claims = parse(caption)
    # The positional chunking must agree with the parser's, phrase by phrase.
    if [c.desc for c in claims if isinstance(c, (Exists, Count))] != [p.desc for p in phrases]:
        return []
    out: list[tuple[str, str, Any, tuple]] = []
    for a in range(len(phrases)):
        for b in range(a + 1, len(phrases)):
            pa, pb = phrases[a], phrases[b]
            for attr in ATTRS:
                if attr not in pa.slots or attr not in pb.slots or pa.desc[attr] == pb.desc[attr]:
                    continue
                ia, ib = items[pa.slots[attr]], items[pb.slots[attr]]
                same_form = ia.item[0] == ib.item[0] or attr == "colour"
                wa = _value_word(caption, ia, attr) if same_form else None
                wb = _value_word(caption, ib, attr) if same_form else None
                text = _set_attrs(caption, items, phrases, [(a, attr, pb.desc[attr], wb),
                                                            (b, attr, pa.desc[attr], wa)], rng)
                if text is not None:
                    out.append(("swap_attribute", text, _np_claim(pa, {**pa.desc, attr: pb.desc[attr]}),
                                ("swap_attribute", a, b, attr)))
    for r, c in enumerate(claims):
        if not isinstance(c, Relation):
            continue
        subj = [k for k, p in enumerate(phrases) if p.count is None and p.desc == c.subject]
        obj = [k for k, p in enumerate(phrases) if p.count is None and p.desc == c.object]
        if len(subj) != 1 or len(obj) != 1 or subj == obj:
            continue                # an argument the text does not pin down to one phrase
        ps, po = phrases[subj[0]], phrases[obj[0]]
        span_s = (items[ps.start].start, items[ps.end - 1].end)
        span_o = (items[po.start].start, items[po.end - 1].end)
        text = _splice(caption, {span_s: caption[slice(*span_o)], span_o: caption[slice(*span_s)]})
        out.append(("swap_relation", text, Relation(c.object, c.relation, c.subject), ("swap_relation", r)))
    elsewhere = {attr: {o[attr] for o in record["objects"]} for attr in ATTRS}
    for k, p in enumerate(phrases):
        for attr in p.slots:
            others = [v for v in WORDS[attr] if v != p.desc[attr]]
            rng.shuffle(others)
            # Values another object of the scene has come first: a binding error, not a new word.
            others.sort(key=lambda v: v not in elsewhere[attr])
            for v in others:
                text = _set_attrs(caption, items, phrases, [(k, attr, v, None)], rng)
                if text is not None:
                    out.append(("change_attribute", text, _np_claim(p, {**p.desc, attr: v}),
                                ("change_attribute", k, attr)))
    return out


def scene_foils(caption: str, record: dict[str, Any], rng: random.Random,
                exclude: Collection[str] = ()) -> list[Foil]:
    """Every verified foil of `caption` (a caption of the scene `record`, a scenes.jsonl record),
    one per edited slot: it parses, contains the edited claim, is false of `record`, and is none
    of `exclude` (the family's captions; compared by :func:`normalise`). Deterministic given the
    state of `rng` (synonyms and the order of replacement values). A caption outside the scenes'
    language raises ParseError, one false of `record` ValueError."""
    if not is_true(caption, record):
        raise ValueError(f"caption {caption!r} is not true of its scene {record.get('id')!r}: no foil is false of it")
    banned = {normalise(t) for t in exclude} | {normalise(caption)}
    out, seen, done = [], set(), set()
    for kind, text, claim, slot in _candidates(caption, record, rng):
        key = normalise(text)
        if slot in done or key in seen or key in banned:
            continue
        try:
            claims = parse(text)
        except ParseError:
            continue
        if claim in claims and not is_true(text, record):
            out.append(Foil(text, kind, True))
            seen.add(key)
            done.add(slot)
    return out


def choose_foil(foils: Sequence[Foil], rng: random.Random) -> Foil | None:
    """One foil: a kind uniformly among those present, then a foil of it uniformly (so a kind with
    many candidates, such as change_attribute, does not crowd out the binding swaps)."""
    if not foils:
        return None
    kind = rng.choice(sorted({f.kind for f in foils}))
    return rng.choice([f for f in foils if f.kind == kind])


def family_foils(captions: Sequence[str], caption_image: Sequence[int], records: Sequence[dict[str, Any]],
                 seed: int, which: Sequence[int] | None = None) -> list[Foil | None]:
    """One verified foil (or None) for each caption in `which` (default: all), where caption j
    describes scene ``records[caption_image[j]]``. `captions` must hold every caption of the split:
    a foil may equal none of its family's captions. Caption j's foil depends on (seed, j) only."""
    family_captions: dict[str, list[str]] = {}
    for j, text in enumerate(captions):
        family_captions.setdefault(records[caption_image[j]]["family"], []).append(text)
    out = []
    for j in range(len(captions)) if which is None else which:
        rng = random.Random(f"foils/{seed}/{j}")
        record = records[caption_image[j]]
        out.append(choose_foil(scene_foils(captions[j], record, rng, family_captions[record["family"]]), rng))
    return out


# --- real datasets: rule-made swaps, unverified --------------------------------------------------

RULE_ADJECTIVES = frozenset(
    [w for table in (COLOURS, SIZES, PATTERNS) for ws in table.values() for w in ws]
    + "brown gray grey pink silver gold golden dark bright colorful young old new tall short long "
      "wooden metal plastic glass empty full open closed dirty clean wet dry busy tiny huge giant "
      "little large small big wide narrow round square".split())
_NOUN_LEMMAS = ([w for ws in SHAPES.values() for w in ws if " " not in w]
                + "man woman person boy girl child kid baby player dog cat horse bird cow sheep elephant "
                  "giraffe zebra bear car bus truck train bike bicycle motorcycle plane airplane boat table "
                  "chair bed couch bench street road field grass water beach snow tree building room kitchen "
                  "plate pizza sandwich cake bowl cup phone laptop computer shirt hat umbrella kite frisbee "
                  "skateboard surfboard wave sign clock window door wall sky fence hill mountain river".split())
RULE_NOUNS = frozenset(_NOUN_LEMMAS + [plural(w) for w in _NOUN_LEMMAS] + ["men", "women", "people", "children"])
RULE_RELATIONS = tuple(sorted(
    {p for ps in RELATIONS.values() for p in ps}
    | {"on", "in", "on top of", "in front of", "behind", "near", "by", "inside", "holding", "riding",
       "carrying", "eating", "wearing", "sitting on", "standing on", "looking at", "walking"},
    key=lambda p: -len(p.split())))            # longest first
_WORD = re.compile(r"[A-Za-z]+(?:['-][A-Za-z]+)*")


def _swap(text: str, words: list[re.Match], a: int, b: int) -> str:
    """Exchange words a and b (each takes the other's place and that place's capitalisation),
    fixing an "a" / "an" right before either."""
    edits = {(words[a].start(), words[a].end()): words[b].group().lower(),
             (words[b].start(), words[b].end()): words[a].group().lower()}
    for k, other in ((a, b), (b, a)):
        if k > 0 and words[k - 1].group().lower() in ("a", "an"):
            article = "an" if words[other].group()[0].lower() in "aeiou" else "a"
            edits[(words[k - 1].start(), words[k - 1].end())] = article
    return _splice(text, edits)


def text_foils(caption: str) -> list[Foil]:
    """Rule-made NegCLIP-style foils of any caption, ``verified=False`` (nothing checks them
    against the image): the nouns on either side of a relation word exchanged, two different
    adjectives exchanged, two different nouns exchanged, by the word lists above; deduplicated,
    in that order (pick one with :func:`choose_foil`)."""
    words = list(_WORD.finditer(caption))
    low = [w.group().lower() for w in words]
    found: dict[str, str] = {}

    def add(kind: str, a: int, b: int) -> None:
        if low[a] != low[b]:
            text = _swap(caption, words, a, b)
            found.setdefault(text, kind)

    for i in range(len(low)):
        for phrase in RULE_RELATIONS:
            n = len(phrase.split())
            if " ".join(low[i:i + n]) == phrase:
                before = [k for k in range(i) if low[k] in RULE_NOUNS]
                after = [k for k in range(i + n, len(low)) if low[k] in RULE_NOUNS]
                if before and after:
                    add("swap_relation_args", before[-1], after[0])
                break
    for kind, vocab in (("swap_adjectives", RULE_ADJECTIVES), ("swap_nouns", RULE_NOUNS)):
        idx = [k for k, w in enumerate(low) if w in vocab]
        for x in range(len(idx)):
            for y in range(x + 1, len(idx)):
                add(kind, idx[x], idx[y])
    return [Foil(text, kind, False) for text, kind in found.items()]
