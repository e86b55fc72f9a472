"""Real-dataset readers: each format is written here in its exact on-disk layout, then read back
through the same functions the stages call (prepare -> open_precomputed -> write_region_features)."""
import base64
import json

import numpy as np
import pytest
from PIL import Image

from aladin.config import from_dict
from aladin.data.manifest import Dataset, load_dataset, write_dataset
from aladin.datasets import (KarpathyConfig, PrecompConfig, VinvlTsvConfig, eccv_metrics,
                             eccv_metrics_from_topk, load_coco_ids, open_precomputed, prepare,
                             write_region_features)
from aladin.errors import ConfigError, DataError
from aladin.store import FeatureStore, StoreWriter, open_split
from tests._params import run_stage, write_params

CPI = 5


def _prepare(source, cfg, data_dir) -> Dataset:
    """What the data stage does: convert, write dataset.json, and read it back as every stage does."""
    name, images = prepare(source, cfg, CPI, data_dir)
    write_dataset(data_dir / "dataset.json", name, source, CPI, images)
    return load_dataset(data_dir / "dataset.json")


# ---------------------------------------------------------------- Karpathy split files

def _karpathy(tmp_path, coco=True, n_sentences=None, drop_image=None):
    """A dataset_coco.json (or flickr30k) with 2 train, 1 restval, 2 val, 2 test images."""
    root = tmp_path / "images"
    splits = ["train", "train", "restval", "val", "val", "test", "test"]
    images = []
    for i, split in enumerate(splits):
        folder = "val2014" if split in ("val", "test", "restval") else "train2014"
        name = f"COCO_{folder}_{100 + i:012d}.jpg" if coco else f"{1000 + i}.jpg"
        rel = root / folder / name if coco else root / name
        if i != drop_image:
            rel.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 6), (i * 30, 0, 0)).save(rel)
        n = (n_sentences or {}).get(i, 6 if i == 0 else 5)   # COCO has some 6-caption images
        img = {"split": split, "filename": name, "imgid": i,
               "sentences": [{"raw": f"image {i} caption {j} ", "tokens": [], "imgid": i, "sentid": 10 * i + j}
                             for j in range(n)]}
        if coco:
            img.update(filepath=folder, cocoid=100 + i)
        images.append(img)
    path = tmp_path / ("dataset_coco.json" if coco else "dataset_flickr30k.json")
    path.write_text(json.dumps({"dataset": "coco" if coco else "flickr30k", "images": images}))
    return path, root


def test_karpathy_coco_manifest(tmp_path):
    ann, root = _karpathy(tmp_path)
    cfg = KarpathyConfig(annotations=str(ann), images=str(root))
    m = _prepare("karpathy", cfg, tmp_path / "data")
    assert (m.name, m.source, m.captions_per_image) == ("coco", "karpathy", 5)
    assert [(r.id, r.split) for r in m.images] == [
        ("100", "train"), ("101", "train"), ("102", "train"), ("103", "val"), ("104", "val"),
        ("105", "test"), ("106", "test")]
    first = m.images[0]
    assert first.captions == [f"image 0 caption {j}" for j in range(5)]   # 6th dropped, stripped
    assert first.file == root / "train2014" / "COCO_train2014_000000000100.jpg"
    assert open_precomputed(tmp_path / "data") is None      # images go through the vision backbone

    m = _prepare("karpathy", KarpathyConfig(annotations=str(ann), images=str(root), restval=False,
                                            val_images=1), tmp_path / "data")
    assert [r.id for r in m.images] == ["100", "101", "103", "105", "106"]


def test_karpathy_flickr_ids_are_file_stems(tmp_path):
    ann, root = _karpathy(tmp_path, coco=False)
    m = _prepare("karpathy", KarpathyConfig(annotations=str(ann), images=str(root)), tmp_path / "d")
    assert m.name == "flickr30k"
    assert [r.id for r in m.split("test")] == ["1005", "1006"]
    assert m.images[-1].file == root / "1006.jpg"


