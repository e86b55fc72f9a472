"""Which files a collection holds: walk a folder (or read a list of paths), fingerprint each file,
and say why any file is left out. Nothing here aborts for one bad file: it becomes a :class:`Skip`.

A file's identity is its path relative to the collection root (POSIX separators); its version is
(size, mtime_ns), as rsync and git judge "changed", so an unchanged file is never read again. Its
id is the first 63 bits of sha256(relative path): the same file gets the same id in every run,
with either engine, whatever else is added or removed.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..data.images import ImageRejected, decode_bytes
from ..errors import ConfigError

# The formats the search service accepts for an uploaded query (engine.IMAGE_TYPES), as Pillow
# names them; MPO is the multi-picture JPEG that phone cameras write.
FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF"})
SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


@dataclass(frozen=True)
class FileStat:
    path: str              # relative to the collection root, '/'-separated
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Skip:
    path: str
    reason: str
    size: int | None = None        # set when the file itself was judged: unchanged -> not re-read
    mtime_ns: int | None = None


@dataclass(frozen=True)
class Limits:
    max_file_bytes: int = 50 * 2**20
    max_pixels: int = 40_000_000       # PIL's decompression-bomb guard, made a skip reason


class Rejected(Exception):
    """A file that cannot join the collection; the message is the reason."""


def file_id(path: str) -> int:
    """Stable non-negative int64 id of a relative path."""
    return int.from_bytes(hashlib.sha256(path.encode()).digest()[:8], "big") >> 1


def scan(source: Path, limits: Limits = Limits()) -> tuple[Path, list[FileStat], list[Skip]]:
    """(root, candidate files sorted by path, files left out with their reason).

    `source` is a folder (walked recursively; the root is the folder) or a text file of paths, one
    a line, absolute or relative to the list's folder (the root is their common folder).
    """
    source = Path(source)
    if source.is_dir():
        root = source.resolve()
        entries = _walk(root)
    elif source.is_file():
        root, entries = _listed(source)
    else:
        raise ConfigError(f"SOURCE: {source} is neither a folder nor a file listing image paths")
    files, skipped = [], []
    for path, result in entries:
        if isinstance(result, str):
            skipped.append(Skip(path, result))
        elif result.st_size == 0:
            skipped.append(Skip(path, "empty file", 0, result.st_mtime_ns))
        elif result.st_size > limits.max_file_bytes:
            skipped.append(Skip(path, f"too large: {result.st_size} bytes, limit {limits.max_file_bytes} "
                                      "(--max-file-bytes)", result.st_size, result.st_mtime_ns))
        elif Path(path).suffix.lower() not in SUFFIXES:
            skipped.append(Skip(path, f"not an image (extension {Path(path).suffix or 'none'!r})",
                                result.st_size, result.st_mtime_ns))
        else:
            files.append(FileStat(path, result.st_size, result.st_mtime_ns))
    return root, sorted(files, key=lambda f: f.path), sorted(skipped, key=lambda s: s.path)


def _walk(root: Path) -> list[tuple[str, os.stat_result | str]]:
    """Every file under `root`: (relative path, its stat or why it is left out). Symlinked folders
    are not followed (no cycles); a symlinked file counts only if it resolves inside the root."""
    out: list[tuple[str, os.stat_result | str]] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            items = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            out.append((folder.relative_to(root).as_posix(), f"unreadable folder ({e.strerror})"))
            continue
        for entry in items:
            rel = Path(entry.path).relative_to(root).as_posix()
            if entry.is_symlink():
                out.append((rel, _symlink(Path(entry.path), root)))
            elif entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                out.append((rel, entry.stat(follow_symlinks=False)))
    return out


def _symlink(link: Path, root: Path) -> os.stat_result | str:
    try:
        target = link.resolve(strict=True)
    except RuntimeError:
        return "symlink loop"
    except OSError as e:
        return "symlink loop" if e.errno == 40 else f"broken symlink ({e.strerror})"
    if not target.is_relative_to(root):
        return "symlink leaving the root"
    if target.is_dir():
        return "symlinked folder (not followed)"
    return target.stat()


def _listed(listing: Path) -> tuple[Path, list[tuple[str, os.stat_result | str]]]:
    base = listing.resolve().parent
    lines = [ln.strip() for ln in listing.read_text().splitlines()]
    paths = [Path(os.path.normpath(base / ln)) for ln in lines if ln and not ln.startswith("#")]
    if not paths:
        raise ConfigError(f"SOURCE: {listing} lists no paths")
    root = Path(os.path.commonpath([p.parent for p in paths]))
    out: list[tuple[str, os.stat_result | str]] = []
    for p in dict.fromkeys(paths):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out.append((rel, _symlink(p, root)))
        elif p.is_file():
            out.append((rel, p.stat()))
        else:
            out.append((rel, "not found" if not p.exists() else "not a file"))
    return root, out


def read_image(root: Path, stat: FileStat, limits: Limits = Limits()) -> tuple[str, Image.Image]:
    """(sha256 of the bytes, decoded RGB image) of one collection file, or :class:`Rejected`."""
    try:
        data = (root / stat.path).read_bytes()
    except OSError as e:
        raise Rejected(f"unreadable ({e.strerror})") from None
    if not data:
        raise Rejected("empty file")
    if len(data) > limits.max_file_bytes:
        raise Rejected(f"too large: {len(data)} bytes, limit {limits.max_file_bytes} (--max-file-bytes)")
    return hashlib.sha256(data).hexdigest(), decode(data, limits)


def decode(data: bytes, limits: Limits = Limits()) -> Image.Image:
    """Bytes -> RGB image, or :class:`Rejected` saying why (not an image, a format the service does
    not accept, too many pixels, truncated or corrupt)."""
    try:
        return decode_bytes(data, limits.max_pixels, FORMATS)
    except ImageRejected as e:
        if e.kind == "format":
            raise Rejected(e.detail) from None
        if e.kind == "pixels":
            raise Rejected(f"too many pixels: {e.size[0]}x{e.size[1]}, limit {limits.max_pixels}" if e.size
                           else f"too many pixels ({e.detail})") from None
        raise Rejected("not an image (unknown format)" if e.detail == "unknown format"
                       else f"truncated or corrupt ({e.detail})") from None
