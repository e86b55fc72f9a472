"""Render a scene to an RGB PIL image: a varying background and flat, patterned shapes.

Drawn at SUPERSAMPLE times the target side, then box-downsampled, for anti-aliased edges.
Rendering is a pure function of the scene, so images can be drawn in any order or process.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from .lexicon import RGB
from .scenes import Background, Scene, SceneObject

SUPERSAMPLE = 2
STRIPE_PERIOD = 0.055     # of the image side
DOT_PERIOD = 0.06
DOT_RADIUS = 0.016
HOLLOW_WIDTH = 0.035


def secondary(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Colour of stripes / dots: a darker shade, or a lighter one for black."""
    if sum(rgb) < 240:
        return tuple(round(c + 0.55 * (255 - c)) for c in rgb)
    return tuple(round(0.5 * c) for c in rgb)


@lru_cache(maxsize=4)
def _grid(side: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x), each (side, side), in [0, 1)."""
    y, x = np.mgrid[0:side, 0:side].astype(np.float32)
    return (y + 0.5) / side, (x + 0.5) / side


def _background(bg: Background, side: int) -> Image.Image:
    y, x = _grid(side)
    if bg.style == "gradient":
        a = math.radians(bg.detail)
        t = (x - 0.5) * math.cos(a) + (y - 0.5) * math.sin(a)          # in about [-0.7, 0.7]
        gain = 1.0 + 0.18 * t
    elif bg.style == "tiles":
        n = bg.detail
        gain = np.where(((x * n).astype(int) + (y * n).astype(int)) % 2 == 0, 1.05, 0.95)
    else:
        gain = np.ones_like(x)
    rgb = np.asarray(bg.rgb, dtype=np.float32)
    arr = np.clip(gain[..., None] * rgb, 0, 255).astype(np.uint8)      # (side, side, 3)
    return Image.fromarray(arr, "RGB")


@lru_cache(maxsize=8)
def _pattern_mask(kind: str, side: int) -> Image.Image:
    y, x = (v * side for v in _grid(side))
    if kind == "striped":
        period = STRIPE_PERIOD * side
        on = (y % period) < period / 2
    else:
        period, r = DOT_PERIOD * side, DOT_RADIUS * side
        on = ((x % period) - period / 2) ** 2 + ((y % period) - period / 2) ** 2 < r * r
    return Image.fromarray(np.where(on, 255, 0).astype(np.uint8), "L")


def _outline(shape: str, box: tuple[float, float, float, float]) -> list[tuple[float, float]]:
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    if shape == "square":
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    if shape == "triangle":
        return [(cx, y0), (x1, y1), (x0, y1)]
    if shape == "diamond":
        return [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else 0.45 * r
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + 0.05 * r + rad * math.sin(a)))
        return pts
    if shape == "cross":
        w = 0.36 * r                  # half the arm width
        return [(cx - w, y0), (cx + w, y0), (cx + w, cy - w), (x1, cy - w), (x1, cy + w), (cx + w, cy + w),
                (cx + w, y1), (cx - w, y1), (cx - w, cy + w), (x0, cy + w), (x0, cy - w), (cx - w, cy - w)]
    raise ValueError(f"unknown shape {shape!r}")


def _object_mask(obj: SceneObject, side: int, image_size: int) -> tuple[tuple[int, int, int, int], Image.Image]:
    """The object's integer bounding region on the supersampled canvas and its mask there."""
    x0, y0, x1, y1 = (v * SUPERSAMPLE for v in obj.box(image_size))
    region = (max(0, math.floor(x0) - 1), max(0, math.floor(y0) - 1),
              min(side, math.ceil(x1) + 1), min(side, math.ceil(y1) + 1))
    local = (x0 - region[0], y0 - region[1], x1 - region[0], y1 - region[1])
    mask = Image.new("L", (region[2] - region[0], region[3] - region[1]), 0)
    draw = ImageDraw.Draw(mask)
    width = round(HOLLOW_WIDTH * side) if obj.pattern == "hollow" else 0
    fill, outline = (None, 255) if width else (255, None)
    if obj.shape == "circle":
        draw.ellipse(local, fill=fill, outline=outline, width=max(width, 1))
    else:
        draw.polygon(_outline(obj.shape, local), fill=fill, outline=outline, width=max(width, 1))
    return region, mask


def render(scene: Scene, image_size: int) -> Image.Image:
    """The scene as an `image_size` x `image_size` RGB image."""
    side = image_size * SUPERSAMPLE
    # The background is smooth: draw it at the target size; nearest upsampling then the final
    # box reduction give it back unchanged.
    img = _background(scene.background, image_size).resize((side, side), Image.NEAREST)
    for obj in scene.objects:
        region, mask = _object_mask(obj, side, image_size)
        img.paste(RGB[obj.colour], region, mask)
        if obj.pattern in ("striped", "dotted"):
            # The pattern is anchored to the canvas, not the object: crop it at the same region.
            pattern = _pattern_mask(obj.pattern, side).crop(region)
            img.paste(secondary(RGB[obj.colour]), region, ImageChops.multiply(mask, pattern))
    return img.reduce(SUPERSAMPLE)