@pytest.mark.parametrize("kwargs, match", [
    ({"drop_image": 4}, r"images\[4\] \(id 104\): image .*COCO_val2014_000000000104.jpg not found"),
    ({"n_sentences": {5: 4}}, r"images\[5\] \(id 105\): 4 captions, need 5"),
])
def test_karpathy_bad_input(tmp_path, kwargs, match):
    ann, root = _karpathy(tmp_path, **kwargs)
    with pytest.raises(DataError, match=match) as e:
        prepare("karpathy", KarpathyConfig(annotations=str(ann), images=str(root)), CPI, tmp_path / "d")
    assert "dataset_coco.json" in str(e.value)


def test_karpathy_rejects_what_the_features_stage_would(tmp_path):
    """A blank caption or an undecodable image is reported against the split file and its record,
    not later by the features stage against data/dataset.json."""
    ann, root = _karpathy(tmp_path)
    cfg = KarpathyConfig(annotations=str(ann), images=str(root))
    data = json.loads(ann.read_text())
    data["images"][3]["sentences"][2]["raw"] = " \t "
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"dataset_coco.json: images\[3\] \(id 103\): sentences\[2\] is empty$"):
        prepare("karpathy", cfg, CPI, tmp_path / "d")
    data["images"][3]["sentences"][5:] = [{"raw": ""}]        # past captions_per_image: dropped, not checked
    data["images"][3]["sentences"][2]["raw"] = "fixed"
    ann.write_text(json.dumps(data))
    prepare("karpathy", cfg, CPI, tmp_path / "d")

    fake = root / "val2014" / "COCO_val2014_000000000106.jpg"
    fake.write_text("not an image\n")
    with pytest.raises(DataError, match=r"dataset_coco.json: images\[6\] \(id 106\): image "
                                        r".*COCO_val2014_000000000106.jpg: cannot decode image"):
        prepare("karpathy", cfg, CPI, tmp_path / "d")


def test_karpathy_empty_split(tmp_path):
    ann, root = _karpathy(tmp_path)
    data = json.loads(ann.read_text())
    data["images"] = [i for i in data["images"] if i["split"] != "test"]
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match="dataset_coco.json: the 'test' split is empty"):
        prepare("karpathy", KarpathyConfig(annotations=str(ann), images=str(root)), CPI, tmp_path / "d")


def test_selected_source_needs_paths(tmp_path):
    cfg = from_dict(KarpathyConfig, {"images": "x"}, "data.karpathy")    # unused sections may be empty
    with pytest.raises(ConfigError, match="data.karpathy.annotations: path"):
        prepare("karpathy", cfg, CPI, tmp_path)
    cfg = from_dict(VinvlTsvConfig, {"features": "f.tsv", "captions": "k.json", "test_captions": "t.json"},
                    "data.vinvl_tsv")
    with pytest.raises(ConfigError, match="data.vinvl_tsv.captions: give either"):
        prepare("vinvl_tsv", cfg, CPI, tmp_path)
    with pytest.raises(ConfigError, match="data.precomp.val_images"):
        from_dict(PrecompConfig, {"val_images": -1}, "data.precomp")


# ---------------------------------------------------------------- store round trip

def _store_regions(tmp_path, data_dir, split, image_ids):
    """Run the features stage's image side for one split; return the store."""
    source = open_precomputed(data_dir)
    path = tmp_path / "features" / split
    with StoreWriter(path, len(image_ids), source.max_regions, source.dim, 1, 1, 4) as w:
        write_region_features(w, source, split, image_ids, batch_size=2)
        w.write_captions(0, np.zeros((1, 1, 4), np.float16), np.ones(1, np.int32))
        w.finish(image_ids, [""] * len(image_ids), ["c"], np.zeros(1, np.int64), {})
    return FeatureStore(path)


# ---------------------------------------------------------------- SCAN / VSE++ precomp

def _precomp(root, n=(3, 2, 2), regions=4, dim=8, repeat_rows=False):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for name, k in zip(("train", "dev", "testall"), n):
        ims = rng.normal(size=(k, regions, dim)).astype(np.float32)
        arrays[name] = ims
        np.save(root / f"{name}_ims.npy", np.repeat(ims, CPI, axis=0) if repeat_rows else ims)
        (root / f"{name}_caps.txt").write_text(
            "".join(f"{name} image {i} caption {j}\n" for i in range(k) for j in range(CPI)))
    (root / "testall_ids.txt").write_text("".join(f"{500 + i}\n" for i in range(n[2])))
    return arrays


