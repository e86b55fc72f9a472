"""A collection directory on disk, written so that no reader ever sees half of anything::

    collections/NAME/
      manifest.json              the committed state: files (path, size, mtime, sha256, id, shard,
                                 row), skipped files with reasons, the index file, the model spec
      shards/<key>.npy           float32 (n, D) student embeddings of one chunk's readable files
      shards/<key>.tokens.npy    float16 (n, R, d) teacher region tokens (--rerank), memory-mapped
      shards/<key>.json          the chunk's files and their rows / skip reasons: written LAST
      index-<key>.faiss          the faiss index over the committed files (ids = file ids)

Every file is written to a temporary sibling and renamed (aladin.io). A shard counts only once its
.json exists; the manifest is renamed into place after the shards and the index it names, so a
crash at any point leaves the previous manifest intact, and the files it names. Shard keys hash
the model spec and the chunk's (path, size, mtime): a restarted run plans the same chunks and
finds the shards the killed run completed. After a commit, files the manifest does not name are
garbage and are removed.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import AladinError, DataError
from ..io import load_array, read_json, write_bytes
from .scan import FileStat

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def shard_key(model_key: str, chunk: list[FileStat]) -> str:
    what = json.dumps([model_key, [(f.path, f.size, f.mtime_ns) for f in chunk]])
    return hashlib.sha256(what.encode()).hexdigest()[:24]


def write_shard(folder: Path, key: str, files: list[dict[str, Any]], emb: np.ndarray,
                tokens: np.ndarray | None) -> None:
    """One chunk: arrays first, its .json (which makes it count) last."""
    shards = folder / "shards"
    write_bytes(shards / f"{key}.npy", npy_bytes(np.ascontiguousarray(emb, np.float32)))
    if tokens is not None:
        write_bytes(shards / f"{key}.tokens.npy", npy_bytes(np.ascontiguousarray(tokens, np.float16)))
    meta = {"format_version": FORMAT_VERSION, "n": int(len(emb)), "tokens": tokens is not None, "files": files}
    write_bytes(shards / f"{key}.json", json.dumps(meta).encode())


def read_shard(folder: Path, key: str) -> dict[str, Any] | None:
    """A completed shard's metadata, or None when the shard was never completed."""
    f = folder / "shards" / f"{key}.json"
    if not f.is_file():
        return None
    meta = read_json(f)
    arrays = [folder / "shards" / f"{key}.npy"] + ([folder / "shards" / f"{key}.tokens.npy"] if meta["tokens"] else [])
    return meta if all(a.is_file() for a in arrays) else None


def shard_array(folder: Path, key: str, tokens: bool = False) -> np.ndarray:
    return load_array(folder / "shards" / f"{key}{'.tokens' if tokens else ''}.npy")


def read_manifest(folder: Path) -> dict[str, Any] | None:
    f = folder / MANIFEST
    if not f.is_file():
        return None
    manifest = read_json(f)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{f}: unsupported format_version {manifest.get('format_version')!r}")
    return manifest


def commit(folder: Path, manifest: dict[str, Any]) -> None:
    write_bytes(folder / MANIFEST, (json.dumps(manifest, sort_keys=True) + "\n").encode())


def collect_garbage(folder: Path, manifest: dict[str, Any]) -> int:
    """Remove every shard, index and temporary file the committed manifest does not name."""
    keep = {f"{k}{ext}" for k in manifest["shards"] for ext in (".npy", ".tokens.npy", ".json")}
    keep.add(manifest["index"]["file"])
    removed = 0
    for f in {*(folder / "shards").glob("*"), *folder.glob("index-*"), *folder.glob(".*.tmp")}:
        if f.name not in keep and f.name != ".lock":
            if f.is_dir():                   # a killed run's temporary sibling (aladin.io.atomic_path)
                shutil.rmtree(f, ignore_errors=True)
            else:
                f.unlink(missing_ok=True)
            removed += 1
    return removed


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """One indexer per collection at a time (released by the OS if the process dies)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise AladinError(f"{folder}: another indexer is running on this collection") from None
            raise
        yield
