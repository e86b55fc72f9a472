"""Caption grammar: true, partial descriptions of a scene, with synonyms and varied word order.

Like a human caption, each one mentions a subset of the scene: a few objects with a few of their
attributes, a relation, a location or a count. Object descriptions are chosen to single out the
object within its scene where the attributes allow it, so captions stay informative.
"""
from __future__ import annotations

import random

from .lexicon import (COLOUR_POST_LINKS, COLOURS, GENERIC_NOUNS, LOCATION_PHRASES, NUMBERS, PATTERN_POST, PATTERNS,
                      RELATIONS, RELATIONS_ITS, INVERSE, SHAPES, SINGLE, SIZES, location_of, plural)
from .scenes import Scene, SceneObject

MAX_WORDS = 24
ATTRS = ("shape", "colour", "size", "pattern")
NUMBER_WORDS = {n: w for w, n in NUMBERS.items()}


def _matches(obj: SceneObject, desc: dict[str, str]) -> bool:
    return all(getattr(obj, a) == v for a, v in desc.items())


def _article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


def choose_description(scene: Scene, i: int, rng: random.Random) -> dict[str, str]:
    """A random subset of object i's attributes, grown until it singles the object out if it can."""
    obj = scene.objects[i]
    keep = {"shape": 0.85, "colour": 0.75, "size": 0.3, "pattern": 0.3}
    desc = {a: getattr(obj, a) for a in ATTRS if rng.random() < keep[a]}
    rest = [a for a in ATTRS if a not in desc]
    rng.shuffle(rest)
    while rest and (not desc or sum(_matches(o, desc) for o in scene.objects) > 1):
        a = rest.pop()
        desc[a] = getattr(obj, a)
    return desc


def noun_phrase(desc: dict[str, str], rng: random.Random, count: int | None = None) -> str:
    """Surface form of a description; `count` makes it a counted phrase ("two red circles")."""
    noun = rng.choice(SHAPES[desc["shape"]] if "shape" in desc else GENERIC_NOUNS)
    if count is not None and count > 1:
        noun = plural(noun)
    pre, post = [], []
    if "size" in desc:
        pre.append(rng.choice(SIZES[desc["size"]]))
    colour = rng.choice(COLOURS[desc["colour"]]) if "colour" in desc else None
    pattern = desc.get("pattern")
    if pattern in PATTERN_POST and rng.random() < 0.4:
        post.append(rng.choice(PATTERN_POST[pattern]))
        pattern = None
    pattern_word = rng.choice(PATTERNS[pattern]) if pattern else None
    if colour and not post and rng.random() < 0.15:
        post.append(f"{rng.choice(COLOUR_POST_LINKS)} {colour}")
        colour = None
    adjs = [w for w in (colour, pattern_word) if w]
    if len(adjs) == 2 and rng.random() < 0.3:
        adjs.reverse()
    words = pre + adjs + [noun] + post
    if count is None:
        det = "the" if rng.random() < 0.3 else _article(words[0])
    else:
        det = NUMBER_WORDS[count] if count > 1 or rng.random() < 0.5 else rng.choice(SINGLE)
    return " ".join([det] + words)


def _np(scene: Scene, i: int, rng: random.Random) -> str:
    return noun_phrase(choose_description(scene, i, rng), rng)


def clause_objects(scene: Scene, rng: random.Random) -> str:
    idx = rng.sample(range(len(scene.objects)), rng.randint(1, min(3, len(scene.objects))))
    nps = [_np(scene, i, rng) for i in idx]
    body = nps[0] if len(nps) == 1 else ", ".join(nps[:-1]) + " and " + nps[-1]
    opener = rng.choice(["", "", "there is ", "a picture of ", "an image of ", "we see ", "you can see "])
    return opener + body


