"""Oracle ceiling: the parser's verdicts as a score matrix, ranked under the pessimistic tie rule."""
import random

import numpy as np

from aladin.evaluation import metrics as M
from aladin.data.captions import captions_for
from aladin.data.oracle import oracle_scores
from aladin.data.parser import is_true
from aladin.data.scenes import Background, Scene, SceneObject, sample_split


def _record(name, *objs):
    scene = Scene("f", tuple(SceneObject(*o, (0.0, 0.0)) for o in objs), Background("plain", (128, 128, 128), 0))
    return scene.record(name, 128)


def test_oracle_equals_the_parser_pair_by_pair():
    rng = random.Random(7)
    scenes = sample_split(rng, "test", 60, 4)
    records = [s.record(f"test-{k}", 128) for k, s in enumerate(scenes)]
    # Every scene's captions against every scene: siblings make many verdicts go either way.
    captions = [c for s in scenes for c in captions_for(s, rng, 3)] + ["There are three shapes", "A red circle."]
    captions.append(captions[0])                        # a repeated text gets the same column
    expected = np.array([[is_true(c, r) for c in captions] for r in records], dtype=np.float32)
    out = oracle_scores(records, captions)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, expected)
    assert 0 < expected.mean() < 0.5


def test_oracle_ranks_true_scene_first_and_ties_pessimistically():
    records = [
        _record("a", ("circle", "red", "large", "plain", (1, 0)), ("square", "blue", "small", "striped", (1, 1))),
        _record("b", ("circle", "blue", "large", "plain", (1, 0)), ("square", "red", "small", "striped", (1, 1))),
        _record("c", ("circle", "red", "large", "plain", (0, 1)), ("square", "blue", "small", "striped", (2, 1))),
    ]
    captions = ["A red circle to the left of a blue square.",   # image a only
                "A red circle",                                 # image a, also true of c
                "A blue circle to the left of a red square",    # image b only
                "A red circle above a blue square"]             # image c only
    cap_img = np.array([0, 0, 1, 2])
    s = oracle_scores(records, captions)
    np.testing.assert_array_equal(s, [[1, 1, 0, 0], [0, 0, 1, 0], [0, 1, 0, 1]])
    # t2i: "A red circle" ties a with c; c counts ahead of the correct image a.
    np.testing.assert_array_equal(M.ranks_t2i(s, cap_img), [1, 2, 1, 1])
    # i2t: image c's own caption ties with image a's "A red circle", which counts ahead.
    np.testing.assert_array_equal(M.ranks_i2t(s, cap_img), [1, 1, 2])


def test_oracle_of_no_captions():
    assert oracle_scores([_record("a", ("star", "green", "small", "plain", (0, 0)))], []).shape == (1, 0)
