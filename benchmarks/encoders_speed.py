"""The backbones on each runtime (features.runtime: torch | onnx), side by side in one run.

    python benchmarks/encoders_speed.py [--queries 100] [--images 256] [--captions 1024] [--int8]

Per query (1 thread, the service's setting): one raw caption through ``text_batch`` (tokenise,
forward, float16 rounding) and one PIL image through ``image_batch`` (resize, normalise, forward),
as the search engine encodes a query; p50 / p95 ms after a warm-up. Throughput (--threads, default
all cores, the features stage's setting): the bare forward over pre-tokenised, length-sorted
caption batches and pre-decoded image batches. Runtimes alternate over --rounds and each figure
is the best round, so a load change on a shared machine hits all alike. max |diff| compares each
runtime's float32 outputs with eager PyTorch's on the throughput set (text: real tokens only).

--int8 adds ONNX Runtime's dynamic int8 quantisation of the exported text graph (weights int8,
activations quantised per call): measured here only, not a features.runtime value, since its
recall cost has not been measured. Images are left out: EfficientNet is depthwise convolutions,
which dynamic quantisation turns into ConvInteger, measured 3x slower than float ONNX here.
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from aladin.features import image_batch, load_text_backbone, load_vision_backbone, text_batch
from aladin.features.extract import caption_windows
from aladin.features.onnx_runtime import OnnxFunction
from aladin.data.generate import sample_scenes
from aladin.features.text import TextBackbone
from aladin.features.vision import VisionBackbone, to_pixels
from aladin.latency.timing import summarize_ms, time_calls
from aladin.runtime import set_threads


def int8(backbone: TextBackbone, folder: Path) -> None:
    """Swap `backbone`'s ONNX session for a dynamically int8-quantised copy of its graph."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    f = backbone.forward
    out = folder / "text.int8.onnx"
    if not out.exists():
        logging.disable(logging.WARNING)            # the quantiser's advice on pre-processing, per tensor
        try:
            quantize_dynamic(f.path, out, weight_type=QuantType.QInt8)
        finally:
            logging.disable(logging.NOTSET)
    backbone.forward = OnnxFunction(out, f.input_names, f.threads)


def load(runtime: str, threads: int, args: argparse.Namespace, tmp: Path) -> tuple[TextBackbone, VisionBackbone | None]:
    """The backbones on `runtime`; onnx-int8 has no vision backbone (see the module docstring)."""
    base = "torch" if runtime == "torch" else "onnx"
    text = load_text_backbone("all-MiniLM-L6-v2", args.max_tokens, "cpu", base, threads)
    if runtime == "onnx-int8":
        int8(text, tmp)
        return text, None
    return text, load_vision_backbone("efficientnet-lite0", args.image_size, "cpu", args.blocks, base, threads)


