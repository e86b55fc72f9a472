"""Indexing the user's own images (aladin-search index) and searching them (issue 26).

A folder of ~200 rendered scenes (64 px PNG / JPEG in subfolders) plus bad files is indexed with
the tiny pipeline's student (tests/_tiny_pipeline.py): both engines give the same ids and
embeddings; re-indexing embeds only what changed; a SIGKILLed run resumes to the same collection;
the thumbnail route never leaves the collection's root; the page searches it in a browser.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from _tiny_pipeline import shared_tiny_pipeline
from test_search_browser import browser, loaded_images, serving, wait_for  # noqa: F401 (browser: a fixture)
from aladin.collection import shards
from aladin.collection.build import parse_bytes, plan_index
from aladin.collection.encoder import model_spec
from aladin.collection.indexer import IndexOptions, index_collection
from aladin.data.generate import sample_scenes
from aladin.data.parser import parse, unknown_words
from aladin.search.cli import load_collection_engine
from aladin.search.engine import EXAMPLES
from aladin.search.service import create_app

ROOT = Path(__file__).resolve().parents[1]
N_IMAGES = 200
OPTS = dict(batch_size=8, shard_size=32, progress=False)
BAD = {"notes.jpg": "not an image", "cut.png": "truncated or corrupt", "empty.png": "empty file",
       "loop.jpg": "symlink loop", "escape.png": "symlink leaving the root"}


def write_images(folder: Path, start: int, n: int) -> None:
    images, _ = sample_scenes(start + n, 64, seed=1)
    for i in range(start, start + n):
        sub = folder / f"set{i % 4}"
        sub.mkdir(parents=True, exist_ok=True)
        images[i].save(sub / f"scene{i:04d}.{'png' if i % 2 else 'jpg'}")


@pytest.fixture(scope="module")
def pipeline() -> Path:
    return shared_tiny_pipeline()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """200 images + one bad file of each kind (and a symlink to a file outside the folder)."""
    base = tmp_path_factory.mktemp("photos")
    folder = base / "photos"
    write_images(folder, 0, N_IMAGES)
    (folder / "notes.jpg").write_text("not a picture")
    png = (folder / "set1" / "scene0001.png").read_bytes()
    (folder / "cut.png").write_bytes(png[:len(png) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    shutil.copy(folder / "set1" / "scene0001.png", base / "outside.png")
    (folder / "escape.png").symlink_to(base / "outside.png")
    return folder


def run_index(pipeline: Path, source: Path, name: str, **opts):
    spec = model_spec(pipeline, rerank=True)
    return index_collection(source, pipeline / "collections" / name, spec, IndexOptions(**{**OPTS, **opts}))


def contents(pipeline: Path, name: str) -> tuple[list[tuple], np.ndarray]:
    """A collection's committed files (path, id, sha256) and their embeddings, in path order."""
    folder = pipeline / "collections" / name
    m = shards.read_manifest(folder)
    emb = np.stack([shards.shard_array(folder, e["shard"])[e["row"]] for e in m["files"]])
    return [(e["path"], e["id"], e["sha256"], e["size"]) for e in m["files"]], emb


@pytest.fixture(scope="module")
def local(pipeline, photos):
    return run_index(pipeline, photos, "local")


