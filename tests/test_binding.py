"""Binding diagnostics (aladin.evaluation.binding) and benchmarks/binding_probe.py on a tiny scenes pipeline."""
import json
import math
import sys

import numpy as np
import pytest
import torch

from aladin.data.generate import generate, write_scenes
from aladin.data.manifest import write_dataset
from aladin.evaluation.binding import (bag_features, binding_probe, caption_probe_rows, family_scores, foil_accuracy,
                                       image_probe_rows, pair_scores, target_entropy, text_detectable,
                                       text_only_scores)
from aladin.errors import DataError
from aladin.features import extract_features
from aladin.models.factory import build_model, save_checkpoint
from aladin.params import AlignmentConfig, MatchingConfig
from aladin.retrieval.encode import encode_images, encode_texts
from aladin.retrieval.store_scores import score_store
from aladin.store import open_split
from benchmarks import binding_probe as script
from tests._params import section, write_params
from tests._stores import random_store


# --- foil accuracy and the text-only control --------------------------------------------------------

def test_foil_accuracy_equals_a_naive_loop_ties_counting_half():
    caption = np.array([3.0, 1.0, 2.0, 0.5, 4.0, 2.0])
    foil = np.array([1.0, 2.0, 2.0, 0.4, 5.0, 2.0])
    wins = 0.0
    for c, f in zip(caption, foil):
        wins += 1.0 if c > f else 0.5 if c == f else 0.0
    assert foil_accuracy(caption, foil) == pytest.approx(100 * wins / len(caption))
    assert foil_accuracy(np.ones(8), np.ones(8)) == 50.0           # blind to the edit: chance
    with pytest.raises(ValueError, match="foil_accuracy"):
        foil_accuracy(np.ones(3), np.ones(4))


def _pairs(n, rng, tell):
    """(caption, foil) pairs; with `tell` the foils carry an article error, as bad rule swaps do."""
    colours, shapes = ["red", "blue", "green", "orange"], ["circle", "square", "star", "ellipse"]
    out = []
    for _ in range(n):
        c1, c2 = rng.choice(colours, 2, replace=False)
        s1, s2 = rng.choice(shapes, 2, replace=False)
        caption = f"a {c1} {s1} left of a {c2} {s2}"
        foil = f"a {c2} {s1} left of a {c1} {s2}"
        out.append((caption, foil.replace("a orange", "an orange") if not tell else foil.replace("an ", "a ")))
    caps = [c.replace("a orange", "an orange") for c, _ in out]
    return list(zip(caps, [f for _, f in out]))


def test_text_only_control_finds_text_detectable_foils_and_not_clean_ones():
    rng = np.random.default_rng(0)
    detectable = foil_accuracy(*text_only_scores(_pairs(600, rng, True), _pairs(300, rng, True)))
    clean = foil_accuracy(*text_only_scores(_pairs(600, rng, False), _pairs(300, rng, False)))
    assert detectable > 65 and text_detectable(detectable, 300)
    assert abs(clean - 50) < 8 and not text_detectable(clean, 300)


def test_text_detectable_needs_more_than_noise():
    assert not text_detectable(54.0, 100_000)                  # 4 points: too small to matter
    assert not text_detectable(60.0, 20)                        # 10 points on 20 pairs: noise
    assert text_detectable(60.0, 2000)


# --- linear probes ------------------------------------------------------------------------------

SHAPES, COLOURS = ["circle", "square", "star"], ["red", "blue", "green", "white"]


def _scenes(n, rng):
    """Two objects of distinct shapes, each with a random colour."""
    out = []
    for _ in range(n):
        s = rng.choice(len(SHAPES), 2, replace=False)
        out.append([(int(s[k]), int(rng.integers(len(COLOURS)))) for k in range(2)])
    return out


