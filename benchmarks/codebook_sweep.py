"""How close the codebook student gets to the teacher before any distillation, per codebook size K.

    python benchmarks/codebook_sweep.py --codes 64 256 1024 2048 4096 [--split val]

For each K: codes = spherical k-means of the teacher's training word vectors (CodebookHead.fit_codes,
the distill stage's initialisation), then on the split: rsum and within-family text->image R@1 of
<phi(I), psi(C)> (the student's score), and of the same vectors L2-normalised (cosine, what a
normalised embedding would rank by), against the teacher's exhaustive MrSw. Reads features/ and
models/teacher.pt under --root; one JSON line per K.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
import numpy as np
import torch

from aladin.data.oracle import scene_records
from aladin.evaluation.metrics import retrieval_metrics, within_family_metrics
from aladin.models.factory import build_model, load_model
from aladin.retrieval.encode import encode_images, encode_texts
from aladin.retrieval.store_scores import score_store
from aladin.runtime import run_stage
from aladin.store import open_split


def figures(scores: np.ndarray | torch.Tensor, caption_image: np.ndarray, families: list | None) -> dict[str, float]:
    out = {"rsum": round(retrieval_metrics(scores, caption_image)["rsum"], 2)}
    if families is not None:
        out["family_r1"] = round(within_family_metrics(scores, caption_image, families)["t2i_family_r1"], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("."))
    ap.add_argument("--codes", type=int, nargs="+", default=[64, 256, 1024, 2048, 4096])
    ap.add_argument("--split", default="val")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.chdir(args.root)
    train, split = open_split(Path("features"), "train"), open_split(Path("features"), args.split)
    teacher = load_model(Path("models/teacher.pt"), kind="alignment")
    records = scene_records(Path("data/scenes.jsonl"), split.image_ids)
    families = None if records is None else [r["family"] for r in records]
    caption_image = np.asarray(split.caption_image)
    print(json.dumps({"model": "teacher", **figures(score_store(teacher, split, "cpu", progress=False),
                                                    caption_image, families)}), flush=True)
    for k in args.codes:
        head = build_model("codebook", {"codes": k}, train.manifest["d_img"], train.manifest["d_txt"],
                           token_encoder=teacher)
        t0 = time.process_time()
        head.fit_codes(train, args.seed)
        fit_cpu = time.process_time() - t0
        img, txt = encode_images(head, split), encode_texts(head, split)
        unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        print(json.dumps({"model": f"codebook K={k}", **figures(img @ txt.T, caption_image, families),
                          "normalised": figures(unit(img) @ unit(txt).T, caption_image, families),
                          "kmeans_cpu_s": round(fit_cpu, 1)}), flush=True)


if __name__ == "__main__":
    run_stage(main)
