"""The embedded scenes dataset: determinism, caption truth, families, manifest, baselines, stage."""
import json
import random
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aladin.data import load_dataset, write_dataset
from aladin.data.baselines import scene_words
from aladin.data.captions import captions_for
from aladin.data.generate import generate
from aladin.evaluation.dataset import chance_metrics, dataset_metrics
from aladin.data.parser import Count, Exists, Location, ParseError, Relation, is_true, parse
from aladin.data.render import render
from aladin.data.scenes import Background, Scene, SceneObject, sample_split, scene_from_record
from aladin.errors import ConfigError, DataError
from aladin.params import DataParams
from tests._params import run_stage, section, write_params

REPO = Path(__file__).resolve().parents[1]


def tiny(**kw) -> DataParams:
    return section("data", **{"n_train": 8, "n_val": 4, "n_test": 8, "workers": 1, **kw})


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """200 test images on disk with their records (shared by the baseline and family tests)."""
    out = tmp_path_factory.mktemp("small")
    images, records = generate(out, tiny(n_train=40, n_test=200, seed=0))
    return images, records


# --- generator --------------------------------------------------------------------------------

def _outputs(images):
    return [(im.id, im.split, im.captions, im.file.read_bytes()) for im in images]


def test_same_seed_same_bytes_any_worker_count_and_other_seed_differs(tmp_path):
    a = generate(tmp_path / "a", tiny(seed=7))
    b = generate(tmp_path / "b", tiny(workers=2, seed=7))
    c = generate(tmp_path / "c", tiny(seed=8))
    assert _outputs(a[0]) == _outputs(b[0])
    assert a[1] == b[1]
    pngs_a = [im.file.read_bytes() for im in a[0]]
    pngs_c = [im.file.read_bytes() for im in c[0]]
    assert sum(x != y for x, y in zip(pngs_a, pngs_c)) > len(pngs_a) // 2
    assert [im.captions for im in a[0]] != [im.captions for im in c[0]]


def test_test_split_does_not_depend_on_n_train(tmp_path):
    a, _ = generate(tmp_path / "a", tiny(n_train=3, seed=1))
    b, _ = generate(tmp_path / "b", tiny(n_train=9, seed=1))
    assert [im.captions for im in a if im.split == "test"] == [im.captions for im in b if im.split == "test"]


def test_images_are_rgb_png_of_the_configured_size(small):
    images, _ = small
    with Image.open(images[0].file) as im:
        assert (im.format, im.mode, im.size) == ("PNG", "RGB", (128, 128))
        assert len(np.unique(np.asarray(im).reshape(-1, 3), axis=0)) > 3     # not blank


def test_records_are_complete_and_relations_match_the_boxes(small):
    images, records = small
    for im, rec in zip(images[:50], records[:50]):
        # The record alone re-renders the exact image.
        assert np.array_equal(np.asarray(render(scene_from_record(rec), rec["image_size"])),
                              np.asarray(Image.open(im.file)))
        centre = [((o["box"][0] + o["box"][2]) / 2, (o["box"][1] + o["box"][3]) / 2) for o in rec["objects"]]
        margin = 0.2 * rec["image_size"]
        for i, r, j in rec["relations"]:
            (xi, yi), (xj, yj) = centre[i], centre[j]
            assert {"left_of": xi < xj - margin, "right_of": xi > xj + margin,
                    "above": yi < yj - margin, "below": yi > yj + margin,
                    "next_to": abs(yi - yj) < margin and margin < abs(xi - xj) < 0.5 * rec["image_size"]}[r], (rec, i, r, j)
        for k, (x0, y0, x1, y1) in enumerate(o["box"] for o in rec["objects"]):
            assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128 and 20 <= x1 - x0 <= 40
            for (a0, b0, a1, b1) in (o["box"] for o in rec["objects"][k + 1:]):
                assert x1 <= a0 + 0.01 or a1 <= x0 + 0.01 or y1 <= b0 + 0.01 or b1 <= y0 + 0.01   # no overlap


def test_every_caption_is_true_of_its_scene_and_five_are_distinct():
    rng = random.Random(11)
    scenes = sample_split(rng, "test", 300, 4)
    for k, scene in enumerate(scenes):
        caps = captions_for(scene, rng, 5)
        assert len(set(caps)) == 5 and all(c.strip() for c in caps)
        rec = scene.record(f"s{k}", 128)
        for c in caps:
            assert parse(c), c
            assert is_true(c, rec), (c, rec)
    assert {len(s.objects) for s in scenes} == {1, 2, 3, 4, 5}