@pytest.mark.parametrize("repeat_rows", [False, True])
def test_precomp_round_trip(tmp_path, repeat_rows):
    arrays = _precomp(tmp_path / "coco_precomp", repeat_rows=repeat_rows)
    cfg = PrecompConfig(root=str(tmp_path / "coco_precomp"), test="testall")
    m = _prepare("precomp", cfg, tmp_path / "data")
    assert m.name == "coco_precomp"
    test = m.split("test")
    assert [r.id for r in test] == ["500", "501"]                     # from testall_ids.txt
    assert [r.id for r in m.split("train")] == ["train_0", "train_1", "train_2"]
    assert test[1].captions == [f"testall image 1 caption {j}" for j in range(CPI)]
    store = _store_regions(tmp_path, tmp_path / "data", "test", [r.id for r in test])
    np.testing.assert_allclose(store.regions, arrays["testall"], rtol=1e-3, atol=1e-3)  # float16 store
    assert store.region_counts.tolist() == [4, 4] and not store.boxes.any()


def test_precomp_caption_count_mismatch(tmp_path):
    root = tmp_path / "p"
    _precomp(root)
    with open(root / "dev_caps.txt", "a") as f:
        f.write("one caption too many\n")
    with pytest.raises(DataError, match=r"dev_caps.txt: 11 captions for the 2 images of .*dev_ims.npy"):
        prepare("precomp", PrecompConfig(root=str(root)), CPI, tmp_path / "data")


def test_precomp_width_mismatch(tmp_path):
    root = tmp_path / "p"
    _precomp(root)
    np.save(root / "dev_ims.npy", np.zeros((2, 4, 6), np.float32))
    with pytest.raises(DataError, match=r"dev_ims.npy: features of shape \(4, 6\)"):
        prepare("precomp", PrecompConfig(root=str(root)), CPI, tmp_path / "data")
    _precomp(root)
    m = _prepare("precomp", PrecompConfig(root=str(root), test="testall"), tmp_path / "data")
    np.save(root / "testall_ims.npy", np.zeros((2, 4, 6), np.float32))    # replaced after the data stage
    ids = [r.id for r in m.split("test")]
    with pytest.raises(DataError, match=r"testall_ims.npy: regions of width 6, .*precomputed.json says 8"):
        _store_regions(tmp_path, tmp_path / "data", "test", ids)


def _stage(name, cwd):
    return run_stage(name, cwd)


