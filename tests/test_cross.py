"""Cross-encoder baseline: shapes, masking, pair agreement, negatives, lists, intervals, evaluation, training."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aladin.evaluation.cross import (cross_scores, exhaustive_metrics, pair_scorers, rerank_row, sampled_metrics,
                                     subsample_queries)
from aladin.evaluation.ranking import IndexedRetrieval, matrix_scorers
from aladin.latency.cross import text_search_fn
from aladin.models.factory import load_cross
from aladin.retrieval.index import IndexConfig
from aladin.retrieval.store_scores import score_store
from aladin.training.cross import (CrossLoss, FoilTexts, build_negatives, list_accuracy,
                                   list_logits, softmax_draws,
                                   training_lists)
from aladin.errors import ConfigError
from aladin.io import read_json
from aladin.training.losses import multi_positive_list_loss
from aladin.evaluation.metrics import bootstrap_interval, ranks_t2i, retrieval_metrics
from aladin.models.cross_encoder import CrossEncoder, Grounding, box_centres
from aladin.models.factory import build_model, load_model, save_checkpoint
from aladin.params import AlignmentConfig, MatchingConfig
from aladin.features.query import text_batch
from aladin.store import Batch, StoreWriter, open_split
from aladin.training.loop import OptimConfig, fit

D_IMG, D_TXT = 12, 10


def small_model(seed: int = 0, **kw) -> CrossEncoder:
    torch.manual_seed(seed)
    cfg = CrossEncoder.Config(**{"fusion": "transformer", "width": 16, "layers": 2, "heads": 2, "ff": 32,
                                 "dropout": 0.0, "inputs": "features", "residual": False, **kw})
    return CrossEncoder(cfg, D_IMG, D_TXT).eval()


def small_teacher(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("alignment", AlignmentConfig(d=16, layers=1, heads=2, ff=32, dropout=0.0), D_IMG, D_TXT).eval()


def residual_model(seed: int = 0, width: int = 16, layers: int = 2, fusion: str = "transformer") -> CrossEncoder:
    teacher = small_teacher(seed)
    cfg = CrossEncoder.Config(fusion=fusion, width=width, layers=layers, heads=2, ff=2 * width, dropout=0.0,
                              inputs="teacher_tokens", residual=True)
    return CrossEncoder(cfg, D_IMG, D_TXT, token_encoder=teacher).eval()


def grounding_model(seed: int = 0) -> CrossEncoder:
    """The grounding residual with queries that have learned something (not zero)."""
    m = residual_model(seed, fusion="grounding")
    torch.nn.init.normal_(m.grounding.query.weight, generator=torch.Generator().manual_seed(seed))
    return m


FUSIONS = {"transformer": small_model, "grounding": grounding_model}


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


@pytest.mark.parametrize("fusion", FUSIONS)
def test_pair_logits_shape_and_padding_changes_nothing(fusion):
    m, b = FUSIONS[fusion](), random_batch()
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


@pytest.mark.parametrize("fusion", FUSIONS)
def test_score_depends_on_the_pair_jointly(fusion):
    """Not a sum of an image term and a caption term: s(a,x) + s(b,y) != s(a,y) + s(b,x)."""
    m = FUSIONS[fusion](seed=4)
    s = naive_matrix(m, random_batch(b=2, seed=5), random_batch(b=2, seed=6))
    assert abs((s[0, 0] + s[1, 1] - s[0, 1] - s[1, 0]).item()) > 1e-4


def test_multi_positive_list_loss_matches_formula():
    inf = float("inf")
    logits = torch.tensor([[2.0, -1.0, 0.5, -inf], [0.0, 3.0, 1.0, 2.0], [1.0, 2.0, -inf, -inf]])
    positive = torch.tensor([[True, False, False, False], [True, True, False, False], [True, True, False, False]])
    # Row 2 has no negative: it carries no signal and is left out of the mean.
    naive = -(math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(-1.0) + math.exp(0.5)))
              + math.log((math.exp(0.0) + math.exp(3.0)) / (1 + math.exp(3.0) + math.exp(1.0) + math.exp(2.0)))) / 2
    torch.testing.assert_close(multi_positive_list_loss(logits, positive), torch.tensor(naive))
    assert multi_positive_list_loss(logits[2:], positive[2:]).item() == 0.0


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


def random_lists(store, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A stand-in first stage: k random images per caption and k random captions per image."""
    rng = np.random.default_rng(seed)
    return (np.argsort(rng.random((store.n_captions, store.n_images)), 1)[:, :k],
            np.argsort(rng.random((store.n_images, store.n_captions)), 1)[:, :k])


