"""The feature store: per-split, memory-mappable region and token features.

Layout of one split directory (e.g. ``features/test/``)::

    manifest.json          shapes, dtypes, backbone ids and the params that made the store
    regions.npy            float16 (N_img, R, D_img)  region vectors, zero-padded past region_counts
    boxes.npy              float32 (N_img, R, 6)      [x1, y1, x2, y2, w, h], normalised to [0, 1]
    region_counts.npy      int32   (N_img,)           valid regions per image
    tokens.npy             float16 (N_cap, L, D_txt)  contextual token vectors, zero-padded
    token_counts.npy       int32   (N_cap,)           valid tokens per caption
    caption_image.npy      int64   (N_cap,)           index of the image each caption describes
    image_ids.json         [str] * N_img              dataset image ids
    image_files.json       [str] * N_img              image paths (absolute, or relative to the repo)
    captions.json          [str] * N_cap              caption text

Captions are ordered image by image (COCO convention): with 5 captions per image,
caption j describes image j // 5. Arrays are opened with ``mmap_mode='r'`` so a COCO-sized
store is streamed from disk rather than loaded into RAM.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import DataError
from .io import atomic_path, load_array, read_json
from .params import TRANSFER

FORMAT_VERSION = 1
ARRAYS = ("regions", "boxes", "region_counts", "tokens", "token_counts", "caption_image")


class StoreWriter:
    """Stream features into a new split directory; it appears at `path` only on :meth:`close`.

    Usage::

        with StoreWriter(path, n_images, max_regions, d_img, n_captions, max_tokens, d_txt) as w:
            w.write_images(start, regions, boxes, counts)
            w.write_captions(start, tokens, counts)
            w.finish(image_ids, image_files, captions, caption_image, manifest_extra)
    """

    def __init__(self, path: str | Path, n_images: int, max_regions: int, d_img: int,
                 n_captions: int, max_tokens: int, d_txt: int) -> None:
        self.path = Path(path)
        self._ctx = atomic_path(self.path, is_dir=True)
        self.tmp = self._ctx.__enter__()
        mm = np.lib.format.open_memmap
        self.regions = mm(self.tmp / "regions.npy", "w+", np.float16, (n_images, max_regions, d_img))
        self.boxes = mm(self.tmp / "boxes.npy", "w+", np.float32, (n_images, max_regions, 6))
        self.region_counts = mm(self.tmp / "region_counts.npy", "w+", np.int32, (n_images,))
        self.tokens = mm(self.tmp / "tokens.npy", "w+", np.float16, (n_captions, max_tokens, d_txt))
        self.token_counts = mm(self.tmp / "token_counts.npy", "w+", np.int32, (n_captions,))
        self._finished = False

    def write_images(self, start: int, regions: np.ndarray, boxes: np.ndarray, counts: np.ndarray) -> None:
        n, r = regions.shape[:2]
        self.regions[start:start + n, :r] = regions
        self.boxes[start:start + n, :r] = boxes
        self.region_counts[start:start + n] = counts

    def write_captions(self, start: int, tokens: np.ndarray, counts: np.ndarray) -> None:
        n, length = tokens.shape[:2]
        self.tokens[start:start + n, :length] = tokens
        self.token_counts[start:start + n] = counts

    def finish(self, image_ids: list[str], image_files: list[str], captions: list[str],
               caption_image: np.ndarray, manifest_extra: dict[str, Any]) -> None:
        n_img, n_cap = len(self.region_counts), len(self.token_counts)
        if len(image_ids) != n_img or len(image_files) != n_img:
            raise DataError(f"{self.path}: {len(image_ids)} image ids for {n_img} images")
        if len(captions) != n_cap or len(caption_image) != n_cap:
            raise DataError(f"{self.path}: {len(captions)} captions for {n_cap} caption rows")
        np.save(self.tmp / "caption_image.npy", np.asarray(caption_image, dtype=np.int64))
        for name, obj in (("image_ids", image_ids), ("image_files", image_files), ("captions", captions)):
            (self.tmp / f"{name}.json").write_text(json.dumps(list(obj)))
        for arr in (self.regions, self.boxes, self.region_counts, self.tokens, self.token_counts):
            arr.flush()
        manifest = {
            "format_version": FORMAT_VERSION,
            "n_images": n_img,
            "n_captions": n_cap,
            "max_regions": int(self.regions.shape[1]),
            "d_img": int(self.regions.shape[2]),
            "max_tokens": int(self.tokens.shape[1]),
            "d_txt": int(self.tokens.shape[2]),
            **manifest_extra,
        }
        (self.tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        self._finished = True

    def close(self) -> None:
        del self.regions, self.boxes, self.region_counts, self.tokens, self.token_counts
        if self._finished:
            self._ctx.__exit__(None, None, None)
        else:
            self._ctx.__exit__(DataError, DataError("store not finished"), None)

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and not self._finished:
            raise DataError(f"{self.path}: StoreWriter closed without finish()")
        if exc_type is not None:
            self._finished = False
        self.close()


@dataclass
class Batch:
    """Padded features of some images and/or captions, as torch tensors (float32)."""

    regions: torch.Tensor | None = None        # (B, R, D_img)
    boxes: torch.Tensor | None = None          # (B, R, 6)
    region_mask: torch.Tensor | None = None    # (B, R) bool, True = valid region
    tokens: torch.Tensor | None = None         # (B, L, D_txt)
    token_mask: torch.Tensor | None = None     # (B, L) bool, True = valid token
    image_index: torch.Tensor | None = None    # (B,) store index of each image row
    caption_index: torch.Tensor | None = None  # (B,) store index of each caption row

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(**{k: (v.to(device, non_blocking=True) if v is not None else None)
                        for k, v in self.__dict__.items()})


def _mask(counts: np.ndarray, width: int) -> torch.Tensor:
    return torch.arange(width)[None, :] < torch.as_tensor(counts, dtype=torch.long)[:, None]


class FeatureStore:
    """Read-only view of one split directory (memory-mapped)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise DataError(f"{self.path}: feature store directory not found (run the features stage)")
        self.manifest: dict[str, Any] = read_json(self.path / "manifest.json")
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise DataError(f"{self.path}/manifest.json: unsupported format_version "
                            f"{self.manifest.get('format_version')!r} (expected {FORMAT_VERSION})")
        arrays = {}
        for name in ARRAYS:
            f = self.path / f"{name}.npy"
            if not f.is_file():
                raise DataError(f"{f}: missing array of the feature store")
            arrays[name] = load_array(f)
        self.regions, self.boxes = arrays["regions"], arrays["boxes"]
        self.region_counts, self.tokens = arrays["region_counts"], arrays["tokens"]
        self.token_counts, self.caption_image = arrays["token_counts"], np.asarray(arrays["caption_image"])
        self.image_ids: list[str] = read_json(self.path / "image_ids.json")
        self.image_files: list[str] = read_json(self.path / "image_files.json")
        self.captions: list[str] = read_json(self.path / "captions.json")
        self._check()

    def _check(self) -> None:
        m, p = self.manifest, self.path
        expect = {
            "regions": (m["n_images"], m["max_regions"], m["d_img"]),
            "boxes": (m["n_images"], m["max_regions"], 6),
            "region_counts": (m["n_images"],),
            "tokens": (m["n_captions"], m["max_tokens"], m["d_txt"]),
            "token_counts": (m["n_captions"],),
            "caption_image": (m["n_captions"],),
        }
        for name, shape in expect.items():
            got = tuple(getattr(self, name).shape)
            if got != tuple(shape):
                raise DataError(f"{p}/{name}.npy: shape {got} does not match manifest.json {tuple(shape)}")
        if len(self.image_ids) != m["n_images"] or len(self.captions) != m["n_captions"]:
            raise DataError(f"{p}: image_ids.json/captions.json lengths do not match manifest.json")

    @property
    def n_images(self) -> int:
        return int(self.manifest["n_images"])

    @property
    def n_captions(self) -> int:
        return int(self.manifest["n_captions"])

    def image_batch(self, index: np.ndarray | list[int]) -> Batch:
        """Images `index` as a Batch, cropped to the longest region count in the batch."""
        index = np.asarray(index, dtype=np.int64)
        counts = np.asarray(self.region_counts[index])
        r = max(int(counts.max()), 1)
        return Batch(
            regions=torch.from_numpy(np.asarray(self.regions[index, :r], dtype=np.float32)),
            boxes=torch.from_numpy(np.asarray(self.boxes[index, :r], dtype=np.float32)),
            region_mask=_mask(counts, r),
            image_index=torch.from_numpy(index),
        )

    def caption_batch(self, index: np.ndarray | list[int]) -> Batch:
        """Captions `index` as a Batch, cropped to the longest caption in the batch."""
        index = np.asarray(index, dtype=np.int64)
        counts = np.asarray(self.token_counts[index])
        length = max(int(counts.max()), 1)
        return Batch(
            tokens=torch.from_numpy(np.asarray(self.tokens[index, :length], dtype=np.float32)),
            token_mask=_mask(counts, length),
            caption_index=torch.from_numpy(index),
        )

    def pair_batch(self, caption_index: np.ndarray | list[int]) -> Batch:
        """Captions `caption_index` with their own images (row i of both sides is a positive pair).

        The same image may appear twice when two of its captions are in the batch; losses use
        ``image_index`` to treat such rows as positives, never negatives.
        """
        caps = self.caption_batch(caption_index)
        imgs = self.image_batch(self.caption_image[np.asarray(caption_index, dtype=np.int64)])
        return Batch(regions=imgs.regions, boxes=imgs.boxes, region_mask=imgs.region_mask,
                     image_index=imgs.image_index, tokens=caps.tokens, token_mask=caps.token_mask,
                     caption_index=caps.caption_index)


