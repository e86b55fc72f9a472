"""Compositional scenes: objects with attributes on a 3x3 layout grid, sampled in families.

A *family* is a group of scenes that share the same multiset of shapes, colours, sizes and
patterns but bind them differently (colours swapped between objects, positions swapped, ...).
Their bags of attribute words are identical, so only a model that binds attributes to objects
and objects to places can tell the members apart. A family always lands in a single split.

Layout: the image is a 3x3 grid of cells; each object occupies its own cell (so objects never
overlap and the largest fits), jittered inside it. Relations follow from the cells: "left of"
= smaller column, "above" = smaller row, "next to" = same row and adjacent columns; the jitter
is bounded so that these hold with a clear margin in pixels.
"""
from __future__ import annotations

import colorsys
import random
from dataclasses import dataclass, replace
from typing import Any

from .lexicon import COLOURS, PATTERNS, SHAPES, SIZE_FRACTION, SIZES

GRID = 3
OBJECT_COUNT_WEIGHTS = {1: 0.10, 2: 0.25, 3: 0.30, 4: 0.20, 5: 0.15}
MAX_JITTER = 0.05                     # of the image side: keeps relation margins >= ~0.23 side
BACKGROUND_STYLES = ("plain", "gradient", "tiles")
SWAPS = ("colour", "size", "pattern", "position")


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    pattern: str
    cell: tuple[int, int]             # (row, col) on the layout grid
    jitter: tuple[float, float]       # (dx, dy) in [-1, 1], scaled by the cell's free space

    def box(self, image_size: int) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) in pixels."""
        cell = image_size / GRID
        side = SIZE_FRACTION[self.size] * image_size
        slack = min((cell - side) / 2, MAX_JITTER * image_size)
        cx = (self.cell[1] + 0.5) * cell + self.jitter[0] * slack
        cy = (self.cell[0] + 0.5) * cell + self.jitter[1] * slack
        return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


@dataclass(frozen=True)
class Background:
    style: str                        # plain | gradient | tiles
    rgb: tuple[int, int, int]
    detail: int                       # gradient: direction in degrees; tiles: tiles per side; plain: 0


@dataclass(frozen=True)
class Scene:
    family: str                       # "<split>-<index of its first member>"
    objects: tuple[SceneObject, ...]
    background: Background

    def relations(self) -> list[tuple[int, str, int]]:
        """Every true (subject, relation, object) triple between distinct objects."""
        out = []
        for i, a in enumerate(self.objects):
            for j, b in enumerate(self.objects):
                if i == j:
                    continue
                (ra, ca), (rb, cb) = a.cell, b.cell
                if ca < cb:
                    out.append((i, "left_of", j))
                if ca > cb:
                    out.append((i, "right_of", j))
                if ra < rb:
                    out.append((i, "above", j))
                if ra > rb:
                    out.append((i, "below", j))
                if ra == rb and abs(ca - cb) == 1:
                    out.append((i, "next_to", j))
        return out

    def key(self) -> tuple:
        """Identity of the content (background excluded): equal keys = indistinguishable captions."""
        return tuple(sorted((o.shape, o.colour, o.size, o.pattern, o.cell) for o in self.objects))

    def record(self, image_id: str, image_size: int) -> dict[str, Any]:
        """The JSON scene record written to scenes.jsonl (boxes in pixels)."""
        return {
            "id": image_id,
            "family": self.family,
            "image_size": image_size,
            "background": {"style": self.background.style, "rgb": list(self.background.rgb),
                           "detail": self.background.detail},
            "objects": [{"shape": o.shape, "colour": o.colour, "size": o.size, "pattern": o.pattern,
                         "cell": list(o.cell), "jitter": [round(j, 4) for j in o.jitter],
                         "box": [round(v, 2) for v in o.box(image_size)]}
                        for o in self.objects],
            "relations": [[i, r, j] for i, r, j in self.relations()],
        }


def scene_from_record(rec: dict[str, Any]) -> Scene:
    bg = rec["background"]
    objects = tuple(SceneObject(o["shape"], o["colour"], o["size"], o["pattern"],
                                tuple(o["cell"]), tuple(o["jitter"])) for o in rec["objects"])
    return Scene(rec["family"], objects, Background(bg["style"], tuple(bg["rgb"]), bg["detail"]))


def sample_background(rng: random.Random) -> Background:
    # Low-saturation mid tones: white, black and every saturated colour stay visible on them.
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.03, 0.2), rng.uniform(0.45, 0.7))
    style = rng.choice(BACKGROUND_STYLES)
    detail = 0
    if style == "gradient":
        detail = rng.randrange(0, 360, 45)
    elif style == "tiles":
        detail = rng.choice([2, 4, 8])
    return Background(style, (round(r * 255), round(g * 255), round(b * 255)), detail)


def _jitter(rng: random.Random) -> tuple[float, float]:
    return (rng.uniform(-1, 1), rng.uniform(-1, 1))


def sample_base(rng: random.Random, family: str) -> Scene:
    k = rng.choices(list(OBJECT_COUNT_WEIGHTS), weights=list(OBJECT_COUNT_WEIGHTS.values()))[0]
    cells = rng.sample(range(GRID * GRID), k)
    objects = tuple(SceneObject(rng.choice(list(SHAPES)), rng.choice(list(COLOURS)), rng.choice(list(SIZES)),
                                rng.choice(list(PATTERNS)), divmod(c, GRID), _jitter(rng)) for c in cells)
    return Scene(family, objects, sample_background(rng))


def swap_variant(base: Scene, rng: random.Random) -> Scene:
    """Rebind the base's attributes: permute one or two attributes (or the cells) across objects.

    The multisets of shapes, colours, sizes and patterns never change.
    """
    objs = list(base.objects)
    k = len(objs)
    kinds = rng.sample(SWAPS, rng.choice([1, 1, 2])) if k > 1 else ["position"]
    for kind in kinds:
        if kind == "position":
            if k > 1 and rng.random() < 0.6:
                cells = [o.cell for o in objs]
                rng.shuffle(cells)
            else:                     # move to fresh cells: same words, new relations
                cells = [divmod(c, GRID) for c in rng.sample(range(GRID * GRID), k)]
            objs = [replace(o, cell=c, jitter=_jitter(rng)) for o, c in zip(objs, cells)]
        else:
            values = [getattr(o, kind) for o in objs]
            rng.shuffle(values)
            objs = [replace(o, **{kind: v}) for o, v in zip(objs, values)]
    return Scene(base.family, tuple(objs), sample_background(rng))


def sample_family(rng: random.Random, family: str, size: int) -> list[Scene]:
    """Up to `size` scenes with distinct content and the same attribute multisets."""
    base = sample_base(rng, family)
    scenes, seen = [base], {base.key()}
    for _ in range(20 * size):
        if len(scenes) == size:
            break
        v = swap_variant(base, rng)
        if v.key() not in seen:
            seen.add(v.key())
            scenes.append(v)
    rng.shuffle(scenes)               # the base is not always first
    return scenes


def sample_split(rng: random.Random, split: str, n: int, family_size: int) -> list[Scene]:
    """`n` scenes made of whole families (the last one may be cut short)."""
    scenes: list[Scene] = []
    while len(scenes) < n:
        family = f"{split}-{len(scenes)}"   # unique: the index of the family's first member
        scenes.extend(sample_family(rng, family, family_size)[: n - len(scenes)])
    return scenes