def clause_relation(scene: Scene, rng: random.Random) -> str:
    i, rel, j = rng.choice(scene.relations())
    if rng.random() < 0.4:                      # say it the other way round
        i, rel, j = j, INVERSE[rel], i
    a, b = _np(scene, i, rng), _np(scene, j, rng)
    form = rng.randrange(4)
    if form == 0:
        return f"{a} {rng.choice(['is ', ''])}{rng.choice(RELATIONS[rel])} {b}"
    if form == 1:
        return f"there is {a} {rng.choice(RELATIONS[rel])} {b}"
    if form == 2:
        return f"{rng.choice(RELATIONS[rel])} {b}{rng.choice([',', ''])} there is {a}"
    return f"{b} with {a} {rng.choice(RELATIONS_ITS[rel])}"


def clause_chain(scene: Scene, rng: random.Random) -> str | None:
    """A relation continued from its object: "A is left of B, which is above C"."""
    rels = scene.relations()
    chains = [(r1, r2) for r1 in rels for r2 in rels if r2[0] == r1[2] and r2[2] != r1[0]]
    if not chains:
        return None
    (i, rel1, j), (_, rel2, m) = rng.choice(chains)
    return (f"{_np(scene, i, rng)} is {rng.choice(RELATIONS[rel1])} {_np(scene, j, rng)}, "
            f"which is {rng.choice(RELATIONS[rel2])} {_np(scene, m, rng)}")


def clause_location(scene: Scene, rng: random.Random) -> str:
    i = rng.randrange(len(scene.objects))
    where = rng.choice(LOCATION_PHRASES[rng.choice(location_of(*scene.objects[i].cell))])
    a = _np(scene, i, rng)
    form = rng.randrange(3)
    if form == 0:
        return f"{a} {rng.choice(['is ', ''])}{where}"
    if form == 1:
        return f"{where}{rng.choice([',', ''])} there is {a}"
    return f"there is {a} {where}"


def clause_count(scene: Scene, rng: random.Random) -> str:
    if rng.random() < 0.5:                      # how many objects in all
        desc: dict[str, str] = {}
    else:                                       # how many share one or two attributes
        obj = rng.choice(scene.objects)
        desc = {a: getattr(obj, a) for a in rng.sample(ATTRS, rng.choice([1, 1, 2]))}
    n = sum(_matches(o, desc) for o in scene.objects)
    phrase = noun_phrase(desc, rng, count=n)
    opener = rng.choice(["", "there are " if n > 1 else "there is ", "a picture with "])
    return opener + phrase + rng.choice(["", "", " in total"] + [" in the picture"] * (opener != "a picture with "))


def caption(scene: Scene, rng: random.Random) -> str:
    """One caption: one clause, sometimes followed by a second of another kind."""
    # A lone object is told apart from its family (same object elsewhere) by where it is.
    kinds = ["objects", "count", "location"] + (["relation", "relation", "chain"] if len(scene.objects) > 1
                                                else ["location"])
    makers = {"objects": clause_objects, "relation": clause_relation, "chain": clause_chain,
              "location": clause_location, "count": clause_count}
    first = rng.choice(kinds)
    text = makers[first](scene, rng) or clause_relation(scene, rng)
    if len(text.split()) <= 9 and rng.random() < 0.5:
        second = makers[rng.choice([k for k in kinds if k != first])](scene, rng)
        if second:
            joiner = rng.choice([", and ", ". ", "; ", ", "])
            text += joiner + (second[0].upper() + second[1:] if joiner == ". " else second)
    text = text[0].upper() + text[1:]
    return text + ("." if rng.random() < 0.5 and not text.endswith(".") else "")


def captions_for(scene: Scene, rng: random.Random, n: int) -> list[str]:
    """`n` distinct captions of at most MAX_WORDS words."""
    out: list[str] = []
    for _ in range(100 * n):
        c = caption(scene, rng)
        if c not in out and len(c.split()) <= MAX_WORDS:
            out.append(c)
            if len(out) == n:
                return out
    raise RuntimeError(f"could not write {n} distinct captions for scene {scene}")