def test_data_and_features_stages_on_precomp(tmp_path):
    """params.yaml `data.source: precomp` -> data/ (manifest + sidecar) -> feature stores with its regions."""
    arrays = _precomp(tmp_path / "coco_precomp")
    write_params(tmp_path, {"data": {"source": "precomp",
                                     "precomp": {"root": str(tmp_path / "coco_precomp"), "test": "testall"}},
                            "features": {"max_tokens": 12, "batch_size": 8, "device": "cpu"}})
    proc = _stage("data", tmp_path)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads((tmp_path / "metrics" / "data.json").read_text())
    assert stats["images"] == {"train": 3, "val": 2, "test": 2} and stats["captions"] == 35
    proc = _stage("features", tmp_path)
    assert proc.returncode == 0, proc.stderr
    store = open_split(tmp_path / "features", "train")
    np.testing.assert_allclose(store.regions, arrays["train"], rtol=1e-3, atol=1e-3)
    assert store.captions[5] == "train image 1 caption 0" and store.tokens.shape[2] == 384

    # The features replaced by a wider release: exit 2, one line naming the file.
    np.save(tmp_path / "coco_precomp" / "train_ims.npy", np.zeros((3, 4, 16), np.float32))
    proc = _stage("features", tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "train_ims.npy: regions of width 16" in proc.stderr


# ---------------------------------------------------------------- VinVL features.tsv

DIM = 8


def _row(iid, feats, count=None, b64=None):
    b64 = b64 or base64.b64encode(feats.astype(np.float32).tobytes()).decode()
    return f"{iid}\t{len(feats) if count is None else count}\t{b64}\n"


def _vinvl(tmp_path, counts=(3, 5, 2, 4), lineidx=False, bad_row=None):
    """features.tsv in an order unrelated to the captions, + imageid2idx.json + per-split captions."""
    d = tmp_path / "vinvl"
    d.mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    ids = [str(700 + i) for i in range(len(counts))]
    feats = {iid: rng.normal(size=(c, DIM + 6)).astype(np.float32) for iid, c in zip(ids, counts)}
    order = ids[::-1]
    rows = [_row(iid, feats[iid]) for iid in order]
    if bad_row is not None:
        rows[bad_row[0]] = bad_row[1](order[bad_row[0]], feats[order[bad_row[0]]])
    (d / "features.tsv").write_text("".join(rows))
    if lineidx:
        offsets = np.cumsum([0] + [len(r.encode()) for r in rows[:-1]])
        (d / "features.lineidx").write_text("".join(f"{o}\n" for o in offsets))
    (d / "imageid2idx.json").write_text(json.dumps({iid: i for i, iid in enumerate(order)}))
    for split, part in (("train", ids[:2]), ("val", ids[2:3]), ("test", ids[3:])):
        (d / f"{split}_captions.json").write_text(json.dumps(
            {iid: [f"{iid} caption {j}" for j in range(CPI)] for iid in part}))
    cfg = VinvlTsvConfig(features=str(d / "features.tsv"), dim=DIM, max_regions=4,
                         **{f"{s}_captions": str(d / f"{s}_captions.json") for s in ("train", "val", "test")})
    return cfg, feats


@pytest.mark.parametrize("lineidx", [False, True])
def test_vinvl_round_trip(tmp_path, lineidx):
    cfg, feats = _vinvl(tmp_path, lineidx=lineidx)
    m = _prepare("vinvl_tsv", cfg, tmp_path / "data")
    train = [r.id for r in m.split("train")]
    assert train == ["700", "701"] and m.images[0].captions[4] == "700 caption 4"
    store = _store_regions(tmp_path, tmp_path / "data", "train", train)
    assert store.region_counts.tolist() == [3, 4]                  # 701 has 5 boxes, cut to max_regions
    for i, iid in enumerate(train):
        f = feats[iid][:4]
        np.testing.assert_allclose(store.regions[i, :len(f)], f[:, :DIM], rtol=1e-3, atol=1e-3)
        np.testing.assert_array_equal(store.boxes[i, :len(f)], f[:, DIM:])
    assert not store.regions[0, 3:].any()                          # padding past the count


def test_vinvl_captions_from_karpathy_file(tmp_path):
    cfg, _ = _vinvl(tmp_path)
    images = [{"split": s, "filename": f"COCO_{700 + i}.jpg", "filepath": "val2014", "cocoid": 700 + i,
               "sentences": [{"raw": f"c{j}"} for j in range(CPI)]}
              for i, s in enumerate(["train", "restval", "val", "test"])]
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"dataset": "coco", "images": images}))
    cfg = VinvlTsvConfig(features=cfg.features, dim=DIM, captions=str(tmp_path / "dataset_coco.json"),
                         restval=False)
    m = _prepare("vinvl_tsv", cfg, tmp_path / "data")
    assert [(r.id, r.split) for r in m.images] == [("700", "train"), ("702", "val"), ("703", "test")]


