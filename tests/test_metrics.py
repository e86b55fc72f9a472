"""Retrieval metrics against hand-worked cases and a naive loop implementation."""
import numpy as np
import pytest

from aladin.evaluation import metrics as M
from aladin.errors import DataError


def naive_ranks(scores, cap_img):
    """Loop-by-loop reference: pessimistic ties, 1-based, i2t = best of the image's captions."""
    n_img, n_cap = scores.shape
    i2t = []
    for i in range(n_img):
        best = max(scores[i, j] for j in range(n_cap) if cap_img[j] == i)
        i2t.append(1 + sum(1 for j in range(n_cap) if cap_img[j] != i and scores[i, j] >= best))
    t2i = []
    for j in range(n_cap):
        pos = scores[cap_img[j], j]
        t2i.append(1 + sum(1 for i in range(n_img) if i != cap_img[j] and scores[i, j] >= pos))
    return np.array(i2t), np.array(t2i)


def test_hand_made_ranks_best_of_five():
    # 3 images x 2 captions each: caption j describes image j // 2.
    cap_img = np.array([0, 0, 1, 1, 2, 2])
    s = np.array([
        # c0   c1   c2   c3   c4   c5
        [0.1, 0.9, 0.5, 0.2, 0.0, 0.0],   # image 0: its best caption c1 is first -> rank 1
        [0.8, 0.0, 0.3, 0.1, 0.7, 0.0],   # image 1: best own is c2 (0.3); c0, c4 beat it -> 3
        [0.0, 0.0, 0.0, 0.6, 0.2, 0.5],   # image 2: best own c5 (0.5); c3 beats it -> 2
    ], dtype=np.float32)
    np.testing.assert_array_equal(M.ranks_i2t(s, cap_img), [1, 3, 2])
    # caption columns: c0: own img0 0.1 < img1 0.8 -> 2; c1 -> 1; c2: img1 0.3 < img0 0.5 -> 2;
    # c3: img1 0.1 < 0.2, 0.6 -> 3; c4: img2 0.2 < img1 0.7 -> 2; c5 -> 1.
    np.testing.assert_array_equal(M.ranks_t2i(s, cap_img), [2, 1, 2, 3, 2, 1])


def test_ties_count_against_the_query():
    cap_img = np.repeat(np.arange(12), 5)
    s = np.zeros((12, 60), np.float32)                 # a constant scorer
    np.testing.assert_array_equal(M.ranks_t2i(s, cap_img), np.full(60, 12))
    np.testing.assert_array_equal(M.ranks_i2t(s, cap_img), np.full(12, 56))  # 55 negatives tie
    m = M.retrieval_metrics(s, cap_img)
    assert m["rsum"] == 0.0
    # A tie *among the positives* costs nothing: only negatives push the rank down.
    s2 = np.zeros((2, 4), np.float32)
    s2[0, :2] = 1.0
    s2[1, 2:] = 1.0
    np.testing.assert_array_equal(M.ranks_i2t(s2, np.array([0, 0, 1, 1])), [1, 1])


def test_against_naive_on_random_scores_with_ties():
    rng = np.random.default_rng(0)
    for per_image in (1, 5):
        n_img = 13
        cap_img = np.repeat(np.arange(n_img), per_image)
        s = rng.integers(0, 4, size=(n_img, n_img * per_image)).astype(np.float32)  # many ties
        ref_i2t, ref_t2i = naive_ranks(s, cap_img)
        np.testing.assert_array_equal(M.ranks_i2t(s, cap_img), ref_i2t)
        np.testing.assert_array_equal(M.ranks_t2i(s, cap_img), ref_t2i)


def test_chunking_matches_unchunked(monkeypatch):
    rng = np.random.default_rng(1)
    cap_img = np.repeat(np.arange(20), 5)
    s = rng.standard_normal((20, 100)).astype(np.float32)
    full = (M.ranks_i2t(s, cap_img), M.ranks_t2i(s, cap_img))
    monkeypatch.setattr(M, "_CHUNK", 7)
    np.testing.assert_array_equal(M.ranks_i2t(s, cap_img), full[0])
    np.testing.assert_array_equal(M.ranks_t2i(s, cap_img), full[1])