def _planted(scenes, mix, bound):
    """Embeddings encoding each scene linearly through `mix`: bound = sum of shape x colour
    one-hots (binding), else the shapes' and colours' one-hots summed apart (a bag: no binding)."""
    width = len(SHAPES) * len(COLOURS) if bound else len(SHAPES) + len(COLOURS)
    code = np.zeros((len(scenes), width))
    for i, objs in enumerate(scenes):
        for s, c in objs:
            if bound:
                code[i, s * len(COLOURS) + c] += 1
            else:
                code[i, s] += 1
                code[i, len(SHAPES) + c] += 1
    return code @ mix[:width] + 0.05 * np.random.default_rng(len(scenes)).normal(size=(len(scenes), mix.shape[1]))


def _rows(scenes):
    recs = [{"objects": [{"shape": SHAPES[s], "colour": COLOURS[c]} for s, c in objs]} for objs in scenes]
    return image_probe_rows(recs)


def test_probes_recover_a_planted_binding_and_stay_at_chance_on_shuffled_labels():
    rng = np.random.default_rng(0)
    train, test = _scenes(600, rng), _scenes(300, rng)
    (r_tr, q_tr, y_tr), (r_te, q_te, y_te) = _rows(train), _rows(test)
    assert len(r_tr) == 1200                                    # both objects of every scene
    mix = rng.normal(size=(len(SHAPES) * len(COLOURS), 32))
    x_tr, x_te = _planted(train, mix, True), _planted(test, mix, True)
    res = binding_probe(x_tr[r_tr], q_tr, y_tr, x_te[r_te], q_te, y_te)
    assert res["accuracy"] > 95
    chance = 100 / len(COLOURS)
    assert abs(res["shuffled"] - chance) < 10 and res["majority"] < chance + 10
    # A bag of the same content cannot say which colour goes with which shape.
    bag = binding_probe(_planted(train, mix, False)[r_tr], q_tr, y_tr, _planted(test, mix, False)[r_te], q_te, y_te)
    assert bag["accuracy"] < 75


def test_probe_rows_and_bag_features():
    rec = {"objects": [{"shape": "circle", "colour": "red", "size": "large", "pattern": "plain", "cell": [0, 0]},
                       {"shape": "circle", "colour": "blue", "size": "small", "pattern": "plain", "cell": [0, 1]},
                       {"shape": "star", "colour": "green", "size": "small", "pattern": "dotted", "cell": [1, 1]}]}
    rows, q, y = image_probe_rows([rec, rec])
    assert rows.tolist() == [0, 1] and q == ["star", "star"] and y == ["green", "green"]   # two circles: ambiguous
    rows, q, y = caption_probe_rows(["A red circle left of a blue square", "Two red circles", "A circle",
                                     "A red circle and a blue circle"])
    assert list(zip(rows.tolist(), q, y)) == [(0, "circle", "red"), (0, "square", "blue"), (1, "circle", "red")]
    x = bag_features([rec["objects"]])
    assert x.sum() == 12 and x.max() == 2                       # 3 objects x 4 attributes; two circles, two smalls


# --- teacher family target and scoring paths ------------------------------------------------------

def test_target_entropy_on_hand_built_scores():
    scores = np.array([[1.0, 1.0, 1.0, 1.0], [5.0, 0.0, -np.inf, -np.inf]], np.float32)
    res = target_entropy(scores, np.array([2, 0]), temperature=1.0)
    p = np.exp([5.0, 0.0]) / np.exp([5.0, 0.0]).sum()
    assert res["entropy"] == pytest.approx((math.log(4) - (p * np.log(p)).sum()) / 2, rel=1e-6)
    assert res["uniform_entropy"] == pytest.approx((math.log(4) + math.log(2)) / 2)
    assert res["p_own"] == pytest.approx((0.25 + p[0]) / 2, rel=1e-6)
    assert res["family_r1"] == 50.0 and res["family_size"] == 3.0     # a four-way tie is no win


