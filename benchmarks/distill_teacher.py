"""Teacher scores during distillation: cached token embeddings versus a teacher forward per batch.

    python benchmarks/distill_teacher.py [--steps 10] [--rounds 2] [--threads 2]

Uses features/train and models/teacher.pt when present, else a synthetic split of the default
shapes (1,000 images x 16 regions x 424-d, 5 captions each x 15 tokens x 384-d) and an untrained
teacher of the default AlignmentModel config (timings do not depend on the weights). Prints, per
strategy: setup (the cache build, scaled to the whole split), seconds per student training step
with its teacher scores, and the projected cost of `distill.optim.epochs` epochs on that split. Each figure is
the best of --rounds runs, alternating the two, so a load change on a shared machine hits both.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("TQDM_DISABLE", "1")

from aladin.config import section
from aladin.training.distillation import CachedTeacher, LossConfig, OnlineTeacher, StudentLoss
from aladin.models.factory import build_model, load_model
from aladin.runtime import set_threads
from aladin.store import FeatureStore, StoreWriter, open_split


D_IMG, D_TXT = 424, 384      # the default store: EfficientNet hypercolumns, MiniLM tokens


def synthetic_store(path: Path, n: int = 1000, regions: int = 16, tokens: int = 15) -> FeatureStore:
    rng = np.random.default_rng(0)
    with StoreWriter(path, n, regions, D_IMG, 5 * n, 32, D_TXT) as w:
        w.write_images(0, rng.normal(size=(n, regions, D_IMG)).astype(np.float16),
                       rng.random((n, regions, 6)).astype(np.float32), np.full(n, regions))
        w.write_captions(0, rng.normal(size=(5 * n, tokens, D_TXT)).astype(np.float16),
                         rng.integers(tokens - 5, tokens + 1, 5 * n))
        w.finish([str(i) for i in range(n)], [""] * n, [""] * 5 * n, np.repeat(np.arange(n), 5), {})
    return open_split(path.parent, path.name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    set_threads(args.threads)
    distill = section("distill")
    optim = distill.get("optim", {})
    batch_size, epochs = optim.get("batch_size", 128), optim.get("epochs", 1)

    tmp = tempfile.TemporaryDirectory()
    if Path("features/train").is_dir() and Path("models/teacher.pt").is_file():
        store, teacher, source = open_split("features", "train"), load_model("models/teacher.pt"), "features/train"
    else:
        store = synthetic_store(Path(tmp.name) / "train")
        teacher = build_model("alignment", {}, D_IMG, D_TXT).eval()
        source = "synthetic (features/train or models/teacher.pt missing)"
    torch.manual_seed(0)
    student = build_model("matching", distill.get("model", {}), store.manifest["d_img"], store.manifest["d_txt"])
    opt = torch.optim.Adam(student.parameters(), lr=1e-5)
    order = np.random.default_rng(0).permutation(store.n_captions)
    batches = [order[i * batch_size:(i + 1) * batch_size] for i in range(args.steps + 1)]

    t0 = time.perf_counter()
    cached = CachedTeacher(teacher, store)
    setup = {"cached": time.perf_counter() - t0, "online": 0.0}
    scorers = {"cached": cached, "online": OnlineTeacher(teacher)}
    step = {k: float("inf") for k in scorers}
    for _ in range(args.rounds):
        for name, scorer in scorers.items():
            loss_fn = StudentLoss(LossConfig(), scorer)
            loss_fn(student, store.pair_batch(batches[0]))           # warm-up
            t0 = time.perf_counter()
            for idx in batches[1:]:
                loss, _ = loss_fn(student, store.pair_batch(idx))
                opt.zero_grad()
                loss.backward()
                opt.step()
            step[name] = min(step[name], (time.perf_counter() - t0) / args.steps)

    steps_per_epoch = store.n_captions // batch_size
    print(f"source: {source}; {store.n_images} images, {store.n_captions} captions; "
          f"batch {batch_size}, {steps_per_epoch} steps/epoch, {epochs} epoch(s), {args.threads} threads")
    for name in scorers:
        total = setup[name] + step[name] * steps_per_epoch * epochs
        print(f"{name:>6}: setup {setup[name]:6.1f} s   {step[name] * 1000:6.0f} ms/step   "
              f"projected {total:6.1f} s for {epochs} epoch(s)")


if __name__ == "__main__":
    main()
