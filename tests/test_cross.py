"""Cross-encoder baseline: shapes, masking, pair agreement, negatives, lists, intervals, evaluation, training."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from aladin.training.batching import Candidates
from aladin.evaluation.cross import (cross_scores, exhaustive_metrics, pair_scorers, sampled_metrics,
                                     subsample_queries)
from aladin.latency.cross import text_search_fn
from aladin.models.factory import load_cross
from aladin.training.cross import draw_negatives, list_logits
from aladin.errors import ConfigError
from aladin.io import read_json
from aladin.training.losses import list_softmax_loss
from aladin.evaluation.metrics import bootstrap_interval, ranks_t2i, retrieval_metrics
from aladin.models.cross_encoder import CrossEncoder
from aladin.models.factory import build_model, load_model, save_checkpoint
from aladin.params import AlignmentConfig
from aladin.store import Batch, StoreWriter, open_split
from aladin.training.loop import OptimConfig, fit

D_IMG, D_TXT = 12, 10


def small_model(seed: int = 0, **kw) -> CrossEncoder:
    torch.manual_seed(seed)
    cfg = CrossEncoder.Config(**{"width": 16, "layers": 2, "heads": 2, "ff": 32, "dropout": 0.0,
                                 "inputs": "features", **kw})
    return CrossEncoder(cfg, D_IMG, D_TXT).eval()


def pair_logits(m: CrossEncoder, batch: Batch) -> torch.Tensor:
    """Logits (B,) of the aligned image / caption rows of a batch."""
    return m.joint(*m.embed_images(batch), *m.embed_texts(batch))


def naive_matrix(m: CrossEncoder, images: Batch, captions: Batch) -> torch.Tensor:
    """(N_img, N_cap) logits, one single-pair pass at a time."""
    def row(b: Batch, i: int, keys: tuple[str, ...]) -> dict:
        return {k: getattr(b, k)[i:i + 1] for k in keys}
    img_keys, cap_keys = ("regions", "boxes", "region_mask"), ("tokens", "token_mask")
    return torch.tensor([[pair_logits(m, Batch(**row(images, i, img_keys), **row(captions, j, cap_keys))).item()
                          for j in range(captions.tokens.shape[0])] for i in range(images.regions.shape[0])])


def random_batch(b: int = 4, r: int = 5, length: int = 6, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    n_reg = torch.randint(1, r + 1, (b,), generator=g)
    n_tok = torch.randint(1, length + 1, (b,), generator=g)
    return Batch(regions=torch.randn(b, r, D_IMG, generator=g), boxes=torch.rand(b, r, 6, generator=g),
                 region_mask=torch.arange(r)[None] < n_reg[:, None],
                 tokens=torch.randn(b, length, D_TXT, generator=g),
                 token_mask=torch.arange(length)[None] < n_tok[:, None],
                 image_index=torch.arange(b), caption_index=torch.arange(b))


def test_pair_logits_shape_and_padding_changes_nothing():
    m, b = small_model(), random_batch()
    s = pair_logits(m, b)
    assert s.shape == (4,)
    # Extra padded slots with arbitrary content, and garbage in the existing padding: same scores.
    padded = Batch(regions=torch.cat([b.regions.masked_fill(~b.region_mask[..., None], 7.0),
                                      torch.randn(4, 3, D_IMG)], 1),
                   boxes=torch.cat([b.boxes, torch.rand(4, 3, 6)], 1),
                   region_mask=torch.cat([b.region_mask, torch.zeros(4, 3, dtype=torch.bool)], 1),
                   tokens=torch.cat([b.tokens.masked_fill(~b.token_mask[..., None], -3.0),
                                     torch.randn(4, 2, D_TXT)], 1),
                   token_mask=torch.cat([b.token_mask, torch.zeros(4, 2, dtype=torch.bool)], 1))
    torch.testing.assert_close(pair_logits(m, padded), s, atol=1e-5, rtol=1e-5)
    # ... while a real token does change the score (the mask is not hiding everything).
    unmasked = Batch(**{**b.__dict__, "token_mask": torch.ones_like(b.token_mask)})
    assert not torch.allclose(pair_logits(m, unmasked), s)


def test_score_depends_on_the_pair_jointly():
    """Not a sum of an image term and a caption term: s(a,x) + s(b,y) != s(a,y) + s(b,x)."""
    m = small_model(seed=4)
    s = naive_matrix(m, random_batch(b=2, seed=5), random_batch(b=2, seed=6))
    assert abs((s[0, 0] + s[1, 1] - s[0, 1] - s[1, 0]).item()) > 1e-4


def test_draw_negatives_takes_distinct_pool_items_and_never_a_positive():
    caption_image = np.repeat(np.arange(6), 2)                               # 6 images x 2 captions
    pool = np.array([[(caption_image[c] + k) % 6 for k in (1, 2, 3, 4)] for c in range(12)])
    queries = np.array([0, 3, 3, 11])
    positive = lambda c, i: caption_image[c] == i                          # noqa: E731
    neg = draw_negatives(pool, queries, 3, 5, 6, positive, np.random.default_rng(0))
    assert neg.shape == (4, 8)
    for q, row in zip(queries, neg):
        assert len(set(row[:3])) == 3 and set(row[:3]) <= set(pool[q])     # hard: distinct, from the pool
        assert all(i != caption_image[q] for i in row)                      # random ones too: never the positive
    again = draw_negatives(pool, queries, 3, 5, 6, positive, np.random.default_rng(0))
    np.testing.assert_array_equal(neg, again)                               # seeded
    # Random draws only, from a tiny collection where most draws hit the positive: still none.
    neg = draw_negatives(pool, np.arange(12), 0, 20, 2, lambda c, i: i == 0, np.random.default_rng(1))
    assert (neg == 1).all()


def test_list_logits_score_each_pair_against_wrong_items_in_both_directions(tmp_path):
    store = write_store(tmp_path / "train", 6, per_image=2)
    cap_img = np.asarray(store.caption_image)
    cand = Candidates(images=np.array([[(cap_img[c] + k) % 6 for k in (1, 2, 3)] for c in range(12)]),
                      captions=np.array([[(2 * i + k) % 12 for k in (2, 3, 4)] for i in range(6)]))
    m = small_model(seed=3)
    captions = np.array([5, 0, 8])
    t2i, i2t = list_logits(m, store, captions, cand, 2, 1, np.random.default_rng(0), "cpu")
    assert t2i.shape == i2t.shape == (3, 4) and t2i.requires_grad
    # The same draws, then every listed pair scored alone against the naive matrix.
    rng = np.random.default_rng(0)
    neg_img = draw_negatives(cand.images, captions, 2, 1, 6, lambda c, i: cap_img[c] == i, rng)
    neg_cap = draw_negatives(cand.captions, cap_img[captions], 2, 1, 12, lambda i, c: cap_img[c] == i, rng)
    full = naive_matrix(m, store.image_batch(np.arange(6)), store.caption_batch(np.arange(12)))
    for b, c in enumerate(captions):
        i = cap_img[c]
        assert all(cap_img[c] != j for j in neg_img[b]) and all(cap_img[k] != i for k in neg_cap[b])
        torch.testing.assert_close(t2i[b].detach(), full[[i, *neg_img[b]], c], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(i2t[b].detach(), full[i, [c, *neg_cap[b]]], atol=1e-5, rtol=1e-5)


def test_list_softmax_loss_matches_formula():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, 1.0]])
    naive = -sum(torch.log(torch.exp(r[0]) / torch.exp(r).sum()) for r in logits) / 2
    torch.testing.assert_close(list_softmax_loss(logits), naive)


def test_bootstrap_interval_on_hand_built_ranks():
    # Every query right: no spread at all.
    assert bootstrap_interval(np.ones(7), np.ones(5))["rsum"] == [600.0, 600.0]
    # Two text queries, one right at 1 and one wrong past 10 (image queries all right): a resample
    # holds 0, 1 or 2 right ones with probability 1/4, 1/2, 1/4, so t2i R@1 is 0, 50 or 100 and
    # the central 95% of the resamples spans [0, 100]; its mean is 50.
    iv = bootstrap_interval(np.ones(4), np.array([1, 20]), n_boot=4000, seed=3)
    assert iv["t2i_r1"] == [0.0, 100.0] and iv["i2t_r10"] == [100.0, 100.0]
    assert iv["rsum"] == [300.0, 600.0]
    # Against a naive loop over resamples drawn the same way.
    r_i2t, r_t2i = np.array([1, 3, 12, 2, 1, 7]), np.array([4, 1, 1, 30, 2, 1, 9, 1])
    rng = np.random.default_rng(5)
    picks = {d: rng.integers(0, len(r), (300, len(r))) for d, r in (("i2t", r_i2t), ("t2i", r_t2i))}
    rsums = [sum(100 * np.mean(r[picks[d][b]] <= k) for d, r in (("i2t", r_i2t), ("t2i", r_t2i)) for k in (1, 5, 10))
             for b in range(300)]
    got = bootstrap_interval(r_i2t, r_t2i, n_boot=300, seed=5)["rsum"]
    np.testing.assert_allclose(got, [np.percentile(rsums, 2.5), np.percentile(rsums, 97.5)])


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


def test_cross_scores_agree_with_single_pair_passes(tmp_path):
    store = write_store(tmp_path / "test", 6)
    m = small_model(seed=9)
    img, cap = np.array([4, 0, 2]), np.array([1, 7, 3, 10])
    s = cross_scores(m, store, img, cap, "cpu", batch_size=5)
    ref = naive_matrix(m, store.image_batch(img), store.caption_batch(cap)).numpy()
    np.testing.assert_allclose(s, ref, atol=1e-5)
    # One text query against the first 5 images, by caption id or as a raw-query Batch.
    search = text_search_fn(m, store, 5, "cpu", batch_size=2)
    col = cross_scores(m, store, np.arange(5), np.array([7]), "cpu")[:, 0]
    np.testing.assert_allclose(search(7), col, atol=1e-5)
    np.testing.assert_allclose(search(store.caption_batch([7])), col, atol=1e-5)
    np.testing.assert_allclose(search(7, np.array([3, 0])), col[[3, 0]], atol=1e-5)   # a candidate list
    # Scoring is in eval mode (no dropout) whatever the caller's mode, which it restores.
    noisy = small_model(seed=9, dropout=0.5).train()
    np.testing.assert_allclose(cross_scores(noisy, store, img, cap, "cpu"), s, atol=1e-5)
    assert noisy.training


def test_exhaustive_metrics_full_and_subsampled_agree_with_reference(tmp_path):
    store = write_store(tmp_path / "test", 8, per_image=2)
    m = small_model(seed=10)
    full = exhaustive_metrics(m, store, "cpu", n_images=6, text_queries=0, image_queries=0, seed=0, batch_size=2048)
    s = naive_matrix(m, store.image_batch(np.arange(6)), store.caption_batch(np.arange(12))).numpy()
    ref = retrieval_metrics(s, np.array(store.caption_image[:12]))
    for k, v in ref.items():
        assert full[k] == pytest.approx(v)
    assert full["protocol"] == "fold0_6img" and full["pairs_scored"] == 72
    # A query subsample ranks each sampled query against the whole fold: its ranks are the full ones.
    sub = exhaustive_metrics(m, store, "cpu", n_images=6, text_queries=5, image_queries=3, seed=1, batch_size=2048)
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
    sub = exhaustive_metrics(m, store, "cpu", n_images=6, text_queries=5, image_queries=3, seed=4, batch_size=2048)
    cq, iq = subsample_queries(store, 6, 5, 3, seed=4)
    full = cross_scores(m, store, np.arange(8), np.arange(16), "cpu")       # the whole test set
    got = sampled_metrics(full, store, 6, cq, iq, seed=4)
    assert got.pop("interval_95") == sub["interval_95"]             # same ranks, same resamples
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
    cfg = CrossEncoder.Config(width=16, layers=1, heads=2, ff=32, dropout=0.0, inputs="features")
    model = build_model("cross", cfg, D_IMG, D_TXT)
    rng = np.random.default_rng(0)
    cap_img, img = np.asarray(train.caption_image), np.arange(train.n_images)
    pools = Candidates(images=(cap_img[:, None] + np.arange(1, 9)) % 48,           # any wrong items
                       captions=(2 * img[:, None] + np.arange(2, 10)) % 96)

    def loss_fn(model, batch):
        t2i, i2t = list_logits(model, train, batch.caption_index.numpy(), pools, 2, 1, rng, "cpu")
        return list_softmax_loss(t2i) + list_softmax_loss(i2t), {}

    def validate(model):
        return exhaustive_metrics(model, val, "cpu", n_images=10, text_queries=0, image_queries=0, seed=0, batch_size=2048)

    before = validate(model.eval())["rsum"]
    res = fit(model, loss_fn, train, lambda mdl: {k: v for k, v in validate(mdl).items()
                                                  if isinstance(v, float)},
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
    torch.manual_seed(0)                                   # the first stage: an (untrained) teacher
    teacher_cfg = AlignmentConfig(d=16, layers=1, heads=2, ff=32, dropout=0.0)
    save_checkpoint(tmp_path / "models" / "teacher.pt", build_model("alignment", teacher_cfg, D_IMG, D_TXT),
                    "alignment", teacher_cfg)
    write_params(tmp_path, {"seed": 0, "tracking": {"enabled": False}, "cross": yaml.safe_load(cross_params)})
    monkeypatch.chdir(tmp_path)
    stage.main()
    return read_json(tmp_path / "metrics" / "cross.json")


STAGE_PARAMS = """
  enabled: true
  model: {width: 16, layers: 1, heads: 2, ff: 32, dropout: 0.1, inputs: teacher_tokens}
  optim: {epochs: 2, batch_size: 8, lr: 0.003}
  pool: 4
  hard_negatives: 2
  random_negatives: 1
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
    cross = load_cross(tmp_path / "models" / "cross.pt")
    assert isinstance(cross, CrossEncoder) and cross.token_encoder is not None    # the teacher's, frozen
    teacher = load_model(tmp_path / "models" / "teacher.pt", kind="alignment")
    assert all(torch.equal(a, b) for a, b in zip(cross.token_encoder.state_dict().values(),
                                                 teacher.state_dict().values()))
    low, high = metrics["val_fold0"]["interval_95"]["rsum"]
    assert 0 <= low <= metrics["val_fold0"]["rsum"] <= high <= 600
    history = (tmp_path / "plots" / "cross_history.csv").read_text()
    assert history.startswith("epoch") and "loss_t2i" in history and "loss_i2t" in history
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
    with pytest.raises(ConfigError, match="cross.hard_negatives"):
        run_stage_in(tmp_path, monkeypatch, "  enabled: true\n  pool: 2\n  hard_negatives: 3\n")
