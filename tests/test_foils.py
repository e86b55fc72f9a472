"""Foils (aladin.data.foils): verified edits of scene captions and rule-made swaps of any caption."""
import random
from collections import Counter

import pytest

from aladin.data.captions import captions_for
from aladin.data.foils import Foil, choose_foil, family_foils, normalise, scene_foils, text_foils
from aladin.data.parser import Relation, is_true, parse
from aladin.data.scenes import Background, Scene, SceneObject, sample_split


def _record(*objs):
    scene = Scene("f", tuple(SceneObject(*o, (0.0, 0.0)) for o in objs), Background("plain", (128, 128, 128), 0))
    return scene.record("a", 128)


# red circle left of a blue square (same row, adjacent: also next to it); a green star below the circle
SCENE = _record(("circle", "red", "large", "plain", (1, 0)), ("square", "blue", "small", "striped", (1, 1)),
                ("star", "green", "medium", "dotted", (2, 0)))


def _by_kind(caption, record=SCENE, exclude=()):
    foils = scene_foils(caption, record, random.Random(0), exclude)
    out = {}
    for f in foils:
        out.setdefault(f.kind, []).append(f.text)
    return out


def test_swap_attribute_exchanges_words_between_two_objects():
    kinds = _by_kind("A red circle to the left of a blue square.")
    assert "A blue circle to the left of a red square." in kinds["swap_attribute"]       # colours
    assert "A red square to the left of a blue circle." in kinds["swap_attribute"]       # shapes


def test_swap_attribute_keeps_the_slot_form_and_fixes_articles():
    with pytest.raises(ValueError, match="not true of its scene"):                    # no orange star
        _by_kind("There is a square in blue and an orange star")
    kinds = _by_kind("A square in blue and a red circle")
    assert "A square in red and a blue circle" in kinds["swap_attribute"]
    rec = _record(("circle", "orange", "large", "plain", (1, 0)), ("square", "blue", "small", "plain", (1, 1)))
    kinds = _by_kind("An orange circle left of a blue square", rec)
    assert "A blue circle left of an orange square" in kinds["swap_attribute"]


def test_swap_relation_exchanges_the_arguments_in_every_form():
    assert _by_kind("A red circle to the left of a blue square")["swap_relation"] == [
        "A blue square to the left of a red circle"]
    assert _by_kind("To the left of a blue square, there is a red circle")["swap_relation"] == [
        "To the left of a red circle, there is a blue square"]
    assert _by_kind("A blue square with a red circle to its left")["swap_relation"] == [
        "A red circle with a blue square to its left"]
    # next_to is symmetric: the swapped caption is still true, so it is no foil
    assert "swap_relation" not in _by_kind("A red circle next to a blue square")


def test_change_attribute_prefers_a_value_another_object_has():
    kinds = _by_kind("A large red circle")
    changed = kinds["change_attribute"]
    assert len(changed) == 3                            # one per stated attribute: size, colour, shape
    size, colour, shape = changed                       # in the order of the caption's slots
    assert size in ("A small red circle", "A little red circle", "A tiny red circle", "A medium red circle",
                    "A medium-sized red circle", "A mid-sized red circle")              # the scene's other sizes
    assert colour in ("A large blue circle", "A large green circle")
    assert shape in ("A large red square", "A large red box", "A large red block", "A large red star")


def test_foils_parse_contain_the_edit_and_are_false_of_their_scene():
    kinds = _by_kind("A red circle to the left of a blue square.")
    for texts in kinds.values():
        for t in texts:
            assert parse(t) and not is_true(t, SCENE)
    assert Relation({"colour": "blue", "shape": "square"}, "left_of", {"colour": "red", "shape": "circle"}) in \
        parse(kinds["swap_relation"][0])


def test_a_family_caption_is_never_a_foil():
    caption = "A red circle to the left of a blue square"
    sibling = "a BLUE circle to the left of a red square."          # same caption up to case and full stop
    assert normalise(sibling) == normalise("A blue circle to the left of a red square")
    texts = [f.text for f in scene_foils(caption, SCENE, random.Random(0), exclude=[sibling])]
    assert "A blue circle to the left of a red square" not in texts and texts


def test_generated_foils_are_false_of_their_scene_and_no_caption_of_their_family():
    rng = random.Random(5)
    scenes = sample_split(rng, "test", 120, 4)
    records = [s.record(f"t{k}", 128) for k, s in enumerate(scenes)]
    caps = [captions_for(s, rng, 5) for s in scenes]
    flat = [c for cs in caps for c in cs]
    image = [k for k, cs in enumerate(caps) for _ in cs]
    foils = family_foils(flat, image, records, seed=0)
    assert foils == family_foils(flat, image, records, seed=0)                  # deterministic
    assert foils != family_foils(flat, image, records, seed=1)
    family_texts: dict[str, set[str]] = {}
    for c, i in zip(flat, image):
        family_texts.setdefault(records[i]["family"], set()).add(normalise(c))
    found = [(f, records[i]) for f, i in zip(foils, image) if f is not None]
    assert len(found) > 0.8 * len(flat)
    for f, rec in found:
        assert f.verified and parse(f.text)
        assert not is_true(f.text, rec), f
        assert normalise(f.text) not in family_texts[rec["family"]], f
    kinds = Counter(f.kind for f, _ in found)
    assert set(kinds) == {"swap_attribute", "swap_relation", "change_attribute"}
    assert min(kinds.values()) > 0.1 * len(found)


def test_choose_foil_draws_a_kind_first():
    foils = [Foil(f"c{k}", "change_attribute", True) for k in range(20)] + [Foil("s", "swap_relation", True)]
    drawn = Counter(choose_foil(foils, random.Random(k)).kind for k in range(400))
    assert 150 < drawn["swap_relation"] < 250
    assert choose_foil([], random.Random(0)) is None


@pytest.mark.parametrize("caption, expected", [
    ("A young man riding a brown horse", {("A young horse riding a brown man", "swap_relation_args"),
                                          ("A brown man riding a young horse", "swap_adjectives")}),
    ("An old dog and a white cat.", {("A white dog and an old cat.", "swap_adjectives"),
                                     ("An old cat and a white dog.", "swap_nouns")}),
    ("A dog on a red table next to a cat", {("A table on a red dog next to a cat", "swap_relation_args"),
                                            ("A dog on a red cat next to a table", "swap_relation_args"),
                                            ("A cat on a red table next to a dog", "swap_nouns")}),
    ("Two dogs playing", set()),
])
def test_rule_swaps_on_hand_built_captions(caption, expected):
    foils = text_foils(caption)
    assert {(f.text, f.kind) for f in foils} == expected
    assert all(not f.verified for f in foils)