def test_local_engine_indexes_the_folder_and_reports_bad_files(local, pipeline):
    assert local.files == N_IMAGES and local.embedded == N_IMAGES
    reasons = {s.path: s.reason for s in local.skipped}
    assert set(reasons) == set(BAD)
    for path, why in BAD.items():
        assert reasons[path].startswith(why), (path, reasons[path])
    m = shards.read_manifest(pipeline / "collections" / "local")
    assert m["index"]["kind"] == "flat" and len(m["shards"]) == -(-(N_IMAGES + 2) // 32)   # + the 2 bad files read
    leftovers = [f.name for f in (pipeline / "collections" / "local" / "shards").iterdir()
                 if f.stem.split(".")[0] not in m["shards"]]
    assert leftovers == []


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed (pip install '.[ray]')")
def test_ray_engine_gives_the_same_collection(local, pipeline, photos):
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        report = run_index(pipeline, photos, "ray", engine="ray")
    finally:
        ray.shutdown()
    assert {s.path: s.reason for s in report.skipped} == {s.path: s.reason for s in local.skipped}
    files_l, emb_l = contents(pipeline, "local")
    files_r, emb_r = contents(pipeline, "ray")
    assert files_r == files_l
    np.testing.assert_allclose(emb_r, emb_l, atol=1e-5)


def test_reindex_embeds_only_new_files_and_drops_removed_ones(pipeline, photos, tmp_path):
    src = tmp_path / "photos"
    shutil.copytree(photos, src, symlinks=True)
    run_index(pipeline, src, "incremental")
    write_images(src, N_IMAGES, 20)
    removed = sorted(src.glob("set2/*"))[:10]
    for f in removed:
        f.unlink()
    report = run_index(pipeline, src, "incremental")
    assert (report.embedded, report.removed, report.kept) == (20, 10, N_IMAGES - 10)
    assert report.files == N_IMAGES + 10
    engine = load_collection_engine(pipeline, "incremental", teacher=False)
    gone = {f.relative_to(src).as_posix() for f in removed}
    hits = engine.search_text("a red circle", 100)["hits"]
    assert not gone & {h["file"] for h in hits}
    new = sorted(src.glob(f"set*/scene{N_IMAGES:04d}.*"))[0]
    top = engine.search_image(Image.open(new), 1)["hits"][0]
    assert top["file"] == new.relative_to(src).as_posix() and top["score"] == pytest.approx(1.0, abs=1e-4)


def test_a_killed_run_resumes_to_the_same_collection(local, pipeline, photos):
    folder = pipeline / "collections" / "killed"
    cmd = [sys.executable, "-m", "aladin.search.cli", "index", str(photos), "--collection", "killed",
           "--root", str(pipeline), "--rerank", "--batch-size", "8", "--shard-size", "32", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((folder / "shards").glob("*.json")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (folder / "manifest.json").exists(), "the indexer finished before it could be killed"
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert " resumed" in done.stdout and " 0 resumed" not in done.stdout
    files_k, emb_k = contents(pipeline, "killed")
    files_l, emb_l = contents(pipeline, "local")
    assert files_k == files_l
    np.testing.assert_allclose(emb_k, emb_l, atol=1e-5)      # another process: other torch thread count
    m_k = shards.read_manifest(folder)
    m_l = shards.read_manifest(pipeline / "collections" / "local")
    assert m_k["shards"] == m_l["shards"] and m_k["index"]["file"] == m_l["index"]["file"]


@pytest.fixture(scope="module")
def client(local, pipeline):
    return TestClient(create_app(load_collection_engine(pipeline, "local")))


def test_search_the_collection_text_image_and_rerank(client, photos):
    body = client.get("/api/search/text", params={"q": "a small red square", "k": 5}).json()
    assert body["collection"] == "local" and len(body["hits"]) == 5
    assert all(h["image_url"] == f"/files/{h['file']}" for h in body["hits"])
    reranked = client.get("/api/search/text", params={"q": "a small red square", "k": 5, "rerank": "true"}).json()
    assert reranked["rerank"] is True and len(reranked["hits"]) == 5
    query = photos / "set3" / "scene0003.png"
    r = client.post("/api/search/image", params={"k": 3}, files={"file": ("q.png", query.read_bytes(), "image/png")})
    assert r.status_code == 200 and r.json()["hits"][0]["file"] == "set3/scene0003.png"
    health = client.get("/health").json()
    assert health["collection"] == "local" and health["n_images"] == N_IMAGES


def test_thumbnails_never_leave_the_root(client, pipeline, photos, tmp_path):
    ok = client.get("/files/set0/scene0000.jpg")
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/jpeg"
    assert Image.open(__import__("io").BytesIO(ok.content)).size == (64, 64)
    for bad in ("%2E%2E/outside.png", "set0/%2E%2E/%2E%2E/outside.png", "%2Fetc%2Fpasswd", "/etc/passwd"):
        r = client.get(f"/files/{bad}")
        assert r.status_code == 400, (bad, r.status_code)
    assert client.get("/files/escape.png").status_code == 404       # skipped at indexing: not in the collection
    assert client.get("/files/set0/nope.jpg").status_code == 404
    # A collection file replaced by a symlink leading out of the root after indexing.
    victim = photos / "set0" / "scene0004.jpg"
    saved = tmp_path / "saved.jpg"
    shutil.move(victim, saved)
    victim.symlink_to(photos.parent / "outside.png")
    try:
        r = client.get("/files/set0/scene0004.jpg")
        assert r.status_code == 403 and "outside" in r.json()["detail"]
    finally:
        victim.unlink()
        shutil.move(saved, victim)


def test_api_docs_page_is_off_and_the_schema_is_served(client):
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
    assert client.get("/openapi.json").json()["info"]["title"] == "ALADIN search"


def test_examples_and_unknown_words():
    for q in EXAMPLES:
        assert parse(q), q
    assert unknown_words("a red cube to the left of a blue ball") == ["cube"]
    assert unknown_words(EXAMPLES[0]) == []


def test_index_choice_under_a_memory_budget():
    assert plan_index(50_000, 128, 2**30, 100_000).kind == "flat"
    big = plan_index(1_000_000, 128, parse_bytes("1G"), 100_000)
    assert big.kind == "ivf_sq8" and big.memory_bytes <= 2**30
    smaller = plan_index(1_000_000, 128, parse_bytes("100M"), 100_000)
    assert smaller.kind == "ivf_pq" and smaller.pq_m == 64 and smaller.memory_bytes <= 100 * 2**20
    tight = plan_index(1_000_000, 128, parse_bytes("40M"), 100_000)
    assert tight.kind == "ivf_pq" and tight.pq_m < 64 and tight.memory_bytes <= 40 * 2**20
    assert plan_index(50_000, 128, parse_bytes("10M"), 100_000).kind == "ivf_sq8"   # flat does not fit
    with pytest.raises(Exception, match="--max-index-memory"):
        plan_index(1_000_000, 128, parse_bytes("1M"), 100_000)


def test_page_searches_the_collection_and_shows_thumbnails(local, pipeline, browser):
    from selenium.webdriver.common.by import By

    with serving(pipeline, "--collection", "local", "--concurrency", "1", timeout=120) as url:
        driver = browser
        driver.get(f"{url}/")
        wait_for(driver, lambda d: "collection" in d.find_element(By.ID, "status").text)
        assert f"{N_IMAGES} images in collection local" in driver.find_element(By.ID, "status").text
        assert driver.find_element(By.ID, "search-image").text == "Search similar images"
        driver.find_element(By.ID, "query").send_keys("a small red square")
        driver.find_element(By.ID, "search").click()
        cards = wait_for(driver, lambda d: (c := loaded_images(d)) and all(x["complete"] for x in c) and c)
        assert len(cards) == 10 and all(c["width"] > 0 for c in cards)     # thumbnails decoded
        assert all(c["src"].startswith("/files/set") for c in cards)
