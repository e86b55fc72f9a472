"""faiss index module: every kind round-trips, approximate kinds find the exact neighbours,
and a manifest that does not match its files is refused."""
import dataclasses

import numpy as np
import pytest

from aladin.retrieval import index as X
from aladin.errors import ConfigError, DataError

SMALL = dict(hnsw_m=8, ef_construction=40, ef_search=64, nlist=8, nprobe=8, pq_m=8, pq_nbits=6)


def unit(rng, n, d=32):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return unit(rng, 300), unit(rng, 600), unit(rng, 20)


@pytest.mark.parametrize("kind", X.KINDS)
def test_round_trip_and_recall(tmp_path, data, kind):
    img, cap, q = data
    cfg = X.IndexConfig(kind=kind, **SMALL)
    X.save_index_dir(tmp_path / "index", img, cap, cfg, seed=0, provenance={"model": {"sha256": "abc"}})
    loaded = X.load_index_dir(tmp_path / "index", cfg=cfg)
    np.testing.assert_array_equal(loaded.image_emb, img)
    assert loaded.images.ntotal == 300 and loaded.captions.ntotal == 600
    # The saved index answers exactly like a freshly built one (same seed -> same index).
    fresh = X.build_index(img, cfg, seed=0)
    s1, i1 = X.search(loaded.images, q, 10)
    s2, i2 = X.search(fresh, q, 10)
    np.testing.assert_array_equal(i1, i2)
    # Against brute force: flat is exact, the others (every cell probed / wide beam) nearly so.
    exact = np.argsort(-(q @ img.T), axis=1)[:, :10]
    recall = X.recall_vs_exact(i1, exact)
    assert recall == 1.0 if kind != "ivf_pq" else recall > 0.5
    if kind in ("flat", "sparse"):
        np.testing.assert_allclose(s1, np.take_along_axis(q @ img.T, exact, axis=1), rtol=1e-5)


def test_search_knobs_apply_without_rebuild(tmp_path, data):
    img, cap, _ = data
    cfg = X.IndexConfig(kind="ivf_flat", **SMALL)
    X.save_index_dir(tmp_path / "index", img, cap, cfg, seed=0, provenance={})
    loaded = X.load_index_dir(tmp_path / "index", cfg=dataclasses.replace(cfg, nprobe=2))
    assert loaded.images.nprobe == 2
    with pytest.raises(DataError, match="nlist"):
        X.load_index_dir(tmp_path / "index", cfg=dataclasses.replace(cfg, nlist=4, nprobe=2))


def test_manifest_mismatch_is_refused(tmp_path, data):
    img, cap, _ = data
    model = tmp_path / "student.pt"
    model.write_bytes(b"weights v1")
    path = tmp_path / "index"
    X.save_index_dir(path, img, cap, X.IndexConfig(kind="flat"), seed=0,
                     provenance={"model": {"path": str(model), "sha256": X.sha256_file(model)}})
    X.load_index_dir(path, model_path=model)                       # matches
    model.write_bytes(b"weights v2")                                # retrained checkpoint
    with pytest.raises(DataError, match="rerun the index stage"):
        X.load_index_dir(path, model_path=model)
    np.save(path / "image_emb.npy", img[::-1])                      # embeddings swapped under it
    with pytest.raises(DataError, match="image_emb.npy: sha256"):
        X.load_index_dir(path)
    with pytest.raises(DataError, match="hnsw"):
        X.load_index_dir(path, cfg=X.IndexConfig(kind="hnsw"))
    np.save(path / "image_emb.npy", img)                            # restored: loads again
    X.load_index_dir(path)
    (path / "captions.faiss").unlink()
    with pytest.raises(DataError, match="captions.faiss: missing"):
        X.load_index_dir(path)
    with pytest.raises(DataError, match="not found"):
        X.load_index_dir(tmp_path / "nowhere")


def test_bad_params():
    rng = np.random.default_rng(1)
    with pytest.raises(ConfigError, match="index.nlist"):
        X.build_index(unit(rng, 10), X.IndexConfig(kind="ivf_flat", nlist=16, nprobe=4))
    with pytest.raises(ConfigError, match="index.pq_m"):
        X.build_index(unit(rng, 300), X.IndexConfig(kind="ivf_pq", nlist=4, nprobe=4, pq_m=5))


def test_recall_vs_exact_counts_overlap():
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    approx = np.array([[4, 3, 9, -1], [5, 6, 7, 8]])
    assert X.recall_vs_exact(approx, exact) == pytest.approx((2 / 4 + 1) / 2)


# -- evaluation rows through an index -------------------------------------------------------------
from aladin.evaluation import ranking as E  # noqa: E402
from aladin.evaluation import metrics as M  # noqa: E402


