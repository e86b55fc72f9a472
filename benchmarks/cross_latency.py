"""Per-query text->image latency: the cross-encoder baseline vs the distilled student, 1K and 5K.

The paper's headline is this ratio (VinVL ~10.3 s vs ALADIN ~0.115 s per query on COCO 5K,
about 90x). Both systems start from the query caption's stored token features (the text
backbone costs the same ~10 ms for both and is left out) and return the top-10 images:

- cross-encoder: one fusion pass (`cross.model.fusion`) per (query, image) pair, image tokens projected
  beforehand (aladin.latency.cross.text_search_fn), then top-10 of the N logits;
- student: embed the caption, exact dot-product top-10 over N precomputed image embeddings
  (faiss IndexFlatIP).

The text backbone's forward on the raw caption is timed on its own and added to both for the
system ratio (`ratio_p50_system`). Timed with aladin.latency.timing (wall clock per query after warm-up,
fixed threads). The cross-encoder at 5K is timed on a few queries only (5,000 passes each).
Prints JSON.

    python benchmarks/cross_latency.py [--features features] [--threads 2]
"""
from __future__ import annotations

import argparse
import json


import faiss
import numpy as np
import torch

from aladin.latency.cross import text_search_fn
from aladin.models.factory import STUDENTS, load_cross
from aladin.retrieval.encode import encode_images, encode_texts
from aladin.errors import DataError
from aladin.features import load_text_backbone, text_batch
from aladin.runtime import set_threads
from aladin.latency.timing import per_query
from aladin.models.factory import load_model
from aladin.store import open_split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", default="features")
    ap.add_argument("--split", default="test")
    ap.add_argument("--cross", default="models/cross.pt")
    ap.add_argument("--student", default="models/student.pt")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cross-queries", type=int, nargs=2, default=[20, 5], metavar=("N_1K", "N_5K"),
                    help="timed cross-encoder queries at 1K and at 5K")
    ap.add_argument("--student-queries", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=2048, help="cross-encoder pairs per pass")
    ap.add_argument("--text-backbone", default="all-MiniLM-L6-v2", help="'none' to leave it out")
    args = ap.parse_args()

    set_threads(args.threads)
    torch.manual_seed(0)
    store = open_split(args.features, args.split)
    cross = load_cross(args.cross)
    if cross is None:
        raise DataError(f"{args.cross}: the cross stage was skipped (cross.enabled false)")
    student = load_model(args.student, kind=STUDENTS)
    rng = np.random.default_rng(0)
    out: dict[str, object] = {"threads": args.threads, "device": "cpu", "split": args.split}
    backbone_ms = 0.0
    if args.text_backbone != "none":
        backbone = load_text_backbone(args.text_backbone, store.manifest["max_tokens"], "cpu")
        texts = [store.captions[int(j)] for j in rng.choice(store.n_captions, 100, replace=False)]
        out["text_backbone"] = per_query(lambda t: text_batch(backbone, [t]), texts, warmup=5)
        backbone_ms = out["text_backbone"]["p50_ms"]
    for n, n_cross in zip((1000, 5000), args.cross_queries):
        if n > store.n_images:
            out[f"{n // 1000}k"] = f"skipped: {store.path} has only {store.n_images} images"
            continue
        captions = np.flatnonzero(store.caption_image < n)
        queries = rng.choice(captions, max(args.student_queries, n_cross + 1), replace=False)

        search = text_search_fn(cross, store, n, "cpu", args.batch_size)
        cross_ms = per_query(lambda q: np.argpartition(-search(int(q)), 10)[:10], queries[:n_cross], warmup=1)

        index = faiss.IndexFlatIP(student.dim)
        index.add(encode_images(student, store, np.arange(n)))

        def student_search(q: int) -> np.ndarray:
            return index.search(encode_texts(student, store.caption_batch([q]), device="cpu"), 10)[1]
        student_ms = per_query(student_search, queries[:args.student_queries], warmup=5)
        c, st = cross_ms["p50_ms"], student_ms["p50_ms"]
        out[f"{n // 1000}k"] = {"n_images": n, "cross": cross_ms, "student": student_ms, "ratio_p50": c / st,
                                "ratio_p50_system": (c + backbone_ms) / (st + backbone_ms)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