@pytest.mark.parametrize("fusion", ["grounding", "transformer"])
def test_residual_model_at_init_scores_exactly_as_the_teacher(tmp_path, fusion):
    store = write_store(tmp_path / "test", 6, per_image=2)
    m = residual_model(seed=2, fusion=fusion)
    teacher = score_store(m.token_encoder, store, "cpu", progress=False).numpy()
    np.testing.assert_allclose(cross_scores(m, store, np.arange(6), np.arange(12), "cpu"), teacher, atol=1e-5)
    last = m.grounding.query.weight if fusion == "grounding" else m.head.weight
    torch.nn.init.normal_(last)                                    # once the head has learned something ...
    assert not np.allclose(cross_scores(m, store, np.arange(6), np.arange(12), "cpu"), teacher, atol=1e-3)
    assert CrossEncoder.Config(fusion="transformer", width=16, layers=1, heads=2, ff=32, inputs="features",
                               residual=False).residual is False


def naive_grounding(g: Grounding, regions, img_mask, centres, words, queries, txt_mask) -> float:
    """One pair, loops over words: each word's place, then the sharpness-weighted places around it."""
    rows = [r for r, ok in zip(regions, img_mask) if ok]
    cs = [c for c, ok in zip(centres, img_mask) if ok]
    place, sharp = [], []
    for w in words:
        e = [math.exp(float(w @ r) / g.temperature) for r in rows]
        a = [x / sum(e) for x in e]
        place.append(sum(ai * c for ai, c in zip(a, cs)))
        sharp.append(max(a))
    real = [t for t in range(len(words)) if txt_mask[t]]
    total = 0.0
    for t in real:
        reads = []
        for span in (range(t - g.before, t), range(t + 1, t + g.after + 1)):
            near = [u for u in span if u in real]
            weight = sum(sharp[u] for u in near)
            reads.append(sum(sharp[u] * place[u] for u in near) / weight if near else torch.zeros(2))
        reads.append(place[t])
        total += float(queries[t] @ torch.cat(reads))
    return total


def test_grounding_equals_a_naive_loop_on_a_hand_built_case():
    g = Grounding(d_txt=5, temperature=0.1, before=2, after=1)
    gen = torch.Generator().manual_seed(0)
    regions, words = torch.randn(2, 4, 3, generator=gen), torch.randn(2, 6, 3, generator=gen)
    centres, queries = box_centres(torch.rand(2, 4, 6, generator=gen)), torch.randn(2, 6, 6, generator=gen)
    img_mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    txt_mask = torch.tensor([[True] * 6, [True, True, True, False, False, False]])
    got = g(regions, img_mask, centres, words, queries, txt_mask)
    want = [naive_grounding(g, *(x[b] for x in (regions, img_mask, centres, words, queries, txt_mask))) for b in range(2)]
    torch.testing.assert_close(got, torch.tensor(want), atol=1e-5, rtol=1e-5)
    # A relation read by hand: one region per word, the word before on the left of the word after.
    one = torch.eye(3)[None]                                        # regions = words: each word is placed exactly
    at = torch.tensor([[[0.1, 0.5, 0.1, 0.5, 0, 0], [0.5, 0.5, 0.5, 0.5, 0, 0], [0.9, 0.5, 0.9, 0.5, 0, 0]]])
    q = torch.zeros(1, 3, 6)
    q[0, 1, 0], q[0, 1, 2] = -1.0, 1.0                              # the middle word asks: x before < x after
    sharp = Grounding(d_txt=5, temperature=1e-3, before=1, after=1)
    left = sharp(one, torch.ones(1, 3, dtype=torch.bool), box_centres(at), one * 10, q, torch.ones(1, 3, dtype=torch.bool))
    right = sharp(one, torch.ones(1, 3, dtype=torch.bool), box_centres(at.flip(1)), one * 10, q,
                  torch.ones(1, 3, dtype=torch.bool))
    torch.testing.assert_close(left, torch.tensor([0.8]))
    torch.testing.assert_close(right, torch.tensor([-0.8]))


