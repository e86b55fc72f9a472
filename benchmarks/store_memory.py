"""Peak memory of streaming training batches from a COCO-sized feature store.

Builds a synthetic store with COCO's shape (5 captions per image, 36 regions x 2048 like the
bottom-up features, tokens as the text backbone writes them), scaled down by default to spare the
disk, then draws shuffled 32-pair batches through ``FeatureStore.pair_batch`` exactly as the
training loop does, and prints:

- anonymous RSS (what the process allocates: batches, metadata, torch): peak over the run;
- VmHWM, the kernel's peak RSS, which also counts the store's file pages mapped while read
  (page cache the kernel reclaims under pressure, not memory the process holds);
- the store's size on disk and the float32-in-RAM size it avoids, both extrapolated to COCO.

Usage: python benchmarks/store_memory.py [--images 4000] [--batches 0 (= one epoch)] [--keep]
Full COCO (113,287 train images, ~17 GB regions + tokens) needs the disk: --images 113287.
"""
from __future__ import annotations

import argparse
import multiprocessing
import shutil
import time
from pathlib import Path

import numpy as np

from aladin.store import StoreWriter, open_split
from aladin.runtime import set_threads

COCO_TRAIN = 113_287   # Karpathy train + restval


def proc_status() -> dict[str, int]:
    """VmHWM / VmRSS / RssAnon / RssFile of this process, in MiB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) // 1024
    return out


def build(path: Path, n_images: int, regions: int, d_img: int, cpi: int, tokens: int, d_txt: int,
          chunk: int = 512) -> None:
    rng = np.random.default_rng(0)
    n_caps = n_images * cpi
    block_img = rng.standard_normal((chunk, regions, d_img), dtype=np.float32).astype(np.float16)
    block_txt = rng.standard_normal((chunk * cpi, tokens, d_txt), dtype=np.float32).astype(np.float16)
    boxes = rng.random((chunk, regions, 6), dtype=np.float32)
    with StoreWriter(path, n_images, regions, d_img, n_caps, tokens, d_txt) as w:
        for s in range(0, n_images, chunk):
            n = min(chunk, n_images - s)
            w.write_images(s, block_img[:n], boxes[:n], np.full(n, regions, np.int32))
            w.write_captions(s * cpi, block_txt[:n * cpi], rng.integers(8, tokens + 1, n * cpi, dtype=np.int32))
        w.finish([str(i) for i in range(n_images)], [f"img/{i}.jpg" for i in range(n_images)],
                 [f"a synthetic caption number {j} of a synthetic image" for j in range(n_caps)],
                 np.repeat(np.arange(n_images), cpi), {"synthetic": True})


def stream(features_dir: Path, batch_size: int, batches: int) -> dict[str, float]:
    """Run in a fresh process, so that the build's written pages do not count."""
    set_threads(1)
    base = proc_status()["RssAnon"]
    store = open_split(features_dir, "train")
    opened = proc_status()["RssAnon"]                          # + per-item metadata (ids, captions)
    order = np.random.default_rng(0).permutation(store.n_captions)
    n_batches = batches or len(order) // batch_size
    peak, t0 = opened, time.perf_counter()
    for b in range(n_batches):
        batch = store.pair_batch(order[b * batch_size:(b + 1) * batch_size])
        _ = batch.regions.sum() + batch.tokens.sum()           # touch the data, as a forward pass would
        if b % 16 == 0:
            peak = max(peak, proc_status()["RssAnon"])
    elapsed = time.perf_counter() - t0
    end = proc_status()
    return {"base": base, "metadata": opened - base, "batches": max(peak, end["RssAnon"]) - opened,
            "hwm": end["VmHWM"], "file": end["RssFile"], "n_batches": n_batches, "seconds": elapsed}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=4000)
    p.add_argument("--regions", type=int, default=36)
    p.add_argument("--d-img", type=int, default=2048)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--d-txt", type=int, default=384, help="all-MiniLM-L6-v2 width (768 for BERT-base)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=0, help="0 = one epoch over the captions")
    p.add_argument("--dir", type=Path, default=Path("tmp/store_memory"))
    p.add_argument("--keep", action="store_true")
    a = p.parse_args()
    cpi = 5
    t0 = time.perf_counter()
    build(a.dir / "train", a.images, a.regions, a.d_img, cpi, a.tokens, a.d_txt)
    disk = sum(f.stat().st_size for f in (a.dir / "train").iterdir()) / 2**30
    print(f"built {a.images} images / {a.images * cpi} captions: {disk:.2f} GiB on disk "
          f"in {time.perf_counter() - t0:.0f} s")
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        r = pool.apply(stream, (a.dir, a.batch_size, a.batches))
    if not a.keep:
        shutil.rmtree(a.dir, ignore_errors=True)

    scale = COCO_TRAIN / a.images
    fp32 = COCO_TRAIN * (a.regions * a.d_img + cpi * a.tokens * a.d_txt) * 4 / 2**30
    print(f"streamed {r['n_batches']} batches of {a.batch_size} pairs in {r['seconds']:.1f} s "
          f"({r['n_batches'] / r['seconds']:.0f} batches/s)")
    print(f"anonymous RSS: {r['base']} MiB (python + torch) + {r['metadata']} MiB store metadata "
          f"+ {r['batches']} MiB while streaming = peak {r['base'] + r['metadata'] + r['batches']} MiB")
    print(f"VmHWM {r['hwm']} MiB: peak RSS counting the store's file pages mapped while read "
          f"({r['file']} MiB file-backed at the end: page cache, reclaimable)")
    print(f"COCO train ({COCO_TRAIN} images, x{scale:.1f}): {disk * scale:.1f} GiB float16 on disk vs "
          f"{fp32:.1f} GiB float32 in RAM; anonymous RSS ~ {r['base']} + {r['metadata'] * scale:.0f} "
          f"(metadata, linear) + {r['batches']} (batches, constant) = "
          f"{r['base'] + r['metadata'] * scale + r['batches']:.0f} MiB")


if __name__ == "__main__":
    main()