def test_summarize_known_values():
    r_i2t = np.array([1, 2, 6, 11])
    r_t2i = np.array([1, 1, 5, 10, 20, 30])
    m = M.summarize(r_i2t, r_t2i)
    assert m["i2t_r1"] == 25.0 and m["i2t_r5"] == 50.0 and m["i2t_r10"] == 75.0
    assert m["t2i_r1"] == pytest.approx(100 * 2 / 6) and m["t2i_r5"] == 50.0
    assert m["t2i_r10"] == pytest.approx(100 * 4 / 6)
    assert m["i2t_medr"] == 4.0          # median 4.0 of (2, 6) -> floor 4
    assert m["t2i_medr"] == 7.0          # median of (5, 10) is 7.5 -> floor 7 (VSE++ convention)
    assert m["i2t_meanr"] == 5.0 and m["t2i_meanr"] == pytest.approx(67 / 6)
    assert m["rsum"] == pytest.approx(25 + 50 + 75 + 100 * 2 / 6 + 50 + 100 * 4 / 6)


def test_perfect_scorer_gets_600():
    cap_img = np.repeat(np.arange(6), 5)
    s = (cap_img[None, :] == np.arange(6)[:, None]).astype(np.float32)
    m = M.retrieval_metrics(s, cap_img)
    assert m["rsum"] == 600.0 and m["i2t_medr"] == 1.0 and m["t2i_meanr"] == 1.0


def test_fold_slices():
    folds = M.fold_slices(5000, 5)
    assert len(folds) == 5
    assert folds[0] == (slice(0, 1000), slice(0, 5000))
    assert folds[4] == (slice(4000, 5000), slice(20000, 25000))
    with pytest.raises(DataError):
        M.fold_slices(4500, 5)


def test_protocol_1k_is_mean_of_folds_with_fold_local_ranks():
    rng = np.random.default_rng(2)
    n_img, per, fold = 40, 5, 10
    cap_img = np.repeat(np.arange(n_img), per)
    s = rng.standard_normal((n_img, n_img * per)).astype(np.float32)
    # Make fold 0 perfect inside the fold but beaten by images of other folds: the fold metric
    # must ignore the other folds' items.
    s[:10, :50] = -5.0
    s[np.arange(10).repeat(5), np.arange(50)] = 5.0
    s[10:, :50] = 6.0
    out = M.protocol_metrics(s, cap_img, fold_size=fold)
    assert set(out) == {"n40", "1k"}
    folds = [M.retrieval_metrics(s[i, c], cap_img[c] - i.start) for i, c in M.fold_slices(n_img, per, fold)]
    assert folds[0]["rsum"] == 600.0
    for k in out["1k"]:
        assert out["1k"][k] == pytest.approx(np.mean([f[k] for f in folds]))
    assert out["n40"] == M.retrieval_metrics(s, cap_img)
    assert out["n40"]["t2i_r1"] < 100.0               # the whole set sees the stronger images


def test_protocol_5k_naming():
    cap_img = np.repeat(np.arange(2000), 1)
    s = np.eye(2000, dtype=np.float32)
    out = M.protocol_metrics(s, cap_img)
    assert set(out) == {"2k", "1k"} and out["1k"]["rsum"] == 600.0


@pytest.mark.parametrize("n, expected", [
    (0, ()), (2, ()), (999, ()), (1000, ("1k",)), (2000, ("1k",)), (4500, ()), (5000, ("1k", "5k")),
])
def test_supported_protocols(n, expected):
    assert M.supported_protocols(n) == expected


def test_protocol_description_names_the_computed_keys():
    assert M.protocol_description(5000) == {
        "5k": "the whole test set of 5000 images (the 5K protocol)",
        "1k": "mean of 5 folds of 1000 images (each fold its own collection)"}
    assert M.protocol_description(2000) == {
        "2k": "the whole test set of 2000 images",
        "1k": "mean of 2 folds of 1000 images (each fold its own collection)"}
    assert M.protocol_description(1000) == {"1k": "the whole test set of 1000 images (one fold: the 1K protocol)"}
    assert M.protocol_description(3) == {"n3": "the whole test set of 3 images (supports neither the 1K "
                                               "protocol, which needs a multiple of 1000 images, nor 5K, "
                                               "which needs exactly 5000)"}
    assert set(M.protocol_metrics(np.eye(2000, dtype=np.float32), np.arange(2000))) == {"2k", "1k"}