@pytest.fixture(scope="module")
def collection():
    rng = np.random.default_rng(4)
    img = unit(rng, 40, 16)
    cap = unit(rng, 200, 16)
    cap = cap + 0.8 * np.repeat(img, 5, axis=0)              # captions near their image
    return img, cap / np.linalg.norm(cap, axis=1, keepdims=True), np.repeat(np.arange(40), 5)


def test_flat_index_ranks_equal_exhaustive_ranks(collection):
    img, cap, cap_img = collection
    retrieval = E.IndexedRetrieval(img, cap, X.IndexConfig(kind="flat"), seed=0)
    fn = E.index_rank_fn(retrieval, cap_img, k=5)

    def exhaustive(i, c):
        scores, local = (img @ cap.T)[i, c], cap_img[c] - i.start
        return M.ranks_i2t(scores, local), M.ranks_t2i(scores, local)
    for i, c in [(slice(0, 40), slice(0, 200)), (slice(20, 40), slice(100, 200))]:
        for got, want in zip(fn(i, c), exhaustive(i, c)):
            np.testing.assert_array_equal(got, want)


def test_index_ranks_past_k_use_the_fallback(collection):
    img, cap, cap_img = collection
    # An index that finds nothing: every rank comes from the exhaustive fallback, at least k + 1.
    retrieval = E.IndexedRetrieval(img, cap, X.IndexConfig(kind="flat"), seed=0)
    retrieval.topk = lambda i, c, k: (np.full((c.stop - c.start, k), -1), np.full((i.stop - i.start, k), -1))
    r_i2t, r_t2i = E.index_rank_fn(retrieval, cap_img, k=3)(slice(0, 40), slice(0, 200))
    s = img @ cap.T
    np.testing.assert_array_equal(r_t2i, np.maximum(M.ranks_t2i(s, cap_img), 4))
    np.testing.assert_array_equal(r_i2t, np.maximum(M.ranks_i2t(s, cap_img), 4))


def test_two_stage_with_an_oracle_reranker(collection):
    img, cap, cap_img = collection
    oracle = (cap_img[None, :] == np.arange(40)[:, None]).astype(np.float32)   # (N_img, N_cap)
    retrieval = E.IndexedRetrieval(img, cap, X.IndexConfig(kind="flat"), seed=0)
    k = 5
    r_i2t, r_t2i = E.two_stage_rank_fn(retrieval, cap_img, k, *E.matrix_scorers(oracle))(slice(0, 40), slice(0, 200))
    s = img @ cap.T
    student_t2i, student_i2t = M.ranks_t2i(s, cap_img), M.ranks_i2t(s, cap_img)
    # Found in the top k -> the oracle moves it to rank 1; otherwise the student's rank stands.
    np.testing.assert_array_equal(r_t2i, np.where(student_t2i <= k, 1, student_t2i))
    np.testing.assert_array_equal(r_i2t, np.where(student_i2t <= k, 1, student_i2t))
    out = M.protocol_from_ranks(E.two_stage_rank_fn(retrieval, cap_img, k, *E.matrix_scorers(oracle)), 40, 5,
                                fold_size=20)
    assert set(out) == {"n40", "1k"}


def test_two_stage_over_the_whole_collection_equals_exhaustive_ranks_with_ties(collection):
    img, cap, cap_img = collection
    # A re-ranker with many exact ties: the student's order must not break them in its favour.
    tied = np.random.default_rng(1).integers(0, 3, (40, 200)).astype(np.float32)
    tied[cap_img, np.arange(200)] = 1.0                           # correct items tie with others
    retrieval = E.IndexedRetrieval(img, cap, X.IndexConfig(kind="flat"), seed=0)
    fn = E.two_stage_rank_fn(retrieval, cap_img, 200, *E.matrix_scorers(tied))
    r_i2t, r_t2i = fn(slice(0, 40), slice(0, 200))
    np.testing.assert_array_equal(r_t2i, M.ranks_t2i(tied, cap_img))
    np.testing.assert_array_equal(r_i2t, M.ranks_i2t(tied, cap_img))
    # A 20-image fold re-ranked whole equals the exhaustive ranks inside the fold.
    sub_i2t, sub_t2i = fn(slice(20, 40), slice(100, 200))
    np.testing.assert_array_equal(sub_t2i, M.ranks_t2i(tied[20:, 100:], cap_img[100:] - 20))
    np.testing.assert_array_equal(sub_i2t, M.ranks_i2t(tied[20:, 100:], cap_img[100:] - 20))


def test_index_recall_of_flat_is_one(collection):
    img, cap, _ = collection
    rec = E.index_recall(E.IndexedRetrieval(img, cap, X.IndexConfig(kind="flat"), seed=0))
    assert rec == {"t2i_recall10_vs_flat": 1.0, "i2t_recall10_vs_flat": 1.0}


def test_recall_vs_exact_ignores_padding_of_small_collections():
    exact = np.array([[3, 1, -1, -1]])                 # collection of 2 items, k = 4
    assert X.recall_vs_exact(np.array([[1, 3, -1, -1]]), exact) == 1.0


