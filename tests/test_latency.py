"""Latency harness and recipes: result structure and synthetic collections (never timings)."""
import numpy as np
import pytest

from aladin.latency.encoders import encoder_latency
from aladin.latency.queries import clustered_collection, latency_queries, perturbed_collection
from aladin.latency.report import efficiency_points, latency_report
from aladin.latency.scaling import scaling_latency
from aladin.latency.system import search_latency
from aladin.latency.teacher import teacher_latency
from aladin.latency import timing as T
from tests._params import section


def test_per_query_and_throughput_structure():
    calls = []
    out = T.per_query(calls.append, list(range(10)), warmup=3)
    assert calls == [0, 1, 2] + list(range(10))                  # warm-up, then every query once
    assert set(out) == {"p50_ms", "p95_ms", "mean_ms", "n_queries"} and out["n_queries"] == 10
    assert 0 <= out["p50_ms"] <= out["p95_ms"]
    batches = []
    qps = T.throughput(batches.append, list(range(10)), batch_size=4)
    assert batches[1:] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] and qps > 0


def test_perturbed_collection():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((50, 16)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    coll = perturbed_collection(base, 170, noise=0.3, seed=1)
    assert coll.shape == (170, 16) and coll.dtype == np.float32
    np.testing.assert_array_equal(coll[:50], base)              # the real rows come first, untouched
    np.testing.assert_allclose(np.linalg.norm(coll, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(coll, perturbed_collection(base, 170, noise=0.3, seed=1))
    # Copy 50 + i perturbs base row i: close to it, not equal.
    d = np.linalg.norm(coll[50:100] - base, axis=1)
    assert np.all(d > 0.05) and np.all(d < 0.8)
    np.testing.assert_array_equal(perturbed_collection(base, 20, 0.3, 1), base[:20])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests._tiny_pipeline import build_tiny_pipeline
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny"), epochs=2)


def test_clustered_collection():
    coll = clustered_collection(300, 16, seed=2, clusters=4)
    assert coll.shape == (300, 16) and coll.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(coll, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(coll, clustered_collection(300, 16, seed=2, clusters=4))
    assert (coll @ coll.T > 0.8).mean() > 0.2                      # clustered: many close pairs


def test_retriever_and_latency_recipes_structure(tiny):
    from PIL import Image

    from aladin.features import store_backbones
    from aladin.retrieval.retriever import Retriever

    root = tiny
    retr = Retriever(root / "features", "test", root / "models/student.pt", root / "index",
                     root / "models/teacher.pt")
    hits = retr.search_text("a red circle", k=5)
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5] and all(h.file for h in hits)
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    reranked = retr.search_text("a red circle", k=5, rerank_k=6)
    assert len(reranked) == 5 and {h.index for h in reranked} <= set(range(retr.store.n_images))
    files = [root / f for f in retr.store.image_files]
    cap_hits = retr.search_image(Image.open(files[0]), k=3, rerank_k=6)
    assert len(cap_hits) == 3 and all(h.text for h in cap_hits)

    cfg = section("latency", threads=1, n_queries=4, n_image_queries=2, teacher_queries=2, warmup=1, batch_size=3,
                  throughput_queries=6, k=3, sizes=[8, 20], teacher_sizes=[8, 20], image_query_sizes=[8],
                  index_kinds=["flat", "hnsw"], scaling_kind="ivf_flat", scaling_nlist=2, scaling_nprobe=1)
    texts, images = latency_queries(retr.store, files, cfg, seed=0)
    assert len(texts) == 6 and len(images) == 2
    encoders = encoder_latency(*store_backbones(retr.store, "cpu"), texts, images, cfg)
    assert set(encoders) == {"text", "image"} and encoders["text"]["n_queries"] == 4
    teacher = teacher_latency(Retriever(root / "features", "test", student=None, teacher=root / "models/teacher.pt"),
                                texts, images, cfg)
    assert [r["n_images"] for r in teacher["scaling"]] == [8, 20] and teacher["scaling"][1]["synthetic"]
    scaling = scaling_latency(retr.index.image_emb.shape[1], 5, retr.index.cfg, cfg, seed=0, words=4)
    rows = {(r["method"], r["query"], r["n_images"]) for r in scaling}
    assert rows == {("student_flat", "text", 8), ("student_ivf_flat", "text", 8), ("student_flat", "text", 20),
                    ("student_ivf_flat", "text", 20), ("student_flat", "image", 8)}
    system = search_latency(retr, texts, images, cfg, seed=0, rerank_k=6, rerank_depths=[3, 6])
    assert set(system) == {"text", "image", "index_kinds", "rerank"}
    assert system["text"]["student"]["n_queries"] == 4 and system["text"]["student"]["qps"] > 0
    assert [r["rerank_k"] for r in system["rerank"]] == [3, 6]
    assert [r["kind"] for r in system["index_kinds"]] == ["flat", "hnsw"]
    assert system["index_kinds"][0]["recall_at_k_vs_flat"] == 1.0

    evaluation = {"summary": {"two_stage_rsum_vs_teacher": 1.0, "two_stage_rsum_vs_student": 1.2}}
    report = latency_report(system, encoders, teacher, scaling, [], evaluation, cfg)
    assert set(report["text"]) == {"encoder_only", "student", "two_stage"}
    assert set(report["image"]) == {"encoder_only", "student", "two_stage", "teacher"}
    e2e = [r for r in report["scaling"] if r["method"] == "student_flat_e2e"]
    flat = {r["n_images"]: r["p50_ms"] for r in scaling if r["method"] == "student_flat" and r["query"] == "text"}
    own = next(r for r in system["index_kinds"] if r["kind"] == system["text"]["student"]["index"])
    overhead = system["text"]["student"]["p50_ms"] - own["search_p50_ms"]
    assert [r["p50_ms"] for r in e2e] == pytest.approx([overhead + flat[8], overhead + flat[20]])
    assert set(report["targets"]) >= {"student_5k_vs_text_encoder", "two_stage_rsum_vs_teacher"}


def test_efficiency_points_join_quality_and_latency_per_method():
    rows = lambda r: {"1k": {"rsum": r}, "5k": {"rsum": r / 2}}           # noqa: E731
    evaluation = {"protocol": {"n_images": 5000}, "student": rows(240.0), "student_triplet": rows(170.0),
                  "teacher": rows(316.0), "cross_encoder": {"fold0_sampled": {"rsum": 330.0}},
                  "cross_rerank": {"rerank_k": 10, "fold0": {"rsum": 300.0}}}
    scaling = [{"method": m, "query": "text", "n_images": n, "p50_ms": ms}
               for m, n, ms in (("teacher", 5000, 65.0), ("teacher", 1000, 14.0), ("cross_encoder", 5000, 2100.0),
                                ("cross_rerank", 5000, 25.0))]
    depths = [{"rerank_k": 10, "rsum": 150.0, "rsum_1k": 290.0, "e2e_p50_ms": 19.0}]
    pts = {p["method"]: p for p in efficiency_points({"text": {"student": {"p50_ms": 17.5}}}, depths,
                                                       evaluation, scaling)}
    assert set(pts) == {"student", "student_triplet", "teacher", "two_stage_k10", "cross_encoder", "cross_rerank_k10"}
    assert (pts["teacher"]["rsum"], pts["teacher"]["p50_ms"], pts["teacher"]["protocol"]) == (316.0, 65.0, "1k")
    assert pts["student_triplet"]["p50_ms"] == pts["student"]["p50_ms"] == 17.5    # the same architecture
    assert (pts["two_stage_k10"]["rsum"], pts["two_stage_k10"]["p50_ms"]) == (290.0, 19.0)
    assert (pts["cross_encoder"]["rsum"], pts["cross_encoder"]["p50_ms"], pts["cross_encoder"]["protocol"]) == \
        (330.0, 2100.0, "fold0_sampled")
    assert (pts["cross_rerank_k10"]["p50_ms"], pts["cross_rerank_k10"]["protocol"]) == (25.0, "fold0")


def test_word_count_queries_hold_their_words_and_the_sparse_kind_is_timed():
    from aladin.latency.queries import word_count_queries
    from aladin.latency.scaling import scaling_latency
    from aladin.params import IndexConfig
    from tests._params import section

    q = word_count_queries(6, 32, words=5, seed=0)
    assert q.shape == (6, 32) and (q.sum(1) == 5).all() and (q >= 0).all()
    np.testing.assert_array_equal(q, word_count_queries(6, 32, words=5, seed=0))
    cfg = section("latency", n_queries=3, throughput_queries=4, warmup=1, batch_size=2, sizes=[50],
                  image_query_sizes=[10], scaling_kind="ivf_flat", scaling_nlist=2, scaling_nprobe=1)
    rows = scaling_latency(32, 2, IndexConfig(kind="sparse"), cfg, seed=0, words=5)
    text = {r["method"]: r for r in rows if r["query"] == "text"}
    assert set(text) == {"student_flat", "student_ivf_flat", "student_sparse"}
    assert text["student_sparse"]["recall_at_k_vs_flat"] == 1.0          # exact, like flat