def open_split(features_dir: str | Path, split: str) -> FeatureStore:
    """Open ``<features_dir>/<split>``; the one way later stages read features."""
    return FeatureStore(Path(features_dir) / split)


def open_matching_splits(features_dir: str | Path, *splits: str) -> list[FeatureStore]:
    """Several splits that one model reads: their region and token widths must agree."""
    stores = [open_split(features_dir, s) for s in splits]
    for store in stores[1:]:
        for key in ("d_img", "d_txt"):
            if store.manifest[key] != stores[0].manifest[key]:
                raise DataError(f"{store.path}/manifest.json: {key} {store.manifest[key]} differs from "
                                f"{stores[0].path.name}'s {stores[0].manifest[key]}")
    return stores


class _Rows:
    """Rows of several arrays as one: ``rows[index, :w]`` gathers each row from its part."""

    def __init__(self, parts: list[np.ndarray]) -> None:
        self.parts, self.offsets = parts, np.cumsum([0] + [len(p) for p in parts])
        self.shape = (int(self.offsets[-1]), *parts[0].shape[1:])

    def __getitem__(self, key: tuple[np.ndarray, slice]) -> np.ndarray:
        index, cols = key
        part = np.searchsorted(self.offsets[1:], index, side="right")
        first = self.parts[0][index[:0], cols]
        out = np.empty((len(index), *first.shape[1:]), dtype=first.dtype)
        for p in np.unique(part):
            at = part == p
            out[at] = self.parts[p][index[at] - self.offsets[p], cols]
        return out


