"""How much of what captions talk about do region vectors carry? A linear probe per attribute.

    python benchmarks/region_probe.py [--train 3000] [--val 500] [--blocks "" "4,7,10,14"]

For every object of the first `--train` train and `--val` val scenes of the embedded dataset
(data/, made by the `data` stage), the region vector of the grid cell holding the object's centre
is fed to a logistic regression that predicts the object's colour, shape, pattern and size.
Printed: val accuracy per attribute, for each EfficientNet-Lite0 region choice (`""` = the final
head map, "4,7,10,14" = the default hypercolumn; see aladin/features/vision.py).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


from aladin.data.manifest import load_dataset
from aladin.features import load_vision_backbone
from aladin.features.vision import load_pixels

ATTRIBUTES = ("colour", "shape", "pattern", "size")


def object_rows(backbone, records, scenes: dict, batch: int = 100) -> tuple[np.ndarray, dict[str, list]]:
    """(N_obj, D) region vectors under each object's centre, and each object's attributes."""
    grid = backbone.grid
    xs, ys = [], {a: [] for a in ATTRIBUTES}
    for s in range(0, len(records), batch):
        chunk = records[s:s + batch]
        pixels = torch.stack([load_pixels(r.file, backbone.image_size) for r in chunk])
        regions = backbone.encode(pixels).cpu().numpy()                      # (B, R, D)
        for r, reg in zip(chunk, regions):
            scene = scenes[r.id]
            cell = scene["image_size"] / grid
            for o in scene["objects"]:
                x1, y1, x2, y2 = o["box"]
                row = min(int((y1 + y2) / 2 // cell), grid - 1)
                col = min(int((x1 + x2) / 2 // cell), grid - 1)
                xs.append(reg[row * grid + col])
                for a in ATTRIBUTES:
                    ys[a].append(o[a])
    return np.stack(xs), ys


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="data", help="the data stage's output folder")
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--val", type=int, default=500)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--blocks", nargs="+", default=["", "4,7,10,14"],
                    help='comma-separated block indices per region choice; "" = final head map')
    args = ap.parse_args()
    root = Path(args.data)
    dataset = load_dataset(root / "dataset.json")
    scenes = {s["id"]: s for s in map(json.loads, open(root / "scenes.jsonl"))}
    train, val = dataset.split("train")[:args.train], dataset.split("val")[:args.val]
    print(f"linear probe, {len(train)} train / {len(val)} val scenes; val accuracy per attribute")
    for spec in args.blocks:
        blocks = [int(b) for b in spec.split(",") if b]
        backbone = load_vision_backbone("efficientnet-lite0", args.image_size, "cpu", blocks)
        x_tr, y_tr = object_rows(backbone, train, scenes)
        x_va, y_va = object_rows(backbone, val, scenes)
        accs = {a: make_pipeline(StandardScaler(), LogisticRegression(max_iter=300))
                .fit(x_tr, y_tr[a]).score(x_va, y_va[a]) for a in ATTRIBUTES}
        print(f"{backbone.info['regions']:<45} {backbone.dim:>5}-d  " +
              "  ".join(f"{a} {100 * v:.1f}%" for a, v in accs.items()))


if __name__ == "__main__":
    main()
