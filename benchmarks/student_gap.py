"""What limits the student (issue 30, item 1): trains students with `distill` params overridden
and reports, per epoch, how close each gets to the teacher on val AND on the data it was
distilled on.

    python benchmarks/student_gap.py --run "" --run "optim.epochs=12,optim.lr_decay_epochs=[10]" \
        --run "model.d_model=256,model.ff=512" --run "train_images=2500" --out gap.jsonl

Each --run is comma-separated `key=value` overrides of params.yaml's `distill` section (YAML
values; `train_images=N` distils on the pairs of the first N training images only,
`transfer_images=N` adds those of the first N transfer scenes, features/transfer, data.n_transfer).
Reads features/ and models/teacher.pt under --root. Per epoch it prints and writes:

- val rsum (1K val images, both directions) and its ratio to the teacher's;
- the same on the first `--fit-images` TRAINING images (data the student was distilled on): a
  ratio as low there as on val means the student does not fit the teacher, it is not a
  generalisation gap;
- val within-family text->image R@1 on the scenes data (binding; chance 100 / family size);
- the distillation loss against its floor, the teacher's own target entropy on the same
  lists (the loss equals the floor only when the student reproduces the teacher's lists).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")
import numpy as np
import torch
import yaml

from aladin import params
from aladin.config import from_dict, section
from aladin.data.oracle import scene_records
from aladin.evaluation.metrics import retrieval_metrics, within_family_metrics
from aladin.models.factory import load_model
from aladin.retrieval.encode import encode_images, encode_texts
from aladin.retrieval.store_scores import score_store
from aladin.runtime import run_stage, seed_everything, set_threads
from aladin.store import FeatureStore, open_distillation_set, open_split
from aladin.training.distillation import StudentLoss, build_student, teacher_scorer
from aladin.training.lists import wider_lists
from aladin.training.loop import fit


def overrides(spec: str) -> dict[str, Any]:
    """'a.b=1,c=[2, 3]' -> {'a.b': 1, 'c': [2, 3]} (commas inside brackets kept)."""
    out, depth, cur = {}, 0, ""
    for ch in spec + ",":
        if ch == "," and depth == 0:
            if cur.strip():
                k, _, v = cur.partition("=")
                out[k.strip()] = yaml.safe_load(v)
            cur = ""
            continue
        depth += 1 if ch in "[{" else -1 if ch in "]}" else 0
        cur += ch
    return out


def distill_config(changes: dict[str, Any]) -> params.DistillParams:
    raw = section("distill")
    for key, value in changes.items():
        node, *path = key.split(".")
        target = raw
        for part in [node, *path][:-1]:
            target = target[part]
        if [node, *path][-1] not in target:
            raise SystemExit(f"--run: distill has no key {key!r}")
        target[[node, *path][-1]] = value
    return from_dict(params.DistillParams, raw, "distill", strict=True)


def subset_metrics(student: torch.nn.Module, store: FeatureStore, n_images: int) -> dict[str, float]:
    caps = np.flatnonzero(np.asarray(store.caption_image) < n_images)
    img = encode_images(student, store, np.arange(n_images))
    txt = encode_texts(student, store, caps)
    return retrieval_metrics(img @ txt.T, np.asarray(store.caption_image)[caps])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("."))
    ap.add_argument("--run", action="append", default=[], help="distill overrides, e.g. 'optim.epochs=6'")
    ap.add_argument("--fit-images", type=int, default=1000, help="training images scored for the fit ratio")
    ap.add_argument("--seed", type=int, default=None, help="training seed (default: params.yaml's)")
    ap.add_argument("--out", type=Path, default=None, help="append one JSON line per epoch and run")
    args = ap.parse_args()
    os.chdir(args.root)
    seed = params.seed() if args.seed is None else args.seed
    base = params.load("distill")
    set_threads(base.threads)
    device = torch.device("cpu")
    train, val = open_distillation_set(Path("features")), open_split(Path("features"), "val")
    n_train = open_split(Path("features"), "train").n_images        # transfer images come after these
    teacher = load_model(Path("models/teacher.pt"), device, kind="alignment")
    n_fit = min(args.fit_images, train.n_images)
    fit_caps = np.flatnonzero(np.asarray(train.caption_image) < n_fit)
    ref = {"val": retrieval_metrics(score_store(teacher, val, device, progress=False), val.caption_image)["rsum"],
           "fit": retrieval_metrics(score_store(teacher, train, device, image_idx=np.arange(n_fit),
                                                caption_idx=fit_caps, progress=False),
                                    np.asarray(train.caption_image)[fit_caps])["rsum"]}
    print(f"teacher rsum: val {ref['val']:.1f}, first {n_fit} training images {ref['fit']:.1f}")
    scores = teacher_scorer(teacher, train, cached=True)
    records = scene_records(Path("data/scenes.jsonl"), val.image_ids)
    families = None if records is None else [r["family"] for r in records]

    for spec in args.run or [""]:
        changes = overrides(spec)
        n_images = int(changes.pop("train_images", n_train))
        n_transfer = int(changes.pop("transfer_images", 0))
        if n_transfer > train.n_images - n_train:
            raise SystemExit(f"--run: transfer_images={n_transfer}, features/transfer holds {train.n_images - n_train}")
        cfg = distill_config(changes)
        image_of = np.asarray(train.caption_image)
        pairs = np.flatnonzero((image_of < n_images) | ((image_of >= n_train) & (image_of < n_train + n_transfer)))
        seed_everything(seed)
        student = build_student(cfg, train, teacher, seed)
        lists = wider_lists(cfg.lists, cfg.contrastive_weight > 0, teacher, train,
                            Path("data/scenes.jsonl"), device)
        loss = StudentLoss(cfg.loss, scores, lists)

        def validate(model: torch.nn.Module) -> dict[str, float]:
            scores = encode_images(model, val) @ encode_texts(model, val).T
            v, f = retrieval_metrics(scores, val.caption_image), subset_metrics(model, train, n_fit)
            out = {"rsum": v["rsum"], "ratio": v["rsum"] / ref["val"], "fit_rsum": f["rsum"],
                   "fit_ratio": f["rsum"] / ref["fit"]}
            if families is not None:
                out["family_r1"] = within_family_metrics(scores, val.caption_image, families)["t2i_family_r1"]
            return out

        t0 = time.process_time()

        def record(epoch: int, row: dict[str, float]) -> None:
            line = {"run": spec or "default", "train_images": n_images, "transfer_images": n_transfer, "seed": seed,
                    "cpu_s": round(time.process_time() - t0, 1), **{k: round(v, 4) for k, v in row.items()}}
            print(json.dumps(line), flush=True)
            if args.out:
                with open(args.out, "a") as fh:
                    fh.write(json.dumps(line) + "\n")
        with torch.no_grad():
            record(-1, validate(student.eval()))           # epoch -1: before training (the codebook's k-means)
        fit(student, loss, train, validate, cfg.student_optim, seed, device, None, on_epoch_start=loss.on_epoch_start,
            on_epoch_end=record, pair_order=lambda rng: rng.permutation(pairs))


if __name__ == "__main__":
    run_stage(main)