def test_small_test_set_warns_once_and_has_no_nan(caplog):
    """data.n_test: 3 -> whole-set metrics only (no '1k' key, nothing NaN), one warning per process."""
    cap_img = np.repeat(np.arange(3), 2)
    s = np.repeat(np.eye(3, dtype=np.float32), 2, axis=1)          # every caption matches its image
    with caplog.at_level("WARNING", logger="aladin"):
        rows = [M.protocol_metrics(s, cap_img) for _ in range(3)]
    assert all(set(r) == {"n3"} and r["n3"]["rsum"] == 600.0 for r in rows)
    assert all(np.isfinite(v) for v in rows[0]["n3"].values())
    assert [r.getMessage() for r in caplog.records] == [
        "3 test images support neither the COCO 1K protocol (a multiple of 1000 images) nor 5K "
        "(exactly 5000): metrics are for the whole set only, under 'n3'"]
    with pytest.raises(DataError, match="0 test images"):
        M.protocol_from_ranks(lambda i, c: (np.zeros(0), np.zeros(0)), 0, 5)


def test_bad_inputs():
    cap_img = np.array([0, 0, 1, 1])
    s = np.zeros((2, 4), np.float32)
    with pytest.raises(DataError, match="caption_image"):
        M.ranks_t2i(s, np.array([0, 1, 2]))
    with pytest.raises(DataError, match="out of range"):
        M.ranks_t2i(s, np.array([0, 0, 1, 2]))
    bad = s.copy()
    bad[0, 1] = np.nan                                  # NaN would otherwise rank first
    with pytest.raises(DataError, match="NaN"):
        M.ranks_t2i(bad, cap_img)
    with pytest.raises(DataError, match="no caption"):
        M.ranks_i2t(np.zeros((3, 4), np.float32), cap_img)
    with pytest.raises(DataError, match="image by image"):
        M.protocol_metrics(s, np.array([1, 1, 0, 0]))


def test_topk_ranks_t2i():
    cap_img = np.array([0, 1, 2])
    topk = np.array([[0, 3, 4],       # found first -> 1
                     [5, 1, -1],      # found second -> 2
                     [0, 1, -1]])     # missing -> max(k+1, fallback)
    np.testing.assert_array_equal(M.topk_ranks_t2i(topk, cap_img, np.array([1, 2, 2])), [1, 2, 4])
    np.testing.assert_array_equal(M.topk_ranks_t2i(topk, cap_img, np.array([1, 2, 9])), [1, 2, 9])


def test_topk_ranks_i2t_first_of_any_caption():
    cap_img = np.repeat(np.arange(3), 2)                 # 3 images x 2 captions
    topk = np.array([[2, 1, 0],       # image 0: c1 at position 2
                     [3, 2, 0],       # image 1: c3 at position 1
                     [-1, 0, 1]])     # image 2: none (and -1 must not match image 2's c5)
    fallback = np.array([2, 1, 7])
    np.testing.assert_array_equal(M.topk_ranks_i2t(topk, cap_img, fallback), [2, 1, 7])


def test_topk_ranks_agree_with_exact_on_full_lists():
    rng = np.random.default_rng(3)
    cap_img = np.repeat(np.arange(8), 5)
    s = rng.standard_normal((8, 40)).astype(np.float32)
    exact_t2i, exact_i2t = M.ranks_t2i(s, cap_img), M.ranks_i2t(s, cap_img)
    k = 3
    top_img = np.argsort(-s.T, axis=1)[:, :k]
    top_cap = np.argsort(-s, axis=1)[:, :k]
    np.testing.assert_array_equal(M.topk_ranks_t2i(top_img, cap_img, exact_t2i), exact_t2i)
    np.testing.assert_array_equal(M.topk_ranks_i2t(top_cap, cap_img, exact_i2t), exact_i2t)


# --- tie rule inside re-ranked lists ----------------------------------------------------------

