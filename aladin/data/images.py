"""Opening image files, and what counts as an unreadable one: the data stage checks every image
with :func:`check_image` so that a file the features stage cannot decode is reported against the
user's annotations, not later against the generated dataset.json."""
from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Iterator

from PIL import Image

from ..errors import DataError

DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@contextlib.contextmanager
def open_image(file: str | Path) -> Iterator[Image.Image]:
    """PIL image of `file`; a missing or undecodable file (also while the caller decodes it) is a
    DataError naming it."""
    try:
        with Image.open(file) as im:
            yield im
    except FileNotFoundError:
        raise DataError(f"{file}: image file not found") from None
    except DECODE_ERRORS as e:
        raise DataError(f"{file}: cannot decode image ({e})") from None


def load_rgb(file: str | Path) -> Image.Image:
    """The decoded RGB image of `file` (pixels loaded, the file closed), or a DataError naming it."""
    with open_image(file) as im:
        return im.convert("RGB")


def check_image(file: str | Path) -> None:
    """Header and structure check without decoding the pixels (Image.verify): a few ms per file."""
    with open_image(file) as im:
        im.verify()


class ImageRejected(Exception):
    """Bytes that do not decode to an image: `kind` is 'pixels' (over the limit), 'format' (not
    among the accepted ones) or 'unreadable' (unknown format, truncated, corrupt); `detail` says more."""

    def __init__(self, kind: str, detail: str, size: tuple[int, int] | None = None) -> None:
        super().__init__(detail)
        self.kind, self.detail, self.size = kind, detail, size      # size: (w, h) read from the header


def decode_bytes(data: bytes, max_pixels: int, formats: frozenset[str] | None = None) -> Image.Image:
    """Encoded image bytes -> RGB image, with Pillow's decompression-bomb warning made an error and
    the pixel count checked from the header before decoding; `formats` (Pillow names) restricts
    what is accepted. Raises :class:`ImageRejected`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if formats is not None and img.format not in formats:
                raise ImageRejected("format", f"format {img.format} not accepted (accepted: {', '.join(sorted(formats))})")
            w, h = img.size
            if w * h > max_pixels:
                raise ImageRejected("pixels", f"{w}x{h} pixels, limit {max_pixels}", (w, h))
            img.load()
            return img.convert("RGB")
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise ImageRejected("pixels", str(e)) from None
    except Image.UnidentifiedImageError:          # its message is the repr of the BytesIO
        raise ImageRejected("unreadable", "unknown format") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageRejected("unreadable", str(e)) from None
