"""The search engine: HTTP API (every endpoint, every bad request), engine concurrency, the CLI.

Runs against a tiny but real pipeline output (tests/_tiny_pipeline.py): real backbones, a
student trained for a few seconds on an easy dataset, an untrained teacher for re-ranking.
"""
from __future__ import annotations

import json
import re
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from _tiny_pipeline import shared_tiny_pipeline
from aladin.search import cli
from aladin.search.engine import Limits, SearchEngine
from aladin.search.service import create_app


@pytest.fixture(scope="module")
def root() -> Path:
    return shared_tiny_pipeline()


@pytest.fixture(scope="module")
def engine(root):
    return cli.load_engine(root, ["flat", "hnsw"], teacher=True, concurrency=2)


@pytest.fixture(scope="module")
def client(engine):
    return TestClient(create_app(engine))


def png_bytes(path: Path) -> bytes:
    return path.read_bytes()


def ok_after(client: TestClient) -> None:
    """The service keeps serving after a bad request."""
    r = client.get("/api/search/text", params={"q": "a red circle", "k": 1})
    assert r.status_code == 200 and len(r.json()["hits"]) == 1


# ---------------------------------------------------------------- endpoints

def test_health(client, engine):
    h = client.get("/health").json()
    assert h["status"] == "ok"
    assert h["indexes"] == ["flat", "hnsw"] and h["default_index"] == "flat"
    assert (h["n_images"], h["n_captions"]) == (8, 40)
    assert h["rerank_available"] is True
    assert h["max_k"] == engine.limits.max_k


