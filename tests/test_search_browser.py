"""End to end: `aladin-search serve` in its own process, driven by headless Chromium.

A person's path through the page: type a test caption, press search, see result thumbnails
(decoded images, served by the app) with scores and captions; the top result must be the
test image the caption describes (the tiny pipeline's student gets all of them right, and
the in-process Retriever is checked to agree). Then a bad query shows its error, and an image
upload lists captions. Chromium is Debian's (installed with apt-get when missing); selenium
drives it through the system chromedriver, so nothing is downloaded by a browser installer.
"""
from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from _tiny_pipeline import shared_tiny_pipeline

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
HOST = "127.0.0.1"


def ensure_chromium() -> None:
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("chromium is missing and cannot be installed here (needs apt-get as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    steps = [["apt-get", "update"], ["apt-get", "install", "-y", "chromium", "chromium-driver"]]
    for cmd in steps:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(root: Path, *args: str, timeout: float = 180) -> Iterator[str]:
    """`aladin-search serve --root root *args` in its own process on a free loopback port, until
    /health answers; yields the base URL, stops the process after."""
    port = free_port()
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen([sys.executable, "-m", "aladin.search.cli", "serve", "--root", str(root),
                             "--host", HOST, "--port", str(port), *args], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None or time.time() > deadline:
                log.seek(0)
                pytest.fail(f"search service did not start:\n{log.read()[-3000:]}")
            try:
                conn = http.client.HTTPConnection(HOST, port, timeout=2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.3)
        yield f"http://{HOST}:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server():
    """The documented command, on loopback; yields (base url, pipeline root)."""
    root = shared_tiny_pipeline()
    with serving(root, "--index", "flat", "--index", "hnsw", "--concurrency", "2") as url:
        yield url, root


@pytest.fixture(scope="module")
def browser():
    ensure_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"):
        opts.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="aladin-chromium-")
    opts.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(options=opts, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver, condition, timeout: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition(d))


def loaded_images(driver) -> list[dict]:
    """Result cards whose thumbnails have finished loading, with what they show."""
    return driver.execute_script("""
        return [...document.querySelectorAll('#results .hit')].map(h => {
            const img = h.querySelector('img');
            return {complete: img.complete, width: img.naturalWidth, src: img.getAttribute('src'),
                    id: h.querySelector('.id').textContent, score: h.querySelector('.score').textContent,
                    captions: [...h.querySelectorAll('li')].map(li => li.textContent)};
        });""")


def test_page_search_shows_the_right_image(server, browser):
    from selenium.webdriver.common.by import By

    from aladin.search.cli import load_engine

    url, root = server
    engine = load_engine(root, teacher=False)
    i = 5
    caption, image_id = engine.store.captions[5 * i], engine.store.image_ids[i]
    expected = engine.search_text(caption, 4)["hits"]
    assert expected[0]["image_id"] == image_id            # the in-process answer is the correct image

    browser.get(url + "/")
    wait_for(browser, lambda d: "images" in d.find_element(By.ID, "status").text)
    assert "8 images, 40 captions" in browser.find_element(By.ID, "status").text
    k = browser.find_element(By.ID, "k")
    k.clear()
    k.send_keys("4")
    browser.find_element(By.ID, "query").send_keys(caption)
    browser.find_element(By.ID, "search").click()

    cards = wait_for(browser, lambda d: (c := loaded_images(d)) and all(x["complete"] for x in c) and c)
    assert len(cards) == 4
    assert all(c["width"] > 0 for c in cards)              # thumbnails decoded, served by the app
    assert [c["id"] for c in cards] == [h["image_id"] for h in expected]
    assert cards[0]["id"] == image_id and cards[0]["src"] == f"/images/{i}"
    assert cards[0]["captions"] == engine.store.captions[5 * i:5 * i + 5]
    assert cards[0]["score"].startswith("#1 score ")

    # A bad query: the error is shown, and the page keeps working.
    query = browser.find_element(By.ID, "query")
    query.clear()
    browser.find_element(By.ID, "search").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "error").text)
    assert "q: the query is empty" in browser.find_element(By.ID, "error").text

    # Image -> captions through the upload form.
    browser.find_element(By.ID, "file").send_keys(str(engine.image_file(i)))
    browser.find_element(By.ID, "search-image").click()
    wait_for(browser, lambda d: (c := loaded_images(d)) and c[0]["captions"] != cards[0]["captions"])
    got = loaded_images(browser)
    want = engine.search_image(engine.decode_image(engine.image_file(i).read_bytes()), 4)["hits"]
    assert [c["captions"] for c in got] == [[h["caption"]] for h in want]
    assert browser.find_element(By.ID, "error").text == ""
