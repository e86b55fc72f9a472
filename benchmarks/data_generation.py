"""Time the scenes generator at the default size (11,000 images at 128 px) and print the figures.

Usage: python benchmarks/data_generation.py [--workers N] [--n-train 5000]
Prints seconds and images/s for sampling + captioning + rendering + PNG writing (generate()),
and separately for caption verification and the two baselines on the test split.
"""
import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import dataclasses

from aladin import params
from aladin.data.generate import generate
from aladin.evaluation.dataset import dataset_metrics


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--n-train", type=int, default=5000)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = dataclasses.replace(params.load("data"), source="scenes", n_train=args.n_train, workers=args.workers)
    n = cfg.n_train + cfg.n_val + cfg.n_test
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        images, records = generate(Path(tmp), cfg)
        t1 = time.perf_counter()
        dataset_metrics(images, records, cfg.captions_per_image)
        t2 = time.perf_counter()
    print(f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f} workers={cfg.workers or len(os.sched_getaffinity(0))}")
    print(f"generate: {n} images at {cfg.image_size} px in {t1 - t0:.1f} s ({n / (t1 - t0):.0f} images/s)")
    print(f"verify captions + baselines on {cfg.n_test} test images: {t2 - t1:.1f} s")


if __name__ == "__main__":
    main()