def test_families_share_words_differ_in_binding_and_stay_in_one_split(small):
    images, records = small
    split_of = {}
    by_family = {}
    for im, rec in zip(images, records):
        assert split_of.setdefault(rec["family"], im.split) == im.split
        by_family.setdefault(rec["family"], []).append(rec)
    multi = [f for f in by_family.values() if len(f) > 1]
    assert len(multi) > len(by_family) // 2
    for fam in multi:
        bags = {tuple(sorted(scene_words(r).split())) for r in fam}
        assert len(bags) == 1                                          # same bag of words
        contents = {tuple(sorted(json.dumps([o["shape"], o["colour"], o["size"], o["pattern"], o["cell"]])
                                 for o in r["objects"])) for r in fam}
        assert len(contents) == len(fam)                               # ... bound differently


# --- parser -----------------------------------------------------------------------------------

def _scene(*objs):
    return Scene("f", tuple(SceneObject(*o, (0.0, 0.0)) for o in objs), Background("plain", (128, 128, 128), 0))


RED_LEFT = _scene(("circle", "red", "large", "plain", (1, 0)), ("square", "blue", "small", "striped", (1, 1))).record("a", 128)


@pytest.mark.parametrize("caption, truth", [
    ("A red circle to the left of a blue square.", True),
    ("The blue square is right of the red ball", True),
    ("To the left of a striped box, there is a big red disc", True),
    ("A blue square with a red circle to its left", True),
    ("A red circle next to a small blue square with stripes", True),
    ("There are two shapes; a red circle on the left", True),
    ("A square colored blue in the centre", True),
    ("One red shape and one blue shape", True),
    ("A blue circle to the left of a red square", False),       # colours swapped
    ("A red circle to the right of a blue square", False),      # relation reversed
    ("A blue square with a red circle to its right", False),
    ("A red circle above a blue square", False),
    ("A small red circle", False),
    ("A plain blue square", False),
    ("There are three shapes", False),
    ("Two red shapes", False),
    ("A red circle in the top left corner", False),
    ("A green star", False),
])
def test_parser_checks_claims(caption, truth):
    assert is_true(caption, RED_LEFT) is truth


def test_parser_reads_structure():
    claims = parse("A red circle is left of a blue square, which is above a small star")
    rels = [c for c in claims if isinstance(c, Relation)]
    assert rels == [Relation({"colour": "red", "shape": "circle"}, "left_of", {"colour": "blue", "shape": "square"}),
                    Relation({"colour": "blue", "shape": "square"}, "above", {"size": "small", "shape": "star"})]
    assert Count({"shape": "circle"}, 3) in parse("there are three circles")
    assert Location({"pattern": "hollow", "shape": "cross"}, "bottom") in parse("At the bottom, an outlined cross")
    assert Exists({"colour": "purple", "shape": "diamond"}) in parse("a violet rhombus")
    for bad in ("a red", "a purple dragon", "red circle", "two circle", "a circle left of", "a red blue circle"):
        with pytest.raises(ParseError):
            parse(bad)


def test_captions_of_family_siblings_are_often_false(small):
    images, records = small
    by_family = {}
    for im, rec in zip(images, records):
        by_family.setdefault(rec["family"], []).append((im, rec))
    verdicts = [is_true(c, rb) for fam in by_family.values() for a, _ in fam for b, rb in fam if a is not b
                for c in a.captions]
    assert len(verdicts) > 200 and 0.3 < 1 - np.mean(verdicts) < 0.95


# --- manifest ---------------------------------------------------------------------------------

def _manifest(tmp_path, mutate=None):
    (tmp_path / "img").mkdir(exist_ok=True)
    images = []
    for k, split in enumerate(["train", "val", "test"]):
        f = tmp_path / "img" / f"{k}.png"
        f.write_bytes(b"png")
        images.append({"id": f"i{k}", "file": f"img/{k}.png", "split": split, "captions": [f"c{k}{j}" for j in range(5)]})
    raw = {"name": "t", "source": "test", "captions_per_image": 5, "images": images}
    if mutate:
        mutate(raw)
    (tmp_path / "dataset.json").write_text(json.dumps(raw))
    return tmp_path / "dataset.json"


