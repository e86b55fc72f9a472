"""Cross-encoder baseline: shapes, masking, pair/matrix agreement, mining, evaluation, training."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from aladin.cross_eval import (cross_scores, exhaustive_metrics, load_cross, pair_scorers, rerank,
                               sampled_metrics, subsample_queries, text_search_fn)
from aladin.errors import ConfigError
from aladin.io import read_json
from aladin.losses import pair_bce_loss
from aladin.metrics import ranks_t2i, retrieval_metrics
from aladin.models.cross_encoder import CrossEncoder, mined_pair_logits, sample_negatives
from aladin.models.factory import build_model, load_model, save_checkpoint
from aladin.store import Batch, StoreWriter, open_split
from aladin.training import OptimConfig, fit

D_IMG, D_TXT = 12, 10


def small_model(seed: int = 0, **kw) -> CrossEncoder:
    torch.manual_seed(seed)
    cfg = CrossEncoder.Config(**{"width": 16, "layers": 2, "heads": 2, "ff": 32, "dropout": 0.0, **kw})
    return CrossEncoder(cfg, D_IMG, D_TXT).eval()


def random_batch(b: int = 4, r: int = 5, length: int = 6, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    n_reg = torch.randint(1, r + 1, (b,), generator=g)
    n_tok = torch.randint(1, length + 1, (b,), generator=g)
    return Batch(regions=torch.randn(b, r, D_IMG, generator=g), boxes=torch.rand(b, r, 6, generator=g),
                 region_mask=torch.arange(r)[None] < n_reg[:, None],
                 tokens=torch.randn(b, length, D_TXT, generator=g),
                 token_mask=torch.arange(length)[None] < n_tok[:, None],
                 image_index=torch.arange(b), caption_index=torch.arange(b))


def test_score_pairs_shape_and_padding_changes_nothing():
    m, b = small_model(), random_batch()
    s = m.score_pairs(b)
    assert s.shape == (4,)
    # Extra padded slots with arbitrary content, and garbage in the existing padding: same scores.
    padded = Batch(regions=torch.cat([b.regions.masked_fill(~b.region_mask[..., None], 7.0),
                                      torch.randn(4, 3, D_IMG)], 1),
                   boxes=torch.cat([b.boxes, torch.rand(4, 3, 6)], 1),
                   region_mask=torch.cat([b.region_mask, torch.zeros(4, 3, dtype=torch.bool)], 1),
                   tokens=torch.cat([b.tokens.masked_fill(~b.token_mask[..., None], -3.0),
                                     torch.randn(4, 2, D_TXT)], 1),
                   token_mask=torch.cat([b.token_mask, torch.zeros(4, 2, dtype=torch.bool)], 1))
    torch.testing.assert_close(m.score_pairs(padded), s, atol=1e-5, rtol=1e-5)
    # ... while a real token does change the score (the mask is not hiding everything).
    unmasked = Batch(**{**b.__dict__, "token_mask": torch.ones_like(b.token_mask)})
    assert not torch.allclose(m.score_pairs(unmasked), s)


def test_score_matrix_equals_pairwise_score_pairs():
    m = small_model(seed=1)
    imgs, caps = random_batch(b=3, seed=2), random_batch(b=5, seed=3)
    mat = m.score_matrix(imgs, caps, chunk=4)                                # several chunks
    assert mat.shape == (3, 5)
    for i in range(3):
        for j in range(5):
            one = Batch(regions=imgs.regions[i:i + 1], boxes=imgs.boxes[i:i + 1],
                        region_mask=imgs.region_mask[i:i + 1],
                        tokens=caps.tokens[j:j + 1], token_mask=caps.token_mask[j:j + 1])
            torch.testing.assert_close(mat[i, j], m.score_pairs(one)[0], atol=1e-5, rtol=1e-5)


def test_score_depends_on_the_pair_jointly():
    """Not a sum of an image term and a caption term: s(a,x) + s(b,y) != s(a,y) + s(b,x)."""
    m = small_model(seed=4)
    s = m.score_matrix(random_batch(b=2, seed=5), random_batch(b=2, seed=6))
    assert abs((s[0, 0] + s[1, 1] - s[0, 1] - s[1, 0]).item()) > 1e-4


def test_sample_negatives_never_returns_a_positive():
    image_index = np.array([0, 0, 1, 2, 2, 3, 4])                            # captions of the same image
    neg = sample_negatives(image_index, 3, np.random.default_rng(0))
    assert neg.shape == (7, 3)
    for b, row in enumerate(neg):
        assert len(set(row)) == 3
        assert all(image_index[j] != image_index[b] for j in row)
    # Rows of images 0 and 2 have only 5 wrong rows: asking for more gives that many, all wrong.
    neg = sample_negatives(image_index, 9, np.random.default_rng(0))
    assert neg.shape == (7, 5)
    assert all(image_index[j] != image_index[b] for b, row in enumerate(neg) for j in row)


def test_mined_negative_is_the_highest_scoring_candidate():
    m = small_model(seed=7)
    b = random_batch(b=6, seed=8)
    b.image_index = torch.tensor([0, 1, 1, 2, 3, 4])                         # rows 1, 2: one image
    logits, labels = mined_pair_logits(m, b, n_candidates=3, rng=np.random.default_rng(0))
    assert logits.shape == labels.shape == (18,)
    assert labels.tolist() == [1.0] * 6 + [0.0] * 12
    with torch.no_grad():
        full = m.score_matrix(b, b).T                                        # (caption row, image row)
    torch.testing.assert_close(logits[:6], full.diagonal())
    # The same draws: 3 mined candidates + 1 random negative per caption, all wrong images.
    cand = sample_negatives(b.image_index.numpy(), 4, np.random.default_rng(0))
    for q in range(6):
        assert logits[6 + q].item() == pytest.approx(max(full[q, j].item() for j in cand[q, :3]), abs=1e-5)
        assert logits[12 + q].item() == pytest.approx(full[q, cand[q, 3]].item(), abs=1e-5)


def test_pair_bce_loss_matches_formula():
    logits, labels = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 0.0, 0.0])
    p = torch.sigmoid(logits)
    naive = -(torch.log(p[0]) + torch.log(1 - p[1]) + torch.log(1 - p[2])) / 3
    torch.testing.assert_close(pair_bce_loss(logits, labels), naive)


# --- tiny feature stores with a planted signal -------------------------------------------------

def write_store(path, n_images: int, per_image: int = 2, seed: int = 0, r: int = 4, length: int = 5):
    """Images and captions share a latent 4-d code, visible through fixed random maps + noise."""
    rng = np.random.default_rng(seed)
    maps = np.random.default_rng(123)                                        # same maps for every split
    a, bm = maps.standard_normal((4, D_IMG)), maps.standard_normal((4, D_TXT))
    z = rng.standard_normal((n_images, 4))
    regions = z[:, None] @ a + 0.5 * rng.standard_normal((n_images, r, D_IMG))
    n_cap = n_images * per_image
    zc = np.repeat(z, per_image, axis=0)
    tokens = zc[:, None] @ bm + 0.5 * rng.standard_normal((n_cap, length, D_TXT))
    r_counts = rng.integers(2, r + 1, n_images)
    t_counts = rng.integers(2, length + 1, n_cap)
    regions[np.arange(r)[None] >= r_counts[:, None]] = 0
    tokens[np.arange(length)[None] >= t_counts[:, None]] = 0
    with StoreWriter(path, n_images, r, D_IMG, n_cap, length, D_TXT) as w:
        w.write_images(0, regions.astype(np.float16), rng.random((n_images, r, 6)).astype(np.float32), r_counts)
        w.write_captions(0, tokens.astype(np.float16), t_counts)
        w.finish([str(i) for i in range(n_images)], [f"{i}.png" for i in range(n_images)],
                 [f"caption {j}" for j in range(n_cap)], np.repeat(np.arange(n_images), per_image), {})
    return open_split(path.parent, path.name)


def test_cross_scores_and_rerank_agree_with_score_matrix(tmp_path):
    store = write_store(tmp_path / "test", 6)
    m = small_model(seed=9)
    img, cap = np.array([4, 0, 2]), np.array([1, 7, 3, 10])
    s = cross_scores(m, store, img, cap, "cpu", batch_size=5)
    ref = m.score_matrix(store.image_batch(img), store.caption_batch(cap)).detach().numpy()
    np.testing.assert_allclose(s, ref, atol=1e-5)
    # One text query against the first 5 images, by caption id or as a raw-query Batch.
    search = text_search_fn(m, store, 5, "cpu", batch_size=2)
    col = cross_scores(m, store, np.arange(5), np.array([7]), "cpu")[:, 0]
    np.testing.assert_allclose(search(7), col, atol=1e-5)
    np.testing.assert_allclose(search(store.caption_batch([7])), col, atol=1e-5)
    # Scoring is in eval mode (no dropout) whatever the caller's mode, which it restores.
    noisy = small_model(seed=9, dropout=0.5).train()
    np.testing.assert_allclose(cross_scores(noisy, store, img, cap, "cpu"), s, atol=1e-5)
    assert noisy.training
    # Text -> image re-ranking of candidate lists: sorted by the same scores.
    cands = np.array([[4, 0, 2], [2, 4, 0]])
    order, scores = rerank(m, store, cap[:2], cands, "cpu", query="caption")
    for q in range(2):
        expect = [img[i] for i in np.argsort(-s[:, q])]
        ref_row = {int(i): s[k, q] for k, i in enumerate(img)}
        assert list(order[q]) == expect
        np.testing.assert_allclose(scores[q], [ref_row[int(i)] for i in order[q]], atol=1e-5)
    # Image -> text.
    order, scores = rerank(m, store, img[:1], cap[None, :], "cpu", query="image")
    assert list(order[0]) == [cap[j] for j in np.argsort(-s[0])]


def test_exhaustive_metrics_full_and_subsampled_agree_with_reference(tmp_path):
    store = write_store(tmp_path / "test", 8, per_image=2)
    m = small_model(seed=10)
    full = exhaustive_metrics(m, store, "cpu", n_images=6, text_queries=0, image_queries=0)
    s = m.score_matrix(store.image_batch(np.arange(6)), store.caption_batch(np.arange(12))).detach().numpy()
    ref = retrieval_metrics(s, np.array(store.caption_image[:12]))
    for k, v in ref.items():
        assert full[k] == pytest.approx(v)
    assert full["protocol"] == "fold0_6img" and full["pairs_scored"] == 72
    # A query subsample ranks each sampled query against the whole fold: its ranks are the full ones.
    sub = exhaustive_metrics(m, store, "cpu", n_images=6, text_queries=5, image_queries=3, seed=1)
    cq, iq = subsample_queries(store, 6, 5, 3, seed=1)
    assert sub["protocol"] == "fold0_6img_query_subsample" and sub["pairs_scored"] == 6 * 5 + 3 * 12
    r_t2i = ranks_t2i(s[:, cq], store.caption_image[cq])                     # t2i on sampled columns
    assert sub["t2i_r1"] == pytest.approx(100 * np.mean(r_t2i <= 1))
    assert sub["t2i_meanr"] == pytest.approx(np.mean(r_t2i))
    best = [(s[i] > s[i, store.caption_image[:12] == i].max()).sum() + 1 for i in iq]
    assert sub["i2t_r1"] == pytest.approx(100 * np.mean(np.array(best) <= 1))


def test_sampled_metrics_of_a_score_matrix_equal_the_cross_encoders_own(tmp_path):
    # Another model's full test matrix, read on the cross-encoder's sampled queries, must give
    # exactly what exhaustive_metrics reports when that model is the cross-encoder itself.
    store = write_store(tmp_path / "test", 8, per_image=2)
    m = small_model(seed=12)
    sub = exhaustive_metrics(m, store, "cpu", n_images=6, text_queries=5, image_queries=3, seed=4)
    cq, iq = subsample_queries(store, 6, 5, 3, seed=4)
    full = cross_scores(m, store, np.arange(8), np.arange(16), "cpu")       # the whole test set
    got = sampled_metrics(full, store, 6, cq, iq)
    for k, v in got.items():
        assert sub[k] == pytest.approx(v), k


def test_pair_scorers_read_like_the_score_matrix_and_drop_empty_slots(tmp_path):
    store = write_store(tmp_path / "test", 5, per_image=2)
    m = small_model(seed=11)
    full = cross_scores(m, store, np.arange(5), np.arange(10), "cpu")        # (img, cap)
    t2i, i2t = pair_scorers(m, store, "cpu", batch_size=3)
    caps, imgs = np.array([3, 8]), np.array([[4, -1, 0], [1, 2, -1]])
    got = t2i(caps, imgs)
    want = np.where(imgs >= 0, full[np.maximum(imgs, 0), caps[:, None]], -np.inf)
    np.testing.assert_allclose(got, want, atol=1e-5)
    q_img, q_caps = np.array([2]), np.array([[9, 0, 5, -1]])
    want = np.where(q_caps >= 0, full[2, np.maximum(q_caps, 0)], -np.inf)
    np.testing.assert_allclose(i2t(q_img, q_caps), want, atol=1e-5)


def test_short_training_on_planted_signal_beats_chance_and_checkpoints(tmp_path):
    torch.manual_seed(0)
    train = write_store(tmp_path / "train", 48, per_image=2, seed=1)
    val = write_store(tmp_path / "val", 10, per_image=2, seed=2)
    cfg = CrossEncoder.Config(width=16, layers=1, heads=2, ff=32, dropout=0.0)
    model = build_model("cross", cfg, D_IMG, D_TXT)
    rng = np.random.default_rng(0)

    def loss_fn(model, batch):
        logits, labels = mined_pair_logits(model, batch, n_candidates=3, rng=rng)
        return pair_bce_loss(logits, labels), {}

    def validate(model):
        return exhaustive_metrics(model, val, "cpu", n_images=10, text_queries=0, image_queries=0)

    before = validate(model.eval())["rsum"]
    res = fit(model, loss_fn, train, lambda mdl: {k: v for k, v in validate(mdl).items() if k != "protocol"},
              OptimConfig(lr_decay_epochs=[], epochs=12, batch_size=16, lr=3e-3), seed=0, device="cpu", checkpoint_dir=None)
    after = validate(model)
    # Chance on 10 images / 20 captions: t2i R@1 10%, i2t R@1 ~ 20%, rsum ~ 150.
    assert after["t2i_r1"] >= 40 and after["rsum"] > 300 > before
    assert res.best_metrics["rsum"] == pytest.approx(after["rsum"])
    save_checkpoint(tmp_path / "cross.pt", model, "cross", cfg)
    loaded = load_model(tmp_path / "cross.pt", kind="cross")
    assert isinstance(loaded, CrossEncoder)
    assert validate(loaded)["rsum"] == pytest.approx(after["rsum"])


def run_stage_in(tmp_path, monkeypatch, cross_params: str):
    """Run the cross stage's main() in `tmp_path` on tiny feature stores."""
    import yaml

    from stages import cross as stage
    from tests._params import write_params

    write_store(tmp_path / "features" / "train", 24, per_image=2, seed=1)
    write_store(tmp_path / "features" / "val", 8, per_image=2, seed=2)
    write_params(tmp_path, {"seed": 0, "tracking": {"enabled": False}, "cross": yaml.safe_load(cross_params)})
    monkeypatch.chdir(tmp_path)
    stage.main()
    return read_json(tmp_path / "metrics" / "cross.json")