def test_topk_ranks_with_scores_count_a_tie_ahead_whatever_the_list_order():
    cap_img = np.array([0, 1])
    topk = np.array([[0, 2, 1],          # correct image 0 listed first, but image 2 ties with it
                     [3, 1, -1]])        # correct image 1 second, strictly below image 3
    scores = np.array([[0.5, 0.5, 0.1], [0.9, 0.2, 0.9]])   # the -1 slot's score never counts
    fallback = np.array([1, 1])
    np.testing.assert_array_equal(M.topk_ranks_t2i(topk, cap_img, fallback), [1, 2])      # list order
    np.testing.assert_array_equal(M.topk_ranks_t2i(topk, cap_img, fallback, scores), [2, 2])
    # i2t: 2 images x 2 captions; image 0's best own caption (c1, 0.7) ties with c2 of image 1.
    cap_img = np.array([0, 0, 1, 1])
    topk = np.array([[1, 2, 0], [0, 2, 3]])
    scores = np.array([[0.7, 0.7, 0.7], [0.1, 0.4, 0.3]])
    np.testing.assert_array_equal(M.topk_ranks_i2t(topk, cap_img, fallback, scores), [2, 1])
    # No correct item listed: the fallback rule, as without scores.
    np.testing.assert_array_equal(M.topk_ranks_t2i(np.array([[5, 6]]), np.array([0]), np.array([9]),
                                                   np.zeros((1, 2))), [9])


def test_topk_ranks_with_scores_over_the_whole_collection_equal_exhaustive_ranks_with_ties():
    rng = np.random.default_rng(5)
    cap_img = np.repeat(np.arange(6), 5)
    s = rng.integers(0, 3, (6, 30)).astype(np.float32)               # many exact ties
    # The lists hold every item, in an order that knows nothing of the scores.
    top_img = np.stack([rng.permutation(6) for _ in range(30)])
    top_cap = np.stack([rng.permutation(30) for _ in range(6)])
    s_img = np.take_along_axis(s.T, top_img, axis=1)
    s_cap = np.take_along_axis(s, top_cap, axis=1)
    fb = np.ones(30, np.int64)
    np.testing.assert_array_equal(M.topk_ranks_t2i(top_img, cap_img, fb, s_img), M.ranks_t2i(s, cap_img))
    np.testing.assert_array_equal(M.topk_ranks_i2t(top_cap, cap_img, fb[:6], s_cap), M.ranks_i2t(s, cap_img))


# --- within-family accuracy, tie counts, duplicate captions -----------------------------------

def naive_family(scores, cap_img, family):
    r1, sizes = [], []
    for j in range(scores.shape[1]):
        mine = [i for i in range(scores.shape[0]) if family[i] == family[cap_img[j]]]
        pos = scores[cap_img[j], j]
        r1.append(1 + sum(1 for i in mine if i != cap_img[j] and scores[i, j] >= pos) == 1)
        sizes.append(len(mine))
    return {"t2i_family_r1": 100 * np.mean(r1), "family_size": np.mean(sizes),
            "t2i_family_chance_r1": 100 * np.mean([1 / n for n in sizes])}


def test_within_family_metrics_match_a_naive_loop_with_ties():
    rng = np.random.default_rng(2)
    family = ["f0"] * 4 + ["f4"] * 3 + ["f7"] * 4 + ["f11"]          # uneven, a singleton, not sorted by name
    perm = rng.permutation(12)
    family = [family[p] for p in perm]
    cap_img = np.repeat(np.arange(12), 5)
    s = rng.integers(0, 3, (12, 60)).astype(np.float32)
    out = M.within_family_metrics(s, cap_img, family)
    expected = naive_family(s, cap_img, family)
    assert out.keys() == expected.keys()
    for k in out:
        assert out[k] == pytest.approx(expected[k])
    # A constant scorer gets credit only where the family is the image alone.
    const = M.within_family_metrics(np.zeros((12, 60), np.float32), cap_img, family)
    assert const["t2i_family_r1"] == pytest.approx(100 * 5 / 60)
    with pytest.raises(DataError, match="family_of_image"):
        M.within_family_metrics(s, cap_img, family[:-1])


