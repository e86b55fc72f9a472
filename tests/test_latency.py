"""Latency harness: result structure and synthetic collections (never timings)."""
import numpy as np
import pytest

from aladin import latency as L


def test_per_query_and_throughput_structure():
    calls = []
    out = L.per_query(calls.append, list(range(10)), warmup=3)
    assert calls == [0, 1, 2] + list(range(10))                  # warm-up, then every query once
    assert set(out) == {"p50_ms", "p95_ms", "mean_ms", "n_queries"} and out["n_queries"] == 10
    assert 0 <= out["p50_ms"] <= out["p95_ms"]
    batches = []
    qps = L.throughput(batches.append, list(range(10)), batch_size=4)
    assert batches[1:] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] and qps > 0


def test_perturbed_collection():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((50, 16)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    coll = L.perturbed_collection(base, 170, noise=0.3, seed=1)
    assert coll.shape == (170, 16) and coll.dtype == np.float32
    np.testing.assert_array_equal(coll[:50], base)              # the real rows come first, untouched
    np.testing.assert_allclose(np.linalg.norm(coll, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(coll, L.perturbed_collection(base, 170, noise=0.3, seed=1))
    # Copy 50 + i perturbs base row i: close to it, not equal.
    d = np.linalg.norm(coll[50:100] - base, axis=1)
    assert np.all(d > 0.05) and np.all(d < 0.8)
    np.testing.assert_array_equal(L.perturbed_collection(base, 20, 0.3, 1), base[:20])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("aladin.scoring")
    from tests._tiny_pipeline import build_tiny_pipeline
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny"), epochs=2)


def test_retriever_and_run_latency_structure(tiny):
    from pathlib import Path

    from aladin.retriever import Retriever

    root = tiny
    retr = Retriever(root / "features", "test", root / "models/student.pt", root / "index",
                     root / "models/teacher.pt", rerank_k=6)
    hits = retr.search_text("a red circle", k=5)
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5] and all(h.file for h in hits)
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    reranked = retr.search_text("a red circle", k=5, rerank=True)
    assert len(reranked) == 5 and {h.index for h in reranked} <= set(range(retr.store.n_images))
    files = [Path(f) if Path(f).is_absolute() else root / f for f in retr.store.image_files]
    from PIL import Image
    cap_hits = retr.search_image(Image.open(files[0]), k=3, rerank=True)
    assert len(cap_hits) == 3 and all(h.text for h in cap_hits)
    assert len(retr.teacher_search_text("a red circle", k=4)) == 4

    cfg = L.LatencyConfig(threads=1, n_queries=4, n_image_queries=2, teacher_queries=2, warmup=1, batch_size=3,
                          throughput_queries=6, k=3, sizes=[8, 20], teacher_sizes=[8, 20], image_query_sizes=[8],
                          index_kinds=["flat", "hnsw"], scaling_kind="ivf_flat", scaling_nlist=2,
                          scaling_nprobe=1)
    res = L.run_latency(retr, cfg, seed=0, rerank_k=6, rerank_depths=[3, 6], image_files=files)
    assert set(res) == {"text", "image", "scaling", "index_kinds", "rerank"}
    assert set(res["text"]) == {"encoder_only", "student", "two_stage"}
    assert set(res["image"]) == {"encoder_only", "student", "two_stage", "teacher"}
    assert res["text"]["student"]["n_queries"] == 4 and res["text"]["student"]["qps"] > 0
    assert [r["rerank_k"] for r in res["rerank"]] == [3, 6]
    assert [r["kind"] for r in res["index_kinds"]] == ["flat", "hnsw"]
    assert res["index_kinds"][0]["recall_at_k_vs_flat"] == 1.0
    rows = {(r["method"], r["query"], r["n_images"]): r for r in res["scaling"]}
    assert set(rows) == {("student_flat", "text", 8), ("student_ivf_flat", "text", 8),
                         ("student_flat", "text", 20), ("student_ivf_flat", "text", 20),
                         ("teacher", "text", 8), ("teacher", "text", 20), ("student_flat", "image", 8)}
    assert rows[("student_flat", "text", 20)]["synthetic"] and not rows[("student_flat", "text", 8)]["synthetic"]
    assert rows[("student_flat", "text", 20)]["recall_at_k_vs_flat"] == 1.0