def test_pair_and_family_scores_agree_with_the_store_scorer(tmp_path):
    torch.manual_seed(0)
    store = random_store(tmp_path / "s", n_img=6, cpi=2)
    teacher = build_model("alignment", AlignmentConfig(d=16, layers=0, heads=2, ff=32), 10, 9).eval()
    student = build_model("matching", MatchingConfig(d_model=16, layers=1, heads=2, ff=32, dropout=0.0, dim=8),
                          10, 9).eval()
    full = score_store(teacher, store, "cpu", progress=False).numpy()                       # (6, 12)
    caps = np.array([0, 3, 5, 11])
    img = np.asarray(store.caption_image)[caps]
    batches = [store.caption_batch(caps[:3]), store.caption_batch(caps[3:])]
    assert np.allclose(pair_scores(teacher, store, img, batches), full[img, caps], atol=1e-5)
    dots = (encode_images(student, store, img) * encode_texts(student, store, caps)).sum(1)
    assert np.allclose(pair_scores(student, store, img, batches), dots, atol=1e-5)
    families = ["a", "a", "b", "b", "b", "c"]                   # images 0-1, 2-4, 5
    scores, own = family_scores(teacher, store, families, caps)
    members = {"a": [0, 1], "b": [2, 3, 4], "c": [5]}
    for row, (j, i) in enumerate(zip(caps, img)):
        fam = members[families[i]]
        assert np.allclose(scores[row, :len(fam)], full[fam, j], atol=1e-5)
        assert np.isneginf(scores[row, len(fam):]).all() and fam[own[row]] == i


# --- the script, on a tiny scenes pipeline ------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_scenes(tmp_path_factory):
    """data/, features/, untrained models/ and params.yaml of a few dozen scenes (plumbing, not quality)."""
    root = tmp_path_factory.mktemp("scenes")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = section("data", n_train=24, n_val=4, n_test=16, image_size=64, family_size=4, workers=1)
    images, records = generate(root / "data", cfg)
    write_dataset(root / "data" / "dataset.json", "scenes", cfg.source, cfg.captions_per_image, images)
    write_scenes(root / "data" / "scenes.jsonl", records)
    extract_features(section("features", image_size=64, max_tokens=32, num_workers=0, device="cpu"),
                     root / "data" / "dataset.json", root / "features", torch.device("cpu"))
    d_img, d_txt = (open_split(root / "features", "train").manifest[k] for k in ("d_img", "d_txt"))
    teacher_cfg = AlignmentConfig(d=16, layers=0, heads=2, ff=32)
    save_checkpoint(root / "models" / "teacher.pt", build_model("alignment", teacher_cfg, d_img, d_txt), "alignment",
                    teacher_cfg)
    student_cfg = MatchingConfig(d_model=16, layers=1, heads=2, ff=32, dropout=0.0, dim=8)
    for name in ("student", "student_triplet"):
        save_checkpoint(root / "models" / f"{name}.pt", build_model("matching", student_cfg, d_img, d_txt),
                        "matching", student_cfg)
    write_params(root)
    return root


def test_script_reports_every_figure(tiny_scenes, monkeypatch, capsys):
    out = tiny_scenes / "binding.json"
    monkeypatch.setattr(sys, "argv", ["binding_probe.py", "--root", str(tiny_scenes), "--threads", "1",
                                      "--out", str(out)])
    script.main()
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["foils"]["test_captions"] > 40                 # of 16 x 5 test captions
    assert set(report["foils"]["accuracy"]) == {"teacher", "student", "student_triplet", "text_only"}
    assert all(0 <= row["all"] <= 100 for row in report["foils"]["accuracy"].values())
    for side in ("image", "caption"):
        assert set(report["probes"][side]) == {"student", "student_triplet", "teacher_mean_tokens", "bag_of_attributes"}
    ft = report["family_target"]
    assert 0 <= ft["entropy"] <= ft["uniform_entropy"] + 1e-9 and 0 < ft["p_own"] <= 1
    assert report["teacher_temperature"] == 0.1
    assert "text-only control" in printed and "linear probes" in printed and "teacher target" in printed


def test_script_refuses_without_the_pipeline_outputs(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["binding_probe.py", "--root", str(tmp_path)])
    with pytest.raises(DataError) as error:
        script.main()                       # run_stage prints it as one line, exit 2
    message = str(error.value)
    assert "\n" not in message and "missing pipeline output" in message and "teacher.pt" in message
