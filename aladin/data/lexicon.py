"""The scenes' language: attribute values, the words for them, and relation / location phrases.

Shared by the caption generator (which picks among synonyms) and the caption parser (which maps
every phrase back to its canonical value). The canonical value of an attribute is the key of its
table; it is what scene records store and what the bag-of-words baseline sees.
"""
from __future__ import annotations

# Attribute tables: canonical value -> surface words (first = most common).
SHAPES: dict[str, list[str]] = {
    "circle": ["circle", "disc", "disk", "ball"],
    "square": ["square", "box", "block"],
    "triangle": ["triangle"],
    "diamond": ["diamond", "rhombus"],
    "star": ["star"],
    "cross": ["cross", "plus sign"],
}
PLURAL = {"box": "boxes", "cross": "crosses", "rhombus": "rhombuses", "plus sign": "plus signs"}
GENERIC_NOUNS = ["shape", "object", "thing", "figure", "item"]   # nouns that name no shape

COLOURS: dict[str, list[str]] = {
    "red": ["red"], "orange": ["orange"], "yellow": ["yellow"], "green": ["green"],
    "blue": ["blue"], "purple": ["purple", "violet"], "white": ["white"], "black": ["black"],
}
RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "orange": (245, 140, 30), "yellow": (240, 220, 40), "green": (50, 170, 60),
    "blue": (40, 90, 225), "purple": (140, 60, 190), "white": (245, 245, 245), "black": (25, 25, 25),
}
SIZES: dict[str, list[str]] = {
    "small": ["small", "little", "tiny"],
    "medium": ["medium", "medium-sized", "mid-sized"],
    "large": ["large", "big"],
}
SIZE_FRACTION = {"small": 0.16, "medium": 0.23, "large": 0.30}   # box side / image side
PATTERNS: dict[str, list[str]] = {
    "plain": ["plain", "solid"],
    "striped": ["striped", "stripy"],
    "dotted": ["dotted", "spotted", "polka-dot"],
    "hollow": ["hollow", "outlined", "empty"],
}
PATTERN_POST = {"striped": ["with stripes"], "dotted": ["with dots", "with spots", "with polka dots"]}
COLOUR_POST_LINKS = ["that is", "in", "colored", "coloured"]    # "a square in red"

ATTRIBUTES: dict[str, dict[str, list[str]]] = {
    "size": SIZES, "colour": COLOURS, "pattern": PATTERNS, "shape": SHAPES,
}

# Relations between two objects (subject REL object); next_to is symmetric.
RELATIONS: dict[str, list[str]] = {
    "left_of": ["left of", "to the left of", "on the left of", "on the left side of"],
    "right_of": ["right of", "to the right of", "on the right of", "on the right side of"],
    "above": ["above", "over", "higher than"],
    "below": ["below", "under", "beneath", "underneath", "lower than"],
    "next_to": ["next to", "beside", "alongside"],
}
INVERSE = {"left_of": "right_of", "right_of": "left_of", "above": "below", "below": "above",
           "next_to": "next_to"}
# "B with A to its left": the pronoun stands for the preceding noun phrase.
RELATIONS_ITS: dict[str, list[str]] = {
    "left_of": ["to its left", "on its left"],
    "right_of": ["to its right", "on its right"],
    "above": ["above it", "over it"],
    "below": ["below it", "under it", "beneath it"],
    "next_to": ["next to it", "beside it"],
}

# Absolute locations on the 3x3 layout grid: (allowed rows, allowed columns), None = any.
LOCATIONS: dict[str, tuple[set[int] | None, set[int] | None]] = {
    "top_left": ({0}, {0}), "top_right": ({0}, {2}), "bottom_left": ({2}, {0}), "bottom_right": ({2}, {2}),
    "top": ({0}, None), "bottom": ({2}, None), "left": (None, {0}), "right": (None, {2}),
    "centre": ({1}, {1}),
}
LOCATION_PHRASES: dict[str, list[str]] = {
    "top_left": ["in the top left corner", "in the upper left corner", "at the top left"],
    "top_right": ["in the top right corner", "in the upper right corner", "at the top right"],
    "bottom_left": ["in the bottom left corner", "in the lower left corner", "at the bottom left"],
    "bottom_right": ["in the bottom right corner", "in the lower right corner", "at the bottom right"],
    "top": ["at the top", "near the top", "in the upper part"],
    "bottom": ["at the bottom", "near the bottom", "in the lower part"],
    "left": ["on the left", "on the left side", "at the left"],
    "right": ["on the right", "on the right side", "at the right"],
    "centre": ["in the centre", "in the center", "in the middle"],
}

NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5}
SINGLE = ["a single", "only one", "just one"]      # count phrases for exactly one

# Phrases that carry no claim (openers, copulas, linkers).
FILLERS = [
    "there is", "there's", "there are", "we see", "we can see", "you can see", "i see",
    "a picture of", "an image of", "a photo of", "a drawing of", "a picture with", "an image with",
    "is", "are", "with", "in total", "in the picture", "in the image", "altogether",
]
SEPARATORS = [",", ";", ":", ".", "and", "while"]
WHICH = ["which is"]


def plural(word: str) -> str:
    return PLURAL.get(word, word + "s")


def word_for(attribute: str, value: str) -> str:
    """Canonical surface word of an attribute value (the bag-of-words baseline's vocabulary)."""
    return ATTRIBUTES[attribute][value][0]


def location_of(row: int, col: int) -> list[str]:
    """Every location name true of a grid cell."""
    return [name for name, (rows, cols) in LOCATIONS.items()
            if (rows is None or row in rows) and (cols is None or col in cols)]