def test_two_stage_scores_order_each_caption_as_two_stage_t2i():
    rng = np.random.default_rng(5)
    n_img, cpi, k = 30, 2, 6
    cap_img = np.repeat(np.arange(n_img), cpi)
    student = rng.standard_normal((n_img, n_img * cpi)).astype(np.float32)
    teacher = rng.integers(0, 4, (n_img, n_img * cpi)).astype(np.float32)     # ties among the listed
    top = np.argsort(-student, axis=0, kind="stable")[:k].T                   # (N_cap, k) student top-k
    composed = E.two_stage_scores(student, teacher[top, np.arange(n_img * cpi)[:, None]], top)
    ranks = M.ranks_t2i(composed, cap_img)
    for j in range(n_img * cpi):
        listed = list(top[j])
        own = cap_img[j]
        if own in listed:   # in the list: 1 + listed images with teacher score >= its own (the tie rule)
            expected = 1 + sum(teacher[i, j] >= teacher[own, j] for i in listed if i != own)
        else:               # after the whole list, in the student's order
            expected = k + 1 + sum(student[i, j] >= student[own, j] for i in range(n_img)
                                   if i not in listed and i != own)
        assert ranks[j] == expected


def test_fallback_ranks_computed_once_per_sub_collection_and_shared_by_every_depth(collection):
    img, cap, cap_img = collection
    retrieval = E.IndexedRetrieval(img, cap, X.IndexConfig(kind="flat"), seed=0)
    folds = [(slice(0, 20), slice(0, 100)), (slice(20, 40), slice(100, 200))]
    first = [E.index_rank_fn(retrieval, cap_img, k=3)(i, c) for i, c in folds]
    assert len(retrieval.fallback) == 2
    oracle = (cap_img[None, :] == np.arange(40)[:, None]).astype(np.float32)
    for k in (2, 5):
        E.two_stage_rank_fn(retrieval, cap_img, k, *E.matrix_scorers(oracle))(*folds[1])
    assert len(retrieval.fallback) == 2                   # the depths reused the fold's exhaustive ranks
    fresh = E.IndexedRetrieval(img, cap, X.IndexConfig(kind="flat"), seed=0)
    for (i, c), got in zip(folds, first):
        for a, b in zip(got, E.index_rank_fn(fresh, cap_img, k=3)(i, c)):
            np.testing.assert_array_equal(a, b)
    # The same slices under another caption->image map are another sub-collection.
    reversed_in_fold = np.concatenate([cap_img[:100][::-1], cap_img[100:]])
    E.index_rank_fn(retrieval, reversed_in_fold, k=3)(*folds[0])
    assert len(retrieval.fallback) == 3


def codebook_like(rng, n_img=200, n_cap=400, codes=64, words=5):
    """Dense non-negative image vectors; captions as word counts over the codes (sparse)."""
    img = rng.uniform(-0.2, 1.0, (n_img, codes)).astype(np.float32)
    cap = np.zeros((n_cap, codes), np.float32)
    for row in cap:
        np.add.at(row, rng.integers(0, codes, words), 1.0)
    return img, cap


@pytest.mark.parametrize("sparse_side", ["collection", "queries"])
def test_sparse_index_equals_naive_top_k(sparse_side):
    rng = np.random.default_rng(3)
    img, cap = codebook_like(rng)
    coll, queries = (cap, img[:30]) if sparse_side == "collection" else (img, cap[:30])
    index = X.SparseIndex(coll)
    assert (index.rows is not None) == (sparse_side == "collection")
    scores, ids = X.search(index, queries, 7)
    for q, s_row, i_row in zip(queries, scores, ids):           # naive: every item scored, sorted
        naive = sorted(range(len(coll)), key=lambda j: (-float(q @ coll[j]), j))[:7]
        np.testing.assert_allclose(s_row, [float(q @ coll[j]) for j in naive], rtol=1e-5)
        assert len(set(i_row)) == 7
        np.testing.assert_allclose([float(q @ coll[j]) for j in i_row], s_row, rtol=1e-5)


def test_sparse_index_pads_past_the_collection_and_round_trips(tmp_path):
    rng = np.random.default_rng(4)
    img, cap = codebook_like(rng, n_img=5, n_cap=12)
    scores, ids = X.search(X.SparseIndex(img), cap[:3], 8)
    assert (ids[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all() and (ids[:, :5] >= 0).all()
    cfg = X.IndexConfig(kind="sparse")
    X.save_index_dir(tmp_path / "index", img, cap, cfg, seed=0, provenance={})
    loaded = X.load_index_dir(tmp_path / "index", cfg=cfg)
    assert isinstance(loaded.captions, X.SparseIndex) and loaded.captions.rows is not None
    np.testing.assert_array_equal(X.search(loaded.images, cap, 3)[1], X.search(X.SparseIndex(img), cap, 3)[1])