@pytest.mark.parametrize("fusion", FUSIONS)
def test_words_see_the_regions_box_geometry(fusion):
    """Moving one real region (its 6-d box only) changes the pair's score: the binding of a word
    to a region can depend on where the region is."""
    m, b = FUSIONS[fusion](seed=7), random_batch(seed=8)
    moved = b.boxes.clone()
    moved[:, 0] = 1.0 - moved[:, 0]                                   # region 0 is always a real one
    other = Batch(**{**b.__dict__, "boxes": moved})
    assert (pair_logits(m, other) - pair_logits(m, b)).abs().min() > 1e-6


def test_softmax_draws_follow_the_softmax_of_the_allowed_entries():
    scores = np.array([2.0, 1.0, 0.5, 0.0, -1.0, 3.0])
    allowed = np.array([True, True, True, True, True, False])       # the best one is true: never drawn
    n, t = 40000, 0.5
    cols = softmax_draws(np.tile(scores, (n, 1)), np.tile(allowed, (n, 1)), 1, t, np.random.default_rng(0))[:, 0]
    e = [math.exp(x / t) if ok else 0.0 for x, ok in zip(scores, allowed)]
    probs = np.array([v / sum(e) for v in e])                      # naive softmax over the allowed ones
    counts = np.bincount(cols, minlength=len(scores))
    assert counts[5] == 0
    expected = n * probs[:5]
    chi2 = float(((counts[:5] - expected) ** 2 / expected).sum())
    assert chi2 < 18.5                                             # 4 degrees of freedom, p = 0.001
    # Several draws per row are distinct; a row with fewer allowed entries than draws pads with -1.
    few = softmax_draws(np.tile(scores, (3, 1)), np.array([allowed, allowed, [True] + [False] * 5]), 3, t,
                        np.random.default_rng(1))
    assert all(len(set(r)) == 3 and 5 not in r for r in few[:2]) and list(few[2]) == [0, -1, -1]
    again = softmax_draws(np.tile(scores, (3, 1)), np.array([allowed, allowed, [True] + [False] * 5]), 3, t,
                          np.random.default_rng(1))
    np.testing.assert_array_equal(few, again)                      # seeded


def test_scene_lists_label_every_true_item_positive_and_are_seeded(tmp_path):
    store = write_store(tmp_path / "train", 8, per_image=2)
    cap_img = np.asarray(store.caption_image)
    truth = np.random.default_rng(3).random((8, 16)) < 0.4         # the parser's verdicts, stand-in
    truth[cap_img, np.arange(16)] = True
    neg = build_negatives(small_teacher(), store, random_lists(store, 6), truth, "cpu")
    assert neg.oracle and neg.images.true.mean() > 0.2               # there is something to clean
    captions = np.repeat(np.arange(16), 20)
    images = cap_img[captions]
    (t2i, t2i_pos), (i2t, i2t_pos), logs = training_lists(neg, store, captions, 0, 2, 0.1, 0.95,
                                                          np.random.default_rng(0))
    assert (t2i[:, 0] == images).all() and (i2t[:, 0] == captions).all() and t2i_pos[:, 0].all()
    real_t2i, real_i2t = t2i >= 0, i2t >= 0
    # Negatives are never true; every listed item the parser finds true is a positive.
    verdict_t2i = truth[np.maximum(t2i, 0), captions[:, None]] & real_t2i
    verdict_i2t = truth[images[:, None], np.maximum(i2t, 0)] & real_i2t
    np.testing.assert_array_equal(t2i_pos, verdict_t2i)
    np.testing.assert_array_equal(i2t_pos, verdict_i2t)
    # hard 0: the whole list is there (each pool item once, as a positive or a negative).
    for b, c in enumerate(captions[:16]):
        listed = set(t2i[b][real_t2i[b]][:-2]) | {images[b]}
        assert set(neg.images.items[c]) | {images[b]} == listed
    assert logs["neg_false"] == 0.0 and logs["pool_dropped"] == 0.0
    again = training_lists(neg, store, captions, 0, 2, 0.1, 0.95, np.random.default_rng(0))
    np.testing.assert_array_equal(t2i, again[0][0])
    np.testing.assert_array_equal(i2t, again[1][0])
    # hard n: n softmax draws of wrong items, never true either.
    (t2i_h, pos_h), _, _ = training_lists(neg, store, captions, 2, 1, 0.1, 0.95, np.random.default_rng(1))
    drawn = (t2i_h >= 0) & ~pos_h
    assert not truth[np.maximum(t2i_h, 0), captions[:, None]][drawn].any() and drawn.sum(1).max() <= 3


