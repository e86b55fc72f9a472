"""Features stage throughput versus the bare backbone forward pass, side by side in one run.

    python benchmarks/features_speed.py [--images 512] [--captions 2560] [--device auto]

Stage = what stages/features.py does per split: decode + resize PNGs (DataLoader workers), forward,
float16 conversion, store writes; tokenise, length-sorted batches, forward, writes in dataset order.
Bare = only the backbone forward on the same batches, already decoded / tokenised in memory.
Target: stage >= 80% of bare. Bare and stage runs alternate and each figure is the best of
--rounds runs, so a load change on a shared machine hits both sides alike.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("TQDM_DISABLE", "1")  # read when tqdm is imported; the stage's bars would drown the figures
import numpy as np
import torch


from aladin import params
from aladin.data.generate import sample_scenes
from aladin.features import load_text_backbone, load_vision_backbone
from aladin.features.extract import caption_windows, extract_captions, extract_images
from aladin.features.vision import load_pixels
from aladin.runtime import resolve_device, set_threads
from aladin.store import StoreWriter


def best_times(fns: dict[str, Callable[[], None]], rounds: int, sync: Callable[[], None]) -> dict[str, float]:
    """Best wall time of each function, running them in turn `rounds` times."""
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--captions", type=int, default=2560)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--num-workers", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = default)")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    set_threads(args.threads)
    device = resolve_device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    vision = load_vision_backbone("efficientnet-lite0", args.image_size, device,
                                  params.load("features").efficientnet_blocks)   # params.yaml's regions
    text = load_text_backbone("all-MiniLM-L6-v2", args.max_tokens, device)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images, captions = sample_scenes(max(args.images, args.captions), args.image_size)
        files = [tmp / f"{i}.png" for i in range(args.images)]
        for im, file in zip(images, files):
            im.save(file)
        bs = args.batch_size

        # Bare inputs, prepared outside the timed region.
        pixels = torch.stack([load_pixels(f, args.image_size) for f in files])
        img_batches = [((pixels[i:i + bs].to(device).float() - vision._mean) / vision._std)
                       for i in range(0, len(files), bs)]
        ids = text.tokenize(captions)
        txt_batches = []
        for w0, batches in caption_windows(ids, bs):
            for rows in batches:
                chunk = [ids[w0 + r] for r in rows]
                width = max(len(x) for x in chunk)
                input_ids = torch.tensor([x + [text.pad_id] * (width - len(x)) for x in chunk], device=device)
                mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in chunk], device=device)
                txt_batches.append((input_ids, mask))

        @torch.inference_mode()
        def bare_images() -> None:
            for x in img_batches:
                vision._regions(x)

        @torch.inference_mode()
        def bare_captions() -> None:
            for input_ids, mask in txt_batches:
                text.model(input_ids=input_ids, attention_mask=mask)

        def stage_images() -> None:
            with StoreWriter(tmp / "store_i", len(files), vision.n_regions, vision.dim, 1, 1, 1) as w:
                extract_images(vision, files, w, bs, args.num_workers)
                w.finish([str(i) for i in range(len(files))], [str(f) for f in files], ["x"], np.zeros(1), {})

        def stage_captions() -> None:
            tok = text.tokenize(captions)          # the stage tokenises once per split: counted
            width = max(len(x) for x in tok)
            with StoreWriter(tmp / "store_c", 1, 1, 1, len(captions), width, text.dim) as w:
                extract_captions(text, tok, w, bs)
                w.finish(["0"], ["x"], captions, np.zeros(len(captions)), {})

        bare_images(), bare_captions()             # warm-up (allocator, kernels, caches)
        sync()
        t = best_times({"bare_images": bare_images, "stage_images": stage_images,
                        "bare_captions": bare_captions, "stage_captions": stage_captions}, args.rounds, sync)
        results = {"images": (t["bare_images"], t["stage_images"], len(files)),
                   "captions": (t["bare_captions"], t["stage_captions"], len(captions))}

    print(f"device: {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}), "
          f"torch threads {torch.get_num_threads()}, batch {bs}, image_size {args.image_size}, "
          f"num_workers {args.num_workers}")
    print(f"{'':10s} {'bare /s':>10s} {'stage /s':>10s} {'stage/bare':>10s}")
    for name, (bare, stage, n) in results.items():
        print(f"{name:10s} {n / bare:10.1f} {n / stage:10.1f} {bare / stage:10.1%}")


if __name__ == "__main__":
    main()
