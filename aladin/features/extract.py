"""The features stage: every split of the dataset -> a feature store (see aladin/store.py).

Throughput comes from keeping the backbones busy: images are decoded and resized in DataLoader
workers while the model runs; captions are tokenised once per split, then encoded in batches of
similar length (sorted inside windows of a few batches, so memory stays bounded and the store is
still written contiguously, in dataset order).

Datasets that ship precomputed region features (the `precomp` / `vinvl_tsv` data sources leave a
``precomputed.json`` beside dataset.json) skip the vision backbone: their regions and boxes are
copied into the stores as they are; captions are still encoded here.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset as TorchDataset
from tqdm import tqdm

from ..data.manifest import ImageRecord, load_dataset
from ..datasets import PRECOMPUTED, RegionSource, open_precomputed, write_region_features
from ..errors import DataError
from ..io import atomic_path, read_json
from ..params import SPLITS, TRANSFER
from ..store import StoreWriter
from .text import TextBackbone, load_text_backbone
from .vision import VisionBackbone, load_pixels, load_vision_backbone

if TYPE_CHECKING:
    from ..params import FeaturesParams

log = logging.getLogger("aladin")

SORT_WINDOW = 32  # caption batches sorted by length together


class _ImageFiles(TorchDataset):
    """Decoded, resized uint8 images; a bad file comes back as an error string, raised by the caller
    (an exception raised inside a worker would reach the user wrapped in a traceback)."""

    def __init__(self, files: Sequence[Path], size: int) -> None:
        self.files, self.size = list(files), size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        try:
            return load_pixels(self.files[i], self.size), ""
        except DataError as e:
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), str(e)


def image_batches(files: Sequence[Path], size: int, batch_size: int, num_workers: int,
                  pin_memory: bool = False) -> Iterator[torch.Tensor]:
    """uint8 (B, 3, size, size) batches of `files` in order, decoded in `num_workers` processes."""
    loader = DataLoader(_ImageFiles(files, size), batch_size=batch_size, num_workers=num_workers,
                        pin_memory=pin_memory, persistent_workers=False)
    for pixels, errors in loader:
        bad = next((e for e in errors if e), None)
        if bad:
            raise DataError(bad)
        yield pixels


def caption_windows(ids: list[list[int]], batch_size: int) -> Iterator[tuple[int, list[np.ndarray]]]:
    """(window start, batches of row indices inside the window, each sorted by token count)."""
    window = batch_size * SORT_WINDOW
    for w0 in range(0, len(ids), window):
        lengths = [len(x) for x in ids[w0:w0 + window]]
        order = np.argsort(lengths, kind="stable")
        yield w0, [order[b:b + batch_size] for b in range(0, len(order), batch_size)]


def extract_images(vision: VisionBackbone, files: Sequence[Path], writer: StoreWriter,
                   batch_size: int, num_workers: int, desc: str = "images") -> None:
    boxes = np.broadcast_to(vision.boxes, (batch_size, *vision.boxes.shape))
    counts = np.full(batch_size, vision.n_regions, dtype=np.int32)
    start = 0
    with tqdm(total=len(files), desc=desc, unit="img", leave=False) as bar:
        for pixels in image_batches(files, vision.image_size, batch_size, num_workers,
                                    pin_memory=vision.device.type == "cuda"):
            b = len(pixels)
            regions = vision.encode(pixels).half().cpu().numpy()              # (b, R, D)
            writer.write_images(start, regions, boxes[:b], counts[:b])
            start += b
            bar.update(b)


def extract_captions(text: TextBackbone, ids: list[list[int]], writer: StoreWriter,
                     batch_size: int, desc: str = "captions") -> None:
    """Encode tokenised captions; rows are written back in their original order."""
    width, dim = writer.tokens.shape[1:]
    with tqdm(total=len(ids), desc=desc, unit="cap", leave=False) as bar:
        for w0, batches in caption_windows(ids, batch_size):
            n = sum(len(b) for b in batches)
            tokens = np.zeros((n, width, dim), dtype=np.float16)
            counts = np.zeros(n, dtype=np.int32)
            for rows in batches:
                t, c = text.encode_ids([ids[w0 + r] for r in rows])
                tokens[rows, :t.shape[1]] = t.half().cpu().numpy()
                counts[rows] = c.numpy()
                bar.update(len(rows))
            writer.write_captions(w0, tokens, counts)


def _repo_relative(file: Path) -> str:
    """Image path relative to the working directory (the repo root) when inside it, else absolute."""
    file = Path(file).resolve()
    try:
        return str(file.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(file)


def extract_split(records: Sequence[ImageRecord], vision: VisionBackbone | RegionSource, text: TextBackbone,
                  path: Path, cfg: FeaturesParams, captions_per_image: int, manifest_extra: dict[str, Any]) -> None:
    """Write the feature store of one split to `path` (atomically).

    `vision` is a backbone run on the image files, or a source of precomputed regions.
    """
    captions = [c for r in records for c in r.captions]
    caption_image = np.repeat(np.arange(len(records)), captions_per_image)
    ids = text.tokenize(captions)
    width = max(len(x) for x in ids)
    split = path.name
    run_backbone = isinstance(vision, VisionBackbone)
    n_regions = vision.n_regions if run_backbone else vision.max_regions
    t0 = time.perf_counter()
    with StoreWriter(path, len(records), n_regions, vision.dim, len(captions), width, text.dim) as w:
        if run_backbone:
            extract_images(vision, [r.file for r in records], w, cfg.batch_size, cfg.num_workers,
                           f"{split} images")
        else:
            write_region_features(w, vision, split, [r.id for r in records])
        t1 = time.perf_counter()
        extract_captions(text, ids, w, cfg.batch_size, f"{split} captions")
        t2 = time.perf_counter()
        w.finish([r.id for r in records], [_repo_relative(r.file) for r in records], captions,
                 caption_image, {**manifest_extra, "split": split})
    log.info("%s: %d images (%.1f/s), %d captions (%.1f/s, up to %d tokens)", split, len(records),
             len(records) / max(t1 - t0, 1e-9), len(captions), len(captions) / max(t2 - t1, 1e-9), width)


def extract_features(cfg: FeaturesParams, dataset_path: Path, out_dir: Path, device: torch.device) -> None:
    """dataset.json -> ``out_dir/{train,val,test}`` feature stores (and ``transfer`` when the dataset has
    that split); `out_dir` appears only when all are done.

    load_dataset has already checked that files exist and captions are non-empty text, the right
    number per image; decoding errors surface here, naming the file.
    """
    dataset = load_dataset(dataset_path)
    splits = {s: dataset.split(s) for s in SPLITS}
    for s, records in splits.items():
        if not records:
            raise DataError(f"{dataset_path}: no images in split {s!r}")
    if dataset.split(TRANSFER):
        splits[TRANSFER] = dataset.split(TRANSFER)
    precomputed = open_precomputed(dataset_path.parent)
    if precomputed is None:
        log.info("loading vision backbone %s on %s (%s runtime)", cfg.vision_backbone, device, cfg.runtime)
        vision: VisionBackbone | RegionSource = load_vision_backbone(cfg.vision_backbone, cfg.image_size, device,
                                                                      cfg.efficientnet_blocks, cfg.runtime)
        vision_info = vision.info
    else:
        log.info("image regions: precomputed (%s), features.vision_backbone unused", dataset_path.parent / PRECOMPUTED)
        vision, vision_info = precomputed, {"name": "precomputed", **read_json(dataset_path.parent / PRECOMPUTED)}
    log.info("loading text backbone %s on %s (%s runtime)", cfg.text_backbone, device, cfg.runtime)
    text = load_text_backbone(cfg.text_backbone, cfg.max_tokens, device, cfg.runtime)
    extra = {
        "dataset": dataset.name,
        "captions_per_image": dataset.captions_per_image,
        "vision_backbone": vision_info,
        "text_backbone": text.info,
        "image_size": cfg.image_size,
        "max_tokens_param": cfg.max_tokens,
        "params": dataclasses.asdict(cfg),
        "tokens": "all word pieces of last_hidden_state, [CLS] and [SEP] included",
    }
    with atomic_path(out_dir, is_dir=True) as tmp:
        for s, records in splits.items():
            log.info("%s: extracting %d images, %d captions", s, len(records),
                     len(records) * dataset.captions_per_image)
            extract_split(records, vision, text, tmp / s, cfg, dataset.captions_per_image, extra)
