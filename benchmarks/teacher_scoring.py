"""Exhaustive teacher scoring speed: pairs per second, and the achieved FLOP rate against a plain
torch.matmul doing the same number of FLOPs, measured side by side in one run (target >= 0.5;
the ratio is taken against the faster of two matmul shapes).

    python benchmarks/teacher_scoring.py                      # 5,000 images x 5,000 captions
    python benchmarks/teacher_scoring.py --captions 25000     # the whole 5K protocol

Embeddings are random unit vectors with the default pipeline's shapes (16 regions, 10-18 words,
d = teacher.model.d); scoring cost does not depend on their values. Captions are grouped by
length as score_store does. Each figure is the best of --repeats runs (the machine is shared).
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F


from aladin.models.scoring import score_embeddings
from aladin.runtime import set_threads


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--captions", type=int, default=5000)
    ap.add_argument("--regions", type=int, default=16)
    ap.add_argument("--min-words", type=int, default=10)
    ap.add_argument("--max-words", type=int, default=18)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--chunk-mb", type=float, nargs="+", default=[2.0, 256.0],
                    help="similarity block sizes to compare (the first is the default)")
    ap.add_argument("--group", type=int, default=256, help="captions per length group (score_store's batch)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    set_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(a.images, a.regions, a.d, generator=g), dim=-1)
    img_mask = torch.ones(a.images, a.regions, dtype=torch.bool)
    counts = torch.randint(a.min_words, a.max_words + 1, (a.captions,), generator=g).sort().values
    groups, flops = [], 0
    for s in range(0, a.captions, a.group):
        c = counts[s:s + a.group]
        length = int(c.max())
        cap = F.normalize(torch.randn(len(c), length, a.d, generator=g), dim=-1)
        groups.append((cap, torch.arange(length)[None] < c[:, None]))
        flops += 2 * a.images * a.regions * len(c) * length * a.d          # computed, padding included
    pairs = a.images * a.captions

    # Plain matmul references doing the same number of FLOPs: the naive scorer's product shape
    # (inner dimension d, big output) and a square 1024^3 product (the machine's matmul rate).
    refs = {"matmul (4096 x d) @ (d x 4096)": (4096, a.d, 4096), "matmul 1024 x 1024 x 1024": (1024, 1024, 1024)}

    print(f"{a.images} images x {a.captions} captions = {pairs / 1e6:.1f}M pairs, R={a.regions}, "
          f"words {a.min_words}-{a.max_words}, d={a.d}, {flops / 1e12:.2f} TFLOP, {torch.get_num_threads()} threads")
    with torch.no_grad():
        rates = {}
        for name, (m, k, n) in refs.items():
            x, y = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
            out = torch.empty(m, n)
            reps = max(1, round(flops / (2 * m * k * n)))

            def matmul() -> None:
                for _ in range(reps):
                    torch.matmul(x, y, out=out)

            matmul()                                                        # warm-up
            rates[name] = reps * 2 * m * k * n / best_time(matmul, a.repeats)
            print(f"{name:34s} {rates[name] / 1e9:7.1f} GFLOP/s")
        ref_rate = max(rates.values())                                  # the faster reference
        for mb in a.chunk_mb:
            t = best_time(lambda: score_embeddings(img, img_mask, groups, "mrsw", 0.0, mb, progress=False,
                                                   words="all"),
                          a.repeats)
            rate = flops / t
            full = 5000 * 25000 / (pairs / t)
            print(f"scoring, {mb:6g} MB blocks{'':15s} {rate / 1e9:7.1f} GFLOP/s  ratio {rate / ref_rate:.2f}  "
                  f"{pairs / t / 1e6:6.2f}M pairs/s  ({t:.1f} s; 5K protocol 125M pairs: {full:.0f} s)")


if __name__ == "__main__":
    main()