def test_real_data_lists_mask_the_same_image_and_keep_only_a_teacher_margin(tmp_path):
    store = write_store(tmp_path / "train", 8, per_image=3)
    cap_img = np.asarray(store.caption_image)
    neg = build_negatives(small_teacher(seed=4), store, random_lists(store, 8, seed=2), None, "cpu")
    assert not neg.oracle and "neg_false" not in training_lists(neg, store, np.arange(4), 0, 1, 0.1, 0.9,
                                                                np.random.default_rng(0))[2]
    captions = np.repeat(np.arange(24), 30)
    images, margin = cap_img[captions], 0.9
    (t2i, t2i_pos), (i2t, i2t_pos), logs = training_lists(neg, store, captions, 0, 1, 0.1, margin,
                                                          np.random.default_rng(5))
    assert 0 < logs["pool_dropped"] < 1
    t2i_neg, i2t_neg = (t2i >= 0) & ~t2i_pos, (i2t >= 0) & ~i2t_pos
    assert (t2i[t2i_neg] != np.broadcast_to(images[:, None], t2i.shape)[t2i_neg]).all()     # never the own image
    assert (cap_img[i2t[i2t_neg]] != np.broadcast_to(images[:, None], i2t.shape)[i2t_neg]).all()
    assert (cap_img[i2t[i2t_pos]] == np.broadcast_to(images[:, None], i2t.shape)[i2t_pos]).all()  # own captions
    # Listed negatives (all but the last, random column) score below the bar.
    for pool, query, items, neg_mask in ((neg.images, captions, t2i, t2i_neg), (neg.captions, images, i2t, i2t_neg)):
        for q, c, row, m in zip(query, captions, items[:, :-1], neg_mask[:, :-1]):
            score = dict(zip(pool.items[q], pool.scores[q]))
            assert all(score[x] < margin * neg.positive[c] for x in row[m])


def test_list_logits_score_each_pair_against_its_list_in_both_directions(tmp_path):
    store = write_store(tmp_path / "train", 6, per_image=2)
    cap_img = np.asarray(store.caption_image)
    m = small_model(seed=3)
    captions = np.array([5, 0, 8])
    images = cap_img[captions]
    t2i_items = np.array([[images[0], 0, 1], [images[1], 3, -1], [images[2], 5, 0]])
    i2t_items = np.array([[5, 0, 1, -1], [0, 4, 11, 2], [8, 2, 3, 9]])
    t2i, i2t = list_logits(m, store, images, captions, t2i_items, i2t_items, "cpu")
    assert t2i.shape == (3, 3) and i2t.shape == (3, 4) and t2i.requires_grad
    full = naive_matrix(m, store.image_batch(np.arange(6)), store.caption_batch(np.arange(12)))
    for b, c in enumerate(captions):
        for j, i in enumerate(t2i_items[b]):
            want = full[i, c] if i >= 0 else torch.tensor(float("-inf"))
            torch.testing.assert_close(t2i[b, j].detach(), want, atol=1e-5, rtol=1e-5)
        for j, k in enumerate(i2t_items[b]):
            want = full[images[b], k] if k >= 0 else torch.tensor(float("-inf"))
            torch.testing.assert_close(i2t[b, j].detach(), want, atol=1e-5, rtol=1e-5)
    inf = float("inf")
    logits = torch.tensor([[2.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 3.0, -inf], [1.0, 5.0, 0.0]])
    labels = torch.tensor([[True, False, False], [True, False, False], [True, False, False], [True, True, False]])
    assert list_accuracy(logits, labels) == pytest.approx(2 / 4)   # ties lose; the best positive counts


