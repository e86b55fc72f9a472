"""Stage `latency_encoders`: the bare backbones on one raw query, the floor every method pays."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Sequence

from PIL import Image

from ..features import TextBackbone, VisionBackbone, image_batch, text_batch
from .timing import per_query

if TYPE_CHECKING:
    from ..params import LatencyParams

log = logging.getLogger("aladin")

def encoder_latency(text_backbone: TextBackbone, vision_backbone: VisionBackbone, texts: Sequence[str],
                    images: Sequence[Image.Image], cfg: LatencyParams) -> dict[str, Any]:
    """One raw query through its backbone alone: {'text': ..., 'image': ...} per-query stats."""
    out = {"text": per_query(lambda q: text_batch(text_backbone, [q]), texts[:cfg.n_queries], cfg.warmup),
           "image": per_query(lambda x: image_batch(vision_backbone, [x]), images, cfg.warmup)}
    log.info("encoders: text %.1f ms, image %.1f ms (p50)", out["text"]["p50_ms"], out["image"]["p50_ms"])
    return out