class ConcatStore(FeatureStore):
    """Several stores' items as one training set (train + the transfer set): images and captions
    are numbered through the parts in order; batches come from FeatureStore's methods."""

    def __init__(self, parts: list[FeatureStore]) -> None:
        base = parts[0]
        for store in parts[1:]:
            for key in ("d_img", "d_txt", "max_regions", "max_tokens"):
                if store.manifest[key] != base.manifest[key]:
                    raise DataError(f"{store.path}/manifest.json: {key} {store.manifest[key]} differs from "
                                    f"{base.path.name}'s {base.manifest[key]}")
        self.path, self.parts = base.path, parts
        self.manifest = {**base.manifest, "n_images": sum(p.n_images for p in parts),
                         "n_captions": sum(p.n_captions for p in parts), "parts": [p.path.name for p in parts]}
        self.regions, self.boxes, self.tokens = (_Rows([getattr(p, k) for p in parts]) for k in ("regions", "boxes", "tokens"))
        self.region_counts = np.concatenate([p.region_counts for p in parts])
        self.token_counts = np.concatenate([p.token_counts for p in parts])
        offsets = np.cumsum([0] + [p.n_images for p in parts])
        self.caption_image = np.concatenate([p.caption_image + o for p, o in zip(parts, offsets)])
        self.image_ids = [i for p in parts for i in p.image_ids]
        self.image_files = [f for p in parts for f in p.image_files]
        self.captions = [c for p in parts for c in p.captions]


def open_distillation_set(features_dir: str | Path) -> FeatureStore:
    """What the student is distilled on: the train split, plus the transfer split where the
    features stage wrote one (data.n_transfer > 0)."""
    train = open_split(features_dir, "train")
    transfer = Path(features_dir) / TRANSFER
    return ConcatStore([train, FeatureStore(transfer)]) if transfer.is_dir() else train
