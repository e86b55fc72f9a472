"""Raw queries -> Batch, for search time: one caption or one image encoded end to end.

Features are rounded through float16 like the stored ones, so a query seen at search time gets
exactly the features it would have had in the store.
"""
from __future__ import annotations

import torch
from PIL import Image

from ..errors import DataError
from ..store import Batch, FeatureStore
from .text import TextBackbone, load_text_backbone
from .vision import VisionBackbone, load_vision_backbone, to_pixels


def store_backbones(store: FeatureStore, device: torch.device | str) -> tuple[TextBackbone, VisionBackbone]:
    """The text and vision backbones that extracted `store`, rebuilt from its manifest's params,
    on the runtime that extracted it (a query gets the features its stored twin got)."""
    p = store.manifest.get("params", {})
    runtime = p.get("runtime", "torch")                                     # older stores: eager torch
    try:
        text = load_text_backbone(p["text_backbone"], p["max_tokens"], device, runtime)
        vision = load_vision_backbone(p["vision_backbone"], p["image_size"], device,
                                      p.get("efficientnet_blocks", []), runtime)  # older stores: the head map
    except KeyError as e:
        raise DataError(f"{store.path}/manifest.json: params lack {e}, cannot rebuild the backbones") from None
    return text, vision


def text_batch(backbone: TextBackbone, captions: list[str]) -> Batch:
    """Captions -> Batch(tokens (B,L,D), token_mask (B,L)) on the backbone's device."""
    tokens, counts = backbone.encode_ids(backbone.tokenize(captions))
    mask = torch.arange(tokens.shape[1], device=tokens.device)[None, :] < counts.to(tokens.device)[:, None]
    return Batch(tokens=tokens.half().float(), token_mask=mask)


def image_batch(backbone: VisionBackbone, images: list[Image.Image]) -> Batch:
    """PIL images -> Batch(regions (B,R,D), boxes (B,R,6), region_mask (B,R)) on the backbone's device."""
    pixels = torch.stack([to_pixels(im, backbone.image_size) for im in images])
    regions = backbone.encode(pixels).half().float()
    b, r = regions.shape[:2]
    boxes = torch.from_numpy(backbone.boxes).to(regions.device).expand(b, r, 6)
    mask = torch.ones(b, r, dtype=torch.bool, device=regions.device)
    return Batch(regions=regions, boxes=boxes, region_mask=mask)