def best_of(rounds: int, runtimes: Sequence[str], measure: Callable[[str], Any], better: Callable) -> dict[str, Any]:
    """`measure(runtime)` for each runtime, interleaved over `rounds`; the best round of each."""
    best: dict[str, Any] = {}
    for _ in range(rounds):
        for r in runtimes:
            m = measure(r)
            best[r] = m if r not in best else better(best[r], m)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=100, help="timed single queries per modality (default 100)")
    ap.add_argument("--images", type=int, default=256, help="images in the throughput set (default 256)")
    ap.add_argument("--captions", type=int, default=1024, help="captions in the throughput set (default 1024)")
    ap.add_argument("--batch-size", type=int, default=64, help="throughput batch size (features.batch_size)")
    ap.add_argument("--image-size", type=int, default=128, help="features.image_size (default 128)")
    ap.add_argument("--max-tokens", type=int, default=32, help="features.max_tokens (default 32)")
    ap.add_argument("--blocks", type=int, nargs="*", default=[4, 7, 10, 14], help="features.efficientnet_blocks")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="throughput threads (default: all cores)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best counts (default 3)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--int8", action="store_true", help="also measure dynamic int8 quantisation of the text graph")
    args = ap.parse_args()

    runtimes = ["torch", "onnx"] + (["onnx-int8"] if args.int8 else [])
    by_modality = {"text": runtimes, "image": ["torch", "onnx"]}
    images, captions = sample_scenes(max(args.images, args.captions), 2 * args.image_size)
    images = images[:args.images]
    rows: dict[str, dict[str, Any]] = {r: {} for r in runtimes}
    with tempfile.TemporaryDirectory() as tmp:
        # -- per query, 1 thread: the search engine's path ----------------------------------------
        set_threads(1)
        models = {r: load(r, 1, args, Path(tmp)) for r in runtimes}
        query = {"text": (lambda m, q: text_batch(m[0], [q]), captions[:args.queries]),
                 "image": (lambda m, q: image_batch(m[1], [q]), images[:args.queries])}
        with torch.inference_mode():
            for name, (fn, qs) in query.items():
                best = best_of(args.rounds, by_modality[name],
                               lambda r: summarize_ms(time_calls(lambda q: fn(models[r], q), qs, args.warmup)),
                               lambda a, b: a if a["p50_ms"] <= b["p50_ms"] else b)
                for r, stats in best.items():
                    rows[r][name] = stats
        # -- throughput, all cores: the features stage's bare forward; outputs compared -----------
        set_threads(args.threads)
        models = {r: load(r, args.threads, args, Path(tmp)) for r in runtimes}
        ids = models["torch"][0].tokenize(captions)
        pixels = torch.stack([to_pixels(im, args.image_size) for im in images])
        batched = {"text": (lambda m, b: m[0].encode_ids(b)[0],
                            [[ids[w0 + i] for i in rows_] for w0, batches in caption_windows(ids, args.batch_size)
                             for rows_ in batches]),
                   "image": (lambda m, b: m[1].encode(b), list(pixels.split(args.batch_size)))}
        for name, (fn, batches) in batched.items():
            outputs: dict[str, list[torch.Tensor]] = {}

            def measure(r: str) -> float:
                fn(models[r], batches[0])                                        # warm-up
                t0 = time.perf_counter()
                outputs[r] = [fn(models[r], b) for b in batches]
                return sum(len(b) for b in batches) / (time.perf_counter() - t0)

            for r, per_s in best_of(args.rounds, by_modality[name], measure, max).items():
                # padded tokens are zero on every runtime (encode_ids), so they compare equal
                rows[r][name].update(per_s=per_s, diff=max(float((a - b).abs().max())
                                                           for a, b in zip(outputs[r], outputs["torch"])))

    print(f"\nencoders: MiniLM (max_tokens {args.max_tokens}), EfficientNet-Lite0 @ {args.image_size} px, "
          f"blocks {args.blocks}; per query: 1 thread, {args.queries} queries; throughput: {args.threads} threads, "
          f"batch {args.batch_size}, {args.captions} captions / {args.images} images; best of {args.rounds} rounds")
    head = (f"{'runtime':<10} {'text p50':>9} {'p95':>7} {'caps/s':>7} {'max|diff|':>9}   "
            f"{'image p50':>9} {'p95':>7} {'img/s':>7} {'max|diff|':>9}")
    print(head + "\n" + "-" * len(head))

    def cells(x: dict[str, Any] | None) -> str:
        if x is None:
            return f"{'n/a':>9} {'':>7} {'':>7} {'':>9}"
        return f"{x['p50_ms']:>7.2f}ms {x['p95_ms']:>5.2f}ms {x['per_s']:>7.1f} {x['diff']:>9.2e}"

    for r in runtimes:
        print(f"{r:<10} {cells(rows[r].get('text'))}   {cells(rows[r].get('image'))}")
    for r in runtimes[1:]:
        ratios = [f"{name} p50 x{rows['torch'][name]['p50_ms'] / x['p50_ms']:.2f}, "
                  f"{name} throughput x{x['per_s'] / rows['torch'][name]['per_s']:.2f}"
                  for name, x in rows[r].items()]
        print(f"{r} vs torch: " + "; ".join(ratios))


if __name__ == "__main__":
    main()