def test_manifest_round_trip(tmp_path):
    ds = load_dataset(_manifest(tmp_path))
    assert [im.split for im in ds.images] == ["train", "val", "test"] and ds.captions_per_image == 5
    assert ds.split("val")[0].file == (tmp_path / "img" / "1.png").resolve()
    out = tmp_path / "copy" / "dataset.json"
    write_dataset(out, ds.name, ds.source, 5, ds.images)
    again = load_dataset(out)
    assert again.images == ds.images
    assert json.loads(out.read_text())["images"][0]["file"] == str((tmp_path / "img" / "0.png").resolve())


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r["images"][1].update(file="img/missing.png"), "'i1'.*not found"),
    (lambda r: r["images"][2]["captions"].pop(), "'i2'.*expected 5 captions, got 4"),
    (lambda r: r["images"][0]["captions"].__setitem__(3, "  "), "'i0'.*caption 3 is empty"),
    (lambda r: r["images"][2].update(split="dev"), "'i2'.*unknown split 'dev'"),
    (lambda r: r["images"][2].update(id="i0"), "'i0' repeated"),
    (lambda r: r["images"][1].update(split="train"), "split 'val' has no images"),
    (lambda r: r["images"][1].pop("captions"), r"images\[1\].*missing field\(s\) captions"),
    (lambda r: r.update(captions_per_image=0), "captions_per_image"),
])
def test_manifest_errors_name_file_and_image(tmp_path, mutate, message):
    with pytest.raises(DataError, match=message) as e:
        load_dataset(_manifest(tmp_path, mutate))
    assert "dataset.json" in str(e.value)


# --- baselines --------------------------------------------------------------------------------

def test_baselines_beat_chance_but_cannot_bind_attributes(small):
    images, records = small
    m = dataset_metrics(images, records, 5)
    assert m["captions_verified"] == len(images) * 5
    assert m["images"] == {"train": 40, "val": 4, "test": 200}
    key = "n200"
    chance = chance_metrics(200, 5)
    assert m["baselines"]["chance"][key] == pytest.approx({k: round(v, 3) for k, v in chance.items()})
    for name in ("bow_tfidf", "colour_histogram"):
        b = m["baselines"][name][key]
        assert b["rsum"] > 3 * chance["rsum"], name
        assert b["t2i_r1"] < 25 and b["i2t_r1"] < 40, name             # far from a binding model
    # Family members have identical word bags: bag-of-words ties them, and ties count against.
    assert m["baselines"]["bow_tfidf"][key]["t2i_r1"] < 5


def test_chance_matches_a_random_scorer():
    from aladin.evaluation.metrics import retrieval_metrics
    rng = np.random.default_rng(0)
    sims = [retrieval_metrics(rng.random((100, 500)), np.repeat(np.arange(100), 5)) for _ in range(20)]
    expected = chance_metrics(100, 5)
    for k in ("i2t_r10", "t2i_r10"):
        assert np.mean([s[k] for s in sims]) == pytest.approx(expected[k], abs=2.0)


# --- config and stage -------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [("n_train", 0), ("n_test", -5), ("image_size", 32),
                                          ("captions_per_image", 0), ("family_size", 9), ("source", "coco")])
def test_bad_params_name_the_field(field, value):
    with pytest.raises(ConfigError, match=f"data.{field}"):
        tiny(**{field: value})


def _run_stage(cwd: Path, data: dict) -> subprocess.CompletedProcess:
    write_params(cwd, {"data": {"seed": 3, **data}})
    return run_stage("data", cwd)


def test_stage_end_to_end_and_bad_param(tmp_path):
    params = {"n_train": 12, "n_val": 4, "n_test": 20, "image_size": 96, "workers": 1}
    r = _run_stage(tmp_path, params)
    assert r.returncode == 0, r.stderr
    ds = load_dataset(tmp_path / "data" / "dataset.json")
    assert Counter(im.split for im in ds.images) == {"train": 12, "val": 4, "test": 20}
    assert ds.images[0].file == (tmp_path / "data" / "images" / "train" / "000000.png").resolve()
    raw = json.loads((tmp_path / "data" / "dataset.json").read_text())
    assert raw["images"][0]["file"] == "images/train/000000.png" and raw["name"] == "scenes"
    recs = [json.loads(line) for line in (tmp_path / "data" / "scenes.jsonl").read_text().splitlines()]
    assert [r["id"] for r in recs] == [im.id for im in ds.images]
    metrics = json.loads((tmp_path / "metrics" / "data.json").read_text())
    assert set(metrics["baselines"]) == {"bow_tfidf", "colour_histogram", "chance"}
    assert metrics["captions_verified"] == 36 * 5

    bad = tmp_path / "bad"
    bad.mkdir()
    r = _run_stage(bad, {**params, "n_train": 0})
    assert r.returncode == 2 and "data.n_train" in r.stderr
    assert sorted(p.name for p in bad.iterdir()) == ["params.yaml"]      # nothing half-written