STAGE_PARAMS = """
  enabled: true
  model: {width: 16, layers: 1, heads: 2, ff: 32, dropout: 0.1}
  optim: {epochs: 2, batch_size: 8, lr: 0.003}
  mine_candidates: 2
  select_images: 4
  eval_images: 6
  eval_text_queries: 5
  eval_image_queries: 3
"""


def test_stage_trains_and_writes_its_outputs(tmp_path, monkeypatch):
    metrics = run_stage_in(tmp_path, monkeypatch, STAGE_PARAMS)
    assert metrics["val_fold0"]["protocol"] == "fold0_6img_query_subsample"
    assert metrics["val_fold0"]["t2i_queries"] == 5 and metrics["val_fold0"]["i2t_queries"] == 3
    assert "fixed random query samples" in metrics["note"] and metrics["best_epoch"] in (0, 1)
    assert isinstance(load_cross(tmp_path / "models" / "cross.pt"), CrossEncoder)
    assert (tmp_path / "plots" / "cross_history.csv").read_text().startswith("epoch")
    # The shared seed fixes the result (dropout, shuffles and negative draws included).
    (tmp_path / "again").mkdir()
    again = run_stage_in(tmp_path / "again", monkeypatch, STAGE_PARAMS)
    assert {k: v for k, v in again["val_fold0"].items() if k != "seconds"} == \
        {k: v for k, v in metrics["val_fold0"].items() if k != "seconds"}
    a, b = (load_cross(p / "models" / "cross.pt").state_dict() for p in (tmp_path, tmp_path / "again"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_stage_disabled_writes_skipped_outputs(tmp_path, monkeypatch):
    metrics = run_stage_in(tmp_path, monkeypatch, "  enabled: false\n")
    assert metrics["skipped"] is True
    assert load_cross(tmp_path / "models" / "cross.pt") is None
    assert not (tmp_path / "checkpoints").exists()


def test_bad_params_name_the_parameter(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="cross.optim.batch_size"):
        run_stage_in(tmp_path, monkeypatch, "  enabled: true\n  mine_candidates: 8\n  optim: {batch_size: 8}\n")