class FakeTextBackbone:
    """Texts -> fixed random (L, D_TXT) token features per text, as TextBackbone's two calls give them."""

    def tokenize(self, texts: list[str]) -> list[str]:
        return texts

    def encode_ids(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        counts = torch.tensor([2 + len(t) % 4 for t in texts])
        tokens = torch.stack([torch.randn(5, D_TXT, generator=torch.Generator().manual_seed(len(t) * 31 + ord(t[-1])))
                              for t in texts])
        return tokens * (torch.arange(5)[None, :, None] < counts[:, None, None]), counts


def test_foil_negatives_join_the_image_lists_as_negatives(tmp_path):
    """Each image list ends with its caption's foil, a negative, scored as that (image, text) pair
    alone would be; -inf (no item) where a caption has none; the loss is the list loss of the
    widened lists, exactly."""
    store = write_store(tmp_path / "train", 6, per_image=2)
    m = residual_model(seed=2, fusion="grounding")
    torch.nn.init.normal_(m.grounding.query.weight, generator=torch.Generator().manual_seed(4))
    foils = FoilTexts([None if c % 3 == 0 else f"foil of caption {c}" for c in range(store.n_captions)],
                      FakeTextBackbone())
    assert foils.coverage == pytest.approx(8 / 12)
    captions = np.array([0, 5, 7, 3])
    images = store.caption_image[captions]
    has, batch = foils.batch(captions)
    assert has.tolist() == [False, True, True, False] and batch.tokens.shape[0] == 2
    _, with_foils = list_logits(m, store, images, captions, images[:, None], captions[:, None], "cpu", (has, batch))
    column = with_foils[:, -1:]
    assert column.shape == (4, 1) and torch.isinf(column[~torch.as_tensor(has)]).all()
    for b in np.flatnonzero(has):                                 # each foil scored alone
        one = text_batch(FakeTextBackbone(), [foils.texts[captions[b]]])
        img = m.embed_images(store.image_batch([images[b]]))
        want = m.joint(*img, *m.embed_texts(one))
        torch.testing.assert_close(column[b], want, atol=1e-5, rtol=1e-5)

    neg = build_negatives(m.token_encoder, store, random_lists(store, 3), None, "cpu")
    pairs = store.pair_batch(captions)
    torch.manual_seed(7)
    loss, logs = CrossLoss(store, neg, 0, 1, 0.1, 1.0, "cpu", foils)(m, pairs)
    torch.manual_seed(7)                                          # the same lists, drawn again
    rng = np.random.default_rng(int(torch.randint(2**62, ())))
    (t2i_items, t2i_pos), (i2t_items, i2t_pos), _ = training_lists(neg, store, captions, 0, 1, 0.1, 1.0, rng)
    t2i, i2t = list_logits(m, store, images, captions, t2i_items, i2t_items, "cpu")
    i2t = torch.cat([i2t, column], 1)                             # the foil column as scored above
    i2t_pos = np.concatenate([i2t_pos, np.zeros((4, 1), dtype=bool)], 1)
    want = (multi_positive_list_loss(t2i / 0.1, torch.as_tensor(t2i_pos))
            + multi_positive_list_loss(i2t / 0.1, torch.as_tensor(i2t_pos))) / 2
    torch.testing.assert_close(loss, want, atol=1e-5, rtol=1e-5)
    assert logs["foil_acc"] == float((i2t[has, 0] > column[has, 0]).float().mean())


def test_overfits_512_training_pairs(tmp_path):
    """The first check of any matcher: it fits a few hundred pairs almost perfectly (a masking,
    learning-rate or pooling bug would stop it), residual on an untrained teacher."""
    train = write_store(tmp_path / "train", 256, per_image=2, seed=1)
    model = residual_model(seed=0, width=32, layers=1)
    neg = build_negatives(model.token_encoder, train, random_lists(train, 8), None, "cpu")
    captions = np.arange(train.n_captions)
    (t2i_items, t2i_pos), (i2t_items, i2t_pos), _ = training_lists(neg, train, captions, 2, 1, 0.1, 1.0,
                                                                   np.random.default_rng(9))
    t2i_pos, i2t_pos = torch.as_tensor(t2i_pos), torch.as_tensor(i2t_pos)

    def accuracy(mdl) -> dict[str, float]:                       # every training pair, both lists
        t2i, i2t = list_logits(mdl, train, train.caption_image[captions], captions, t2i_items, i2t_items, "cpu")
        return {"t2i": list_accuracy(t2i, t2i_pos), "i2t": list_accuracy(i2t, i2t_pos),
                "both": (list_accuracy(t2i, t2i_pos) + list_accuracy(i2t, i2t_pos)) / 2}

    before = accuracy(model)
    res = fit(model, CrossLoss(train, neg, 2, 1, 1.0, 1.0, "cpu"), train, accuracy,
              OptimConfig(lr_decay_epochs=[], epochs=12, batch_size=32, lr=3e-3), seed=0, device="cpu",
              checkpoint_dir=None, select_metric="both")
    after = accuracy(model)
    assert before["both"] < 0.6                                    # the untrained teacher is far from it
    assert after["t2i"] >= 0.95 and after["i2t"] >= 0.95
    assert res.history[-1]["train_acc_t2i"] > 0.9                  # the training log says so too


def test_short_training_on_planted_signal_beats_chance_and_checkpoints(tmp_path):
    torch.manual_seed(0)
    train = write_store(tmp_path / "train", 48, per_image=2, seed=1)
    val = write_store(tmp_path / "val", 10, per_image=2, seed=2)
    cfg = CrossEncoder.Config(fusion="transformer", width=16, layers=1, heads=2, ff=32, dropout=0.0, inputs="features",
                              residual=False)
    model = build_model("cross", cfg, D_IMG, D_TXT)
    neg = build_negatives(small_teacher(), train, random_lists(train, 8), None, "cpu")

    def validate(model):
        return exhaustive_metrics(model, val, "cpu", n_images=10, text_queries=0, image_queries=0, seed=0, batch_size=2048)

    before = validate(model.eval())["rsum"]
    res = fit(model, CrossLoss(train, neg, 2, 1, 1.0, 1.0, "cpu"), train,
              lambda mdl: {k: v for k, v in validate(mdl).items() if isinstance(v, float)},
              OptimConfig(lr_decay_epochs=[], epochs=12, batch_size=16, lr=3e-3), seed=0, device="cpu", checkpoint_dir=None)
    after = validate(model)
    # Chance on 10 images / 20 captions: t2i R@1 10%, i2t R@1 ~ 20%, rsum ~ 150.
    assert after["t2i_r1"] >= 40 and after["rsum"] > 300 > before
    assert res.best_metrics["rsum"] == pytest.approx(after["rsum"])
    save_checkpoint(tmp_path / "cross.pt", model, "cross", cfg)
    loaded = load_model(tmp_path / "cross.pt", kind="cross")
    assert isinstance(loaded, CrossEncoder)
    assert validate(loaded)["rsum"] == pytest.approx(after["rsum"])


def test_rerank_rows_of_the_residual_at_init_equal_the_teachers(tmp_path):
    """The evaluation's two re-ranking rows on the same lists: a model that ranks as the teacher
    gives the teacher's row, within-family figures included, and a zero paired difference."""
    store = write_store(tmp_path / "test", 12, per_image=2, seed=3)
    m = residual_model(seed=5)
    teacher = score_store(m.token_encoder, store, "cpu", progress=False).numpy()
    g = np.random.default_rng(0)
    img, cap = g.standard_normal((12, 8)).astype(np.float32), g.standard_normal((24, 8)).astype(np.float32)
    retrieval = IndexedRetrieval(img, cap, IndexConfig(kind="flat"), seed=0)
    families = np.repeat(np.arange(3), 4)
    cap_img = np.asarray(store.caption_image)
    fold = (slice(0, 12), slice(0, 24))
    crossed, r_cross = rerank_row(retrieval, cap_img, 5, pair_scorers(m, store, "cpu"), img @ cap.T, fold, families)
    taught, r_teacher = rerank_row(retrieval, cap_img, 5, matrix_scorers(teacher), img @ cap.T, fold, families)
    assert crossed["rsum"] == pytest.approx(taught["rsum"])
    assert crossed["within_family"] == pytest.approx(taught["within_family"])
    assert bootstrap_interval(*r_cross, baseline=r_teacher)["rsum"] == [0.0, 0.0]
    torch.nn.init.normal_(m.head.weight, std=10.0)                   # a different re-ranker: a different row
    other, _ = rerank_row(retrieval, cap_img, 5, pair_scorers(m, store, "cpu"), img @ cap.T, fold, families)
    assert other["t2i_r1"] != taught["t2i_r1"] or other["within_family"] != taught["within_family"]


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
    student_cfg = MatchingConfig(d_model=16, layers=1, heads=2, ff=32, dim=8)   # the lists it re-ranks
    save_checkpoint(tmp_path / "models" / "student.pt", build_model("matching", student_cfg, D_IMG, D_TXT),
                    "matching", student_cfg)
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
    assert history.startswith("epoch") and all(c in history.split("\n")[0].split(",") for c in (
        "train_loss_t2i", "train_loss_i2t", "train_acc_t2i", "train_acc_i2t", "train_pool_dropped", "train_rsum",
        "val_rsum"))
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
    with pytest.raises(ConfigError, match="cross.foil_negatives: true needs verified foils"):   # no scenes here
        run_stage_in(tmp_path / "real", monkeypatch, "  enabled: true\n  foil_negatives: true\n")
