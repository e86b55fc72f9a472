"""``aladin-search index``: bring a collection up to date with its source, incrementally.

    report = index_collection("~/photos", Path("collections/photos"), model_spec("."))

Plan: scan the source; files whose (size, mtime) match the committed manifest keep their
embedding (and known-bad files their skip reason); the rest are *pending*, cut in path order into
chunks of ``shard_size``; a chunk whose shard is already on disk (a killed run completed it) is
reused, the others go through the engine and become shards. Then the index is built over every
kept + new file, and the manifest is committed last. The result depends only on the files and the
model, not on how many runs (or kills) it took.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import faiss
import numpy as np
from tqdm import tqdm

from ..io import write_bytes
from ..errors import ConfigError, DataError
from . import build, shards
from .encoder import ModelSpec
from .engines import ENGINES, FileResult, run_local, run_ray
from .scan import FileStat, Limits, Skip, file_id, scan

log = logging.getLogger("aladin")


@dataclass
class IndexOptions:
    engine: str = "local"
    address: str | None = None            # Ray cluster address (None: a local Ray)
    workers: int | None = None            # Ray actors (default: one per GPU, else one per 4 CPUs)
    batch_size: int = 32
    shard_size: int = 1024                # files per shard (a multiple of batch_size)
    max_index_memory: int = 2 * 2**30
    flat_threshold: int = 100_000
    limits: Limits = field(default_factory=Limits)
    progress: bool = True


@dataclass
class Report:
    root: str
    files: int                            # in the collection after this run
    embedded: int                         # images embedded by this run's engine
    resumed: int                          # files taken from shards a killed run had completed
    kept: int                             # unchanged since the last run
    removed: int                          # gone from the source since the last run
    skipped: list[Skip]
    index: dict[str, Any]
    seconds: float
    images_per_s: float

    def summary(self) -> str:
        by_reason: dict[str, int] = {}
        for s in self.skipped:
            kind = s.reason.split(" (")[0].split(":")[0]        # "too large: 9 bytes ..." -> "too large"
            by_reason[kind] = by_reason.get(kind, 0) + 1
        lines = [f"{self.files} images in the collection (root {self.root}): {self.embedded} embedded "
                 f"({self.images_per_s:.1f} images/s), {self.resumed} resumed, {self.kept} unchanged, "
                 f"{self.removed} removed; index {self.index['factory']} ({self.index['memory_bytes'] / 2**20:.1f} MiB)"]
        if self.skipped:
            lines.append(f"{len(self.skipped)} files skipped: " + ", ".join(f"{n} {r}" for r, n in sorted(by_reason.items())))
            lines += [f"  {s.path}: {s.reason}" for s in self.skipped]
        return "\n".join(lines)


def index_collection(source: str | Path, folder: Path, spec: ModelSpec, opts: IndexOptions = IndexOptions()) -> Report:
    if opts.engine not in ENGINES:
        raise ConfigError(f"--engine: unknown engine {opts.engine!r}; known: {', '.join(ENGINES)}")
    if opts.batch_size < 1 or opts.shard_size % opts.batch_size:
        raise ConfigError(f"--shard-size: {opts.shard_size} must be a positive multiple of --batch-size {opts.batch_size}")
    with shards.locked(folder):
        return _index(Path(source), folder, spec, opts)


def _index(source: Path, folder: Path, spec: ModelSpec, opts: IndexOptions) -> Report:
    t0 = time.perf_counter()
    root, files, scan_skips = scan(source, opts.limits)
    prev = shards.read_manifest(folder) or {"files": [], "skipped": [], "model": {}, "root": str(root)}
    if prev["files"] and prev["root"] != str(root):
        raise ConfigError(f"SOURCE: collection {folder.name} indexes {prev['root']}, not {root}; "
                          "use another --collection name")
    same_model = prev["model"].get("key") == spec.key
    known = {e["path"]: e for e in prev["files"]} if same_model else {}
    known_bad = {s["path"]: s for s in prev["skipped"] if s.get("size") is not None} if same_model else {}
    current = {f.path for f in files}

    kept, bad, pending = [], [], []
    for f in files:
        e, s = known.get(f.path), known_bad.get(f.path)
        if e is not None and (e["size"], e["mtime_ns"]) == (f.size, f.mtime_ns):
            kept.append(e)
        elif s is not None and (s["size"], s["mtime_ns"]) == (f.size, f.mtime_ns):
            bad.append(Skip(**s))
        else:
            pending.append(f)
    removed = sum(1 for p in {e["path"] for e in prev["files"]} if p not in current)

    chunks = [pending[i:i + opts.shard_size] for i in range(0, len(pending), opts.shard_size)]
    keys = [shards.shard_key(spec.key, c) for c in chunks]
    done = {k: m for k in keys if (m := shards.read_shard(folder, k)) is not None}
    todo = [i for i, k in enumerate(keys) if k not in done]
    n_todo = sum(len(chunks[i]) for i in todo)
    results_iter = _run(root, [chunks[i] for i in todo], spec, opts) if todo else iter(())
    t_embed, n_embedded = time.perf_counter(), 0      # after the local engine's model loading
    with tqdm(total=n_todo, desc=f"index {folder.name}", unit="img", disable=not opts.progress or not n_todo,
              mininterval=1) as bar:
        for i, results in zip(todo, results_iter):
            done[keys[i]] = _write_shard(folder, keys[i], results)
            n_embedded += sum(r.reason is None for r in results)
            bar.update(len(results))
    embed_s = time.perf_counter() - t_embed

    new = []
    for k in keys:
        for f in done[k]["files"]:
            if f["reason"] is None:
                new.append({**{x: f[x] for x in ("path", "size", "mtime_ns", "sha256", "row")}, "shard": k,
                            "id": file_id(f["path"])})
            else:
                bad.append(Skip(f["path"], f["reason"], f["size"], f["mtime_ns"]))
    entries = sorted(kept + new, key=lambda e: e["path"])
    _check_ids(entries)
    index = _write_index(folder, entries, spec, opts)
    manifest = {"format_version": shards.FORMAT_VERSION, "name": folder.name, "root": str(root),
                "model": {**spec.to_dict(), "key": spec.key}, "files": entries,
                "skipped": [asdict(s) for s in sorted(scan_skips + bad, key=lambda s: s.path)],
                "shards": sorted({e["shard"] for e in entries}), "index": index}
    shards.commit(folder, manifest)
    shards.collect_garbage(folder, manifest)
    return Report(str(root), len(entries), n_embedded, len(pending) - n_todo, len(kept), removed,
                  sorted(scan_skips + bad, key=lambda s: s.path), index, time.perf_counter() - t0,
                  n_todo / embed_s if n_todo and embed_s > 0 else 0.0)


def _run(root: Path, chunks: list[list[FileStat]], spec: ModelSpec, opts: IndexOptions) -> Iterator[list[FileResult]]:
    if opts.engine == "ray":
        return run_ray(root, chunks, spec, opts.batch_size, opts.limits, opts.address, opts.workers)
    return run_local(root, chunks, spec, opts.batch_size, opts.limits)


def _write_shard(folder: Path, key: str, results: list[FileResult]) -> dict[str, Any]:
    ok = [r for r in results if r.reason is None]
    rows = {r.stat.path: i for i, r in enumerate(ok)}
    files = [{"path": r.stat.path, "size": r.stat.size, "mtime_ns": r.stat.mtime_ns, "sha256": r.sha256,
              "row": rows.get(r.stat.path), "reason": r.reason} for r in results]
    dim = next((r.emb.shape[0] for r in ok), 0)
    emb = np.stack([r.emb for r in ok]) if ok else np.zeros((0, dim), np.float32)
    tokens = np.stack([r.tokens for r in ok]) if ok and ok[0].tokens is not None else None
    shards.write_shard(folder, key, files, emb, tokens)
    return shards.read_shard(folder, key)


def _check_ids(entries: list[dict[str, Any]]) -> None:
    seen: dict[int, str] = {}
    for e in entries:
        if e["id"] in seen:      # 63-bit hashes: practically never; refuse rather than mix two files
            raise DataError(f"{e['path']} and {seen[e['id']]}: same 63-bit id; rename one of them")
        seen[e["id"]] = e["path"]


def entry_batches(folder: Path, entries: list[dict[str, Any]], size: int = 65536) -> build.Batches:
    """Batches of (ids, embeddings) of `entries` in order, read from their memory-mapped shards."""
    def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        arrays: dict[str, np.ndarray] = {}
        for s in range(0, len(entries), size):
            part = entries[s:s + size]
            for e in part:
                if e["shard"] not in arrays:
                    arrays[e["shard"]] = shards.shard_array(folder, e["shard"])
            x = np.stack([arrays[e["shard"]][e["row"]] for e in part]).astype(np.float32)
            yield np.array([e["id"] for e in part], np.int64), x
    return batches


def _write_index(folder: Path, entries: list[dict[str, Any]], spec: ModelSpec, opts: IndexOptions) -> dict[str, Any]:
    dim = next((int(shards.shard_array(folder, e["shard"]).shape[1]) for e in entries[:1]), 0)
    plan = build.plan_index(len(entries), dim, opts.max_index_memory, opts.flat_threshold)
    if not entries:
        index = faiss.IndexIDMap(faiss.IndexFlatIP(max(dim, 1)))
    else:
        index, plan = build.build(plan, entry_batches(folder, entries))
    key = hashlib.sha256(json.dumps([spec.key, plan.to_dict(), [(e["id"], e["shard"], e["row"]) for e in entries]])
                         .encode()).hexdigest()[:24]
    name = f"index-{key}.faiss"
    if not (folder / name).is_file():
        write_bytes(folder / name, faiss.serialize_index(index).tobytes())
    return {**plan.to_dict(), "file": name}