@pytest.mark.parametrize("bad, match", [
    (lambda iid, f: _row(iid, f, count=len(f) + 1), r"features.tsv: row 1: box count 3 does not match the 28 floats"),
    (lambda iid, f: _row(iid, f, b64="not*base64!"), r"features.tsv: row 1: undecodable base64"),
    (lambda iid, f: _row("999", f), r"features.tsv: row 1: holds image 999, but imageid2idx.json maps 702"),
    (lambda iid, f: f"{iid}\t3\n", r"features.tsv: row 1: expected 3 tab-separated fields"),
    (lambda iid, f: _row(iid, f[:0]), r"features.tsv: row 1: no boxes"),
])
def test_vinvl_bad_rows(tmp_path, bad, match):
    cfg, _ = _vinvl(tmp_path, bad_row=(1, bad))          # row 1 of the TSV holds image 702 (val)
    prepare("vinvl_tsv", cfg, CPI, tmp_path / "data")
    with pytest.raises(DataError, match=match):
        _store_regions(tmp_path, tmp_path / "data", "val", ["702"])


def test_vinvl_image_without_features(tmp_path):
    cfg, _ = _vinvl(tmp_path)
    test_file = tmp_path / "vinvl" / "test_captions.json"
    test_file.write_text(json.dumps({"703": ["c"] * CPI, "42": ["c"] * CPI}))
    with pytest.raises(DataError, match=r"imageid2idx.json: 1 images of the captions have no features \(first: 42\)"):
        prepare("vinvl_tsv", cfg, CPI, tmp_path / "data")


def test_vinvl_too_few_captions(tmp_path):
    cfg, _ = _vinvl(tmp_path)
    (tmp_path / "vinvl" / "val_captions.json").write_text(json.dumps({"702": ["only", "four", "cap", "s"]}))
    with pytest.raises(DataError, match=r"val_captions.json: image 702 has 4 captions, need 5"):
        prepare("vinvl_tsv", cfg, CPI, tmp_path / "data")


def test_vinvl_blank_caption(tmp_path):
    cfg, _ = _vinvl(tmp_path)
    (tmp_path / "vinvl" / "val_captions.json").write_text(json.dumps({"702": ["a", "b", " ", "d", "e"]}))
    with pytest.raises(DataError, match=r"val_captions.json: image 702 caption 2 is empty"):
        prepare("vinvl_tsv", cfg, CPI, tmp_path / "data")


# ---------------------------------------------------------------- COCO caption ids + ECCV Caption

def test_coco_caption_ids(tmp_path):
    ann, root = _karpathy(tmp_path)
    coco = {"annotations": [{"image_id": 105, "id": 9000 + j, "caption": f"Image 5 caption {j}.\n"}
                            for j in (4, 3, 2, 1, 0, 5)]
            + [{"image_id": 106, "id": 9100 + j, "caption": f"image 6 caption {j}"} for j in range(5)]}
    (tmp_path / "captions_val2014.json").write_text(json.dumps(coco))
    cfg = KarpathyConfig(annotations=str(ann), images=str(root),
                         coco_captions=[str(tmp_path / "captions_val2014.json")])
    prepare("karpathy", cfg, CPI, tmp_path / "data")
    image_ids, caption_ids = load_coco_ids(tmp_path / "data", ["106", "105"], CPI)
    assert image_ids == [106, 105]
    assert caption_ids == [9100, 9101, 9102, 9103, 9104, 9000, 9001, 9002, 9003, 9004]

    coco["annotations"][0]["caption"] = "a different caption"
    (tmp_path / "captions_val2014.json").write_text(json.dumps(coco))
    with pytest.raises(DataError, match=r"captions_val2014.json: image 105 has no caption matching 'image 5 caption 4'"):
        prepare("karpathy", cfg, CPI, tmp_path / "data")


@pytest.fixture(scope="module")
def eccv_package():
    from aladin.datasets.eccv import _package_metrics
    return _package_metrics()


def _naive(ranked, gts, ks):
    """R@K and mAP@R from their definitions (ECCV Caption paper, eq. 1)."""
    out = {f"r{k}": np.mean([bool(set(ranked[q][:k]) & set(p)) for q, p in gts.items()]) for k in ks}
    aps = []
    for q, p in gts.items():
        r, pos = len(p), set(p)
        aps.append(sum(np.mean([x in pos for x in ranked[q][:i + 1]]) for i in range(r)
                       if ranked[q][i] in pos) / r)
    out["map_at_r"] = np.mean(aps)
    return out