def test_count_score_ties_matches_a_naive_loop():
    rng = np.random.default_rng(4)
    cap_img = np.repeat(np.arange(7), 3)
    s = rng.integers(0, 4, (7, 21)).astype(np.float32)
    t2i = sum(any(s[i, j] == s[cap_img[j], j] for i in range(7) if i != cap_img[j]) for j in range(21))
    i2t = 0
    for i in range(7):
        best = max(s[i, j] for j in range(21) if cap_img[j] == i)
        i2t += any(s[i, j] == best for j in range(21) if cap_img[j] != i)
    out = M.count_score_ties(s, cap_img)
    assert (out["t2i_tied"], out["i2t_tied"]) == (t2i, i2t) and 0 < t2i < 21
    assert out["t2i_tied_pct"] == pytest.approx(100 * t2i / 21) and out["i2t_tied_pct"] == pytest.approx(100 * i2t / 7)
    distinct = M.count_score_ties(rng.standard_normal((7, 21)).astype(np.float32), cap_img)
    assert (distinct["t2i_tied"], distinct["i2t_tied"]) == (0, 0)


def test_duplicate_captions_count_copies_across_images_only():
    captions = ["a red circle", "a red circle", "two shapes", "a blue star", "two shapes", "a red circle"]
    cap_img = [0, 0, 1, 1, 2, 2]
    # "a red circle" is in images 0 and 2 (all three copies count); "two shapes" in 1 and 2.
    assert M.duplicate_captions(captions, cap_img) == 5
    assert M.duplicate_captions(["x", "x", "y"], [0, 0, 1]) == 0


def test_random_tie_recall_is_the_mean_over_every_tie_order():

    # 4 images, 1 caption each; caption 0 ties its image with two others, caption 1 has one above and one tied.
    s = np.array([[1.0, 0.5, 0.2, 0.0],
                  [1.0, 0.9, 0.2, 0.0],
                  [1.0, 0.5, 0.7, 0.0],
                  [0.0, 0.1, 0.2, 0.9]], dtype=np.float32)
    cap_img = np.arange(4)
    expected = {k: 0.0 for k in M.KS}
    for j in range(4):
        pos, others = s[j, j], [s[i, j] for i in range(4) if i != j]
        above, tied = sum(o > pos for o in others), sum(o == pos for o in others)
        # every position among the tied group equally likely
        ranks = [above + 1 + p for p in range(tied + 1)]
        for k in M.KS:
            expected[k] += 100.0 * np.mean([r <= k for r in ranks]) / 4
    out = M.t2i_recall_random_ties(s, cap_img)
    assert out == pytest.approx({f"t2i_r{k}": expected[k] for k in M.KS})
    assert out["t2i_r1"] == pytest.approx(100 * (1 / 3 + 1 + 1 + 1) / 4)
    # with no ties it is the pessimistic recall
    rng = np.random.default_rng(0)
    r = rng.standard_normal((6, 12)).astype(np.float32)
    ci = np.repeat(np.arange(6), 2)
    summary = M.summarize(*naive_ranks(r, ci))
    got = M.t2i_recall_random_ties(r, ci)
    assert all(got[f"t2i_r{k}"] == pytest.approx(summary[f"t2i_r{k}"]) for k in M.KS)


def test_ranks_i2t_of_sampled_image_queries_equal_their_rows_of_the_full_ranks():
    rng = np.random.default_rng(3)
    cap_img = np.repeat(np.arange(6), 2)
    scores = rng.integers(0, 4, size=(6, 12)).astype(np.float32)       # small integers: many ties
    queries = np.array([4, 1, 1, 5])
    np.testing.assert_array_equal(M.ranks_i2t(scores[queries], cap_img, queries), M.ranks_i2t(scores, cap_img)[queries])
    # Naive reference for one row: 1 + negatives scoring >= the best positive.
    q = 4
    best = scores[q, cap_img == q].max()
    assert M.ranks_i2t(scores[[q]], cap_img, np.array([q]))[0] == 1 + ((scores[q] >= best) & (cap_img != q)).sum()
    with pytest.raises(DataError, match="no caption"):
        M.ranks_i2t(scores[:1, :4], cap_img[:4], np.array([5]))
    with pytest.raises(DataError, match="expected"):
        M.ranks_i2t(scores, cap_img, queries)
