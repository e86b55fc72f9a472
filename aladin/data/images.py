"""Opening image files, and what counts as an unreadable one: the data stage checks every image
with :func:`check_image` so that a file the features stage cannot decode is reported against the
user's annotations, not later against the generated dataset.json."""
from __future__ import annotations

import contextlib
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