def test_page_is_self_contained(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    for needle in ('id="query"', 'id="results"', "/api/search/text", "/api/search/image", "/health"):
        assert needle in page
    assert "http://" not in page and "https://" not in page      # no CDN, nothing fetched from outside


def test_text_search_finds_each_test_image_and_matches_the_retriever(client, engine):
    store, retriever = engine.store, engine.retrievers["flat"]
    for i, image_id in enumerate(store.image_ids):
        q = store.captions[5 * i]                                  # a test caption of image i
        body = client.get("/api/search/text", params={"q": q, "k": 3}).json()
        assert body["query"] == q and body["k"] == 3 and body["index"] == "flat" and body["rerank"] is False
        hits = body["hits"]
        assert hits[0]["image_id"] == image_id
        want = retriever.search_text(q, 3, False)
        assert [(h["rank"], h["image_index"], h["image_id"]) for h in hits] == [(w.rank, w.index, w.id) for w in want]
        assert [h["score"] for h in hits] == pytest.approx([w.score for w in want], abs=1e-6)
        assert hits[0]["captions"] == store.captions[5 * i:5 * i + 5]
        assert hits[0]["image_url"] == f"/images/{i}"


def test_rerank_returns_the_retrievers_two_stage_ranking(client, engine):
    q = engine.store.captions[10]
    body = client.get("/api/search/text", params={"q": q, "k": 5, "rerank": "true"}).json()
    assert body["rerank"] is True
    want = engine.retrievers["flat"].search_text(q, 5, engine.rerank_k)
    assert [h["image_index"] for h in body["hits"]] == [w.index for w in want]
    scores = [h["score"] for h in body["hits"]]
    assert scores == pytest.approx([w.score for w in want], abs=1e-5)
    assert scores == sorted(scores, reverse=True)


def test_index_choice(client):
    q = "a cyan square"
    flat = client.get("/api/search/text", params={"q": q, "k": 8}).json()
    hnsw = client.get("/api/search/text", params={"q": q, "k": 8, "index": "hnsw"}).json()
    assert hnsw["index"] == "hnsw"
    # 8 items: HNSW visits them all, so it must agree with exact search.
    assert [h["image_index"] for h in hnsw["hits"]] == [h["image_index"] for h in flat["hits"]]


def test_image_search(client, engine):
    store = engine.store
    i = 3
    path = engine.image_file(i)
    r = client.post("/api/search/image", params={"k": 5}, files={"file": ("query.png", png_bytes(path), "image/png")})
    assert r.status_code == 200
    body = r.json()
    assert body["query"] == "query.png"
    want = engine.retrievers["flat"].search_image(Image.open(path), 5, False)
    assert [h["caption_index"] for h in body["hits"]] == [w.index for w in want]
    for h in body["hits"]:
        assert h["caption"] == store.captions[h["caption_index"]]
        assert h["image_index"] == h["caption_index"] // 5
        assert h["image_id"] == store.image_ids[h["image_index"]]
    # The collection's own image: its own captions come first (easy data, trained student).
    assert body["hits"][0]["image_index"] == i
    rr = client.post("/api/search/image", params={"k": 5, "rerank": True, "index": "hnsw"},
                     files={"file": ("q.png", png_bytes(path), "image/png")}).json()
    assert rr["rerank"] is True and rr["index"] == "hnsw" and len(rr["hits"]) == 5


def test_image_files_are_served(client, engine):
    r = client.get("/images/2")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == engine.image_file(2).read_bytes()
    for bad, status in (("8", 404), ("-1", 404), ("99999", 404), ("abc", 422)):
        r = client.get(f"/images/{bad}")
        assert r.status_code == status and r.json()["detail"]


# ---------------------------------------------------------------- bad requests

@pytest.mark.parametrize("params, status, message", [
    ({"q": ""}, 400, "q: the query is empty"),
    ({"q": "   \n "}, 400, "q: the query is empty"),
    ({}, 422, "q: Field required"),
    ({"q": "x" * 501}, 400, "q: the query has 501 characters, at most 500"),
    ({"q": "a red circle", "k": 0}, 400, "k: must be between 1 and 8"),
    ({"q": "a red circle", "k": -3}, 400, "k: must be between 1 and 8"),
    ({"q": "a red circle", "k": 9}, 400, "k: must be between 1 and 8"),        # more than the collection
    ({"q": "a red circle", "k": "ten"}, 422, "k: "),
    ({"q": "a red circle", "rerank": "maybe"}, 422, "rerank: "),
    ({"q": "a red circle", "index": "ivf_pq"}, 400, "index: unknown index 'ivf_pq'; this service has flat, hnsw"),
])
def test_bad_text_requests(client, params, status, message):
    r = client.get("/api/search/text", params=params)
    assert r.status_code == status
    assert message in r.json()["detail"]
    ok_after(client)


def _bomb_png(side: int = 100_000) -> bytes:
    """A PNG header claiming side x side pixels (a decompression bomb), with one tiny data chunk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_bad_image_requests(client, engine):
    good = png_bytes(engine.image_file(0))
    cases = [
        ({"file": ("notes.txt", b"this is not an image", "text/plain")}, {}, 415, "file: not a readable image"),
        ({"file": ("cut.png", good[:60], "image/png")}, {}, 415, "file: not a readable image"),
        ({"file": ("empty.png", b"", "image/png")}, {}, 400, "file: the uploaded file is empty"),
        ({"file": ("bomb.png", _bomb_png(), "image/png")}, {}, 413, "pixels"),
        ({}, {}, 422, "file: Field required"),
        ({"file": ("ok.png", good, "image/png")}, {"k": 41}, 400, "k: must be between 1 and 40"),
        ({"file": ("ok.png", good, "image/png")}, {"index": "nope"}, 400, "index: unknown index 'nope'"),
    ]
    for files, params, status, message in cases:
        r = client.post("/api/search/image", params=params, files=files)
        assert r.status_code == status, (files.keys(), r.text)
        assert message in r.json()["detail"]
    ok_after(client)


def test_unreadable_image_names_the_accepted_types(client):
    """415: what to send instead, no Python object repr (PIL names our in-memory buffer)."""
    types = "image/jpeg, image/png, image/webp, image/gif, image/bmp, image/tiff"
    r = client.post("/api/search/image", files={"file": ("notes.txt", b"this is not an image", "text/plain")})
    assert r.status_code == 415
    assert r.json()["detail"] == f"file: not a readable image (unknown format); accepted: {types}"
    assert client.get("/health").json()["image_types"] == types.split(", ")


def test_oversized_upload_is_refused(engine):
    small = SearchEngine(engine.retrievers, limits=Limits(max_upload_bytes=1000), root=engine.root, rerank_k=10)
    client = TestClient(create_app(small))
    big = png_bytes(engine.image_file(0)) + b"\0" * 200_000        # over the limit and its multipart slack
    r = client.post("/api/search/image", files={"file": ("big.png", big, "image/png")})
    # The limit stated is the file's, the one /health reports, not the request's (file + framing).
    assert client.get("/health").json()["max_upload_bytes"] == 1000
    assert r.status_code == 413
    assert re.fullmatch(r"file: request of \d{6} bytes, larger than the 1000 bytes allowed", r.json()["detail"])
    # Under the request limit but over the file limit: caught when reading the file.
    mid = b"\0" * 5000
    r = client.post("/api/search/image", files={"file": ("mid.png", mid, "image/png")})
    assert r.status_code == 413 and r.json()["detail"] == "file: larger than the 1000 bytes allowed"
    ok_after(client)


def test_rerank_without_teacher_is_a_clear_400(root):
    engine = cli.load_engine(root, teacher=False)
    client = TestClient(create_app(engine))
    assert client.get("/health").json()["rerank_available"] is False
    r = client.get("/api/search/text", params={"q": "a red circle", "k": 3, "rerank": True})
    assert r.status_code == 400 and "re-ranking needs the teacher" in r.json()["detail"]
    ok_after(client)


# ---------------------------------------------------------------- concurrency

def test_concurrent_queries_give_the_sequential_answers(engine):
    queries = [engine.store.captions[j] for j in range(0, 40, 3)]
    sequential = [engine.search_text(q, 4)["hits"] for q in queries]
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(lambda q: engine.search_text(q, 4)["hits"], queries * 3))
    for got, want in zip(concurrent, sequential * 3):
        assert [h["image_index"] for h in got] == [h["image_index"] for h in want]
        assert [h["score"] for h in got] == pytest.approx([h["score"] for h in want], abs=1e-5)


class _CountingRetriever:
    """Stands in for a Retriever: records how many searches run at once."""

    def __init__(self, real) -> None:
        self.store, self.teacher, self.index = real.store, real.teacher, real.index
        self.active = self.peak = 0
        self.lock = threading.Lock()

    def search_text(self, query, k, rerank):
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        time.sleep(0.02)
        with self.lock:
            self.active -= 1
        return []


def test_engine_caps_concurrent_searches(engine):
    fake = _CountingRetriever(engine.retrievers["flat"])
    capped = SearchEngine({"flat": fake}, concurrency=2, rerank_k=10)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: capped.search_text("a query", 1), range(24)))
    assert 1 <= fake.peak <= 2


# ---------------------------------------------------------------- CLI

def test_cli_text_json_and_table(root, engine, capsys):
    q = engine.store.captions[15]                                   # image 3
    cli.main(["text", q, "--root", str(root), "-k", "3", "--json", "--no-teacher"])
    body = json.loads(capsys.readouterr().out)
    assert body["hits"][0]["image_id"] == engine.store.image_ids[3]
    assert body["hits"][0]["file"] == engine.store.image_files[3]
    cli.main(["text", q, "--root", str(root), "-k", "2", "--rerank"])
    out = capsys.readouterr().out.splitlines()
    assert "re-ranked by the teacher" in out[0]
    assert out[1].split() == ["rank", "score", "image", "id", "file"]
    assert len(out) == 4 and out[2].split()[0] == "1"


def test_cli_image(root, engine, capsys):
    path = engine.image_file(5)
    cli.main(["image", str(path), "--root", str(root), "-k", "2", "--index", "hnsw", "--no-teacher"])
    out = capsys.readouterr().out.splitlines()
    assert "index hnsw" in out[0] and out[1].split()[-1] == "caption" and len(out) == 4


@pytest.mark.parametrize("argv, message", [
    (["text", "", "-k", "1", "--no-teacher"], "q: the query is empty"),
    (["text", "a red circle", "--rerank", "--no-teacher"], "--rerank needs the teacher"),
    (["text", "a red circle", "--index", "bogus", "--no-teacher"], "--index: unknown index kind 'bogus'"),
    (["image", "/nonexistent.png"], "/nonexistent.png: image file not found"),
])
def test_cli_errors_are_one_line(root, argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv + ["--root", str(root)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_cli_missing_artifacts_name_the_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["text", "a red circle", "--root", str(tmp_path)])
    assert e.value.code == 2
    assert str(tmp_path / "features" / "test") in capsys.readouterr().err


def test_cli_not_an_image(root, tmp_path, capsys):
    bad = tmp_path / "x.png"
    bad.write_text("not a png")
    with pytest.raises(SystemExit):
        cli.main(["image", str(bad), "--root", str(root), "--no-teacher"])
    assert f"{bad}: cannot decode image" in capsys.readouterr().err