def test_eccv_metrics_against_package_and_definition(eccv_package):
    """A hand-made retrieval over the 5K test ids the package ships, stored in a shuffled order."""
    m = eccv_package
    rng = np.random.default_rng(0)
    images = sorted(m.coco_gts["i2t"])
    rng.shuffle(images)
    image_ids = np.asarray(images)
    caption_ids = np.asarray([c for i in images for c in m.coco_gts["i2t"][i]])
    # Each query ranks a few of its ECCV/CxC positives (if any) among random items, no repeats.
    # (Two ECCV positive captions lie outside the 5K test set: they can never be retrieved.)
    cap_row = {c: j for j, c in enumerate(caption_ids)}
    img_row = {i: j for j, i in enumerate(image_ids)}

    def ranked(n_items, k, positives, n_pos):
        chosen = rng.choice(positives, min(n_pos, len(positives)), replace=False).tolist()
        others = [o for o in rng.choice(n_items, k + len(chosen), replace=False) if o not in chosen]
        out = others[:k - len(chosen)]
        for c in chosen:
            out.insert(int(rng.integers(0, 12)), c)
        return out

    i2t = np.asarray([ranked(len(caption_ids), 50, [cap_row[c] for c in
                                                     m.eccv_gts["i2t"].get(i, m.cxc_gts["i2t"][i]) if c in cap_row], 3)
                      for i in image_ids])
    t2i = np.asarray([ranked(len(image_ids), 25, [img_row[i] for i in m.eccv_gts["t2i"].get(
        c, m.cxc_gts["t2i"].get(c, m.coco_gts["t2i"][c]))], 1) for c in caption_ids])

    got = eccv_metrics_from_topk(i2t, t2i, image_ids, caption_ids)
    ranked_i = {int(i): caption_ids[i2t[q]].tolist() for q, i in enumerate(image_ids)}
    ranked_t = {int(c): image_ids[t2i[q]].tolist() for q, c in enumerate(caption_ids)}
    package = m.eccv_metrics({"i2t": ranked_i, "t2i": ranked_t}, "all")
    for d, ranked in (("i2t", ranked_i), ("t2i", ranked_t)):
        eccv, cxc = _naive(ranked, m.eccv_gts[d], (1, 5, 10)), _naive(ranked, m.cxc_gts[d], (1, 5, 10))
        assert got[f"eccv_map_at_r_{d}"] == pytest.approx(100 * package["eccv_map_at_r"][d])
        assert got[f"eccv_map_at_r_{d}"] == pytest.approx(100 * eccv["map_at_r"])
        assert got[f"eccv_rprecision_{d}"] == pytest.approx(100 * package["eccv_rprecision"][d])
        for k in (1, 5, 10):
            assert got[f"eccv_r{k}_{d}"] == pytest.approx(100 * eccv[f"r{k}"])
            assert got[f"cxc_r{k}_{d}"] == pytest.approx(100 * cxc[f"r{k}"])
    assert 0 < got["eccv_r5_t2i"] < 100 and 0 < got["cxc_r1_i2t"] < 100

    # The score-matrix entry point ranks the same lists (scores decreasing along each top-k list).
    scores = np.zeros((len(image_ids), len(caption_ids)), dtype=np.float32)
    first_i2t = np.zeros_like(i2t[:, :1])
    scores[np.arange(len(image_ids)), i2t[:, 0]] = 1.0
    first_i2t[:, 0] = i2t[:, 0]
    whole = eccv_metrics(scores, image_ids, caption_ids)
    assert whole["eccv_r1_i2t"] == pytest.approx(100 * np.mean(
        [caption_ids[first_i2t[q, 0]] in m.eccv_gts["i2t"][i] for q, i in enumerate(image_ids)
         if i in m.eccv_gts["i2t"]]))


def test_eccv_needs_the_5k_test_set(eccv_package):
    ids = np.asarray(sorted(eccv_package.coco_gts["i2t"])[:10])
    with pytest.raises(DataError, match="Karpathy 5K test set"):
        eccv_metrics_from_topk(np.zeros((10, 50), np.int64), np.zeros((50, 25), np.int64), ids, np.arange(50))
