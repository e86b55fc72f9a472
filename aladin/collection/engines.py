"""Engines that turn planned chunks of files into per-file results: decode -> regions -> embedding.

Both take the same chunks (lists of :class:`FileStat`, in path order) and yield, chunk by chunk and
in order, one :class:`FileResult` per file; the indexer writes each chunk as one shard. So the
shards, ids and embeddings do not depend on the engine (up to float rounding across batch shapes).

- ``local``: in this process; a thread decodes the next batch while the models run on this one.
- ``ray``: a Ray Data pipeline, ``map_batches`` over an actor pool that holds the models (one
  actor per GPU, CPU actors otherwise), on a local Ray or an existing cluster (``address``).
  Workers read the files at the same absolute path: on a cluster the root must be shared storage.
"""
from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import ConfigError
from .encoder import Encoder, ModelSpec
from .scan import FileStat, Limits, Rejected, read_image

log = logging.getLogger("aladin")

ENGINES = ("local", "ray")


@dataclass
class FileResult:
    stat: FileStat
    sha256: str | None = None
    reason: str | None = None                  # set: skipped, no embedding
    emb: np.ndarray | None = None              # (D,) float32
    tokens: np.ndarray | None = None           # (R, d) float16, with --rerank


Decoded = list[tuple[FileStat, str | None, Any]]       # (stat, sha256, image) or (stat, None, reason)


def decode_batch(root: Path, stats: list[FileStat], limits: Limits) -> Decoded:
    out: Decoded = []
    for s in stats:
        try:
            out.append((s, *read_image(root, s, limits)))
        except Rejected as e:
            out.append((s, None, str(e)))
    return out


def encode_batch(encoder: Encoder, decoded: Decoded) -> list[FileResult]:
    ok = [i for i, (_, sha, _) in enumerate(decoded) if sha is not None]
    emb, tokens = encoder([decoded[i][2] for i in ok])
    results = [FileResult(s, reason=r) if sha is None else FileResult(s, sha) for s, sha, r in decoded]
    for row, i in enumerate(ok):
        results[i].emb = emb[row]
        results[i].tokens = tokens[row] if tokens is not None else None
    return results


def run_local(root: Path, chunks: list[list[FileStat]], spec: ModelSpec, batch_size: int,
              limits: Limits) -> Iterator[list[FileResult]]:
    """Each chunk's results, in order, computed in this process (the models load before it returns)."""
    return _local(Encoder(spec), root, chunks, batch_size, limits)


def _local(encoder: Encoder, root: Path, chunks: list[list[FileStat]], batch_size: int,
           limits: Limits) -> Iterator[list[FileResult]]:
    batches = [(c, chunk[s:s + batch_size]) for c, chunk in enumerate(chunks) for s in range(0, len(chunk), batch_size)]
    done: list[FileResult] = []
    with ThreadPoolExecutor(1, thread_name_prefix="decode") as pool:
        # One batch of look-ahead: decoding (PIL, sha256 release the GIL) overlaps the forward pass.
        nxt: Future | None = pool.submit(decode_batch, root, batches[0][1], limits) if batches else None
        for i, (c, _) in enumerate(batches):
            decoded = nxt.result()
            nxt = pool.submit(decode_batch, root, batches[i + 1][1], limits) if i + 1 < len(batches) else None
            done += encode_batch(encoder, decoded)
            if i + 1 == len(batches) or batches[i + 1][0] != c:
                yield done
                done = []


class _RayEmbedder:
    """A Ray Data actor: the models, loaded once per actor; a batch of rows -> its results."""

    def __init__(self, spec: ModelSpec, root: str, limits: Limits) -> None:
        self.encoder, self.root, self.limits = Encoder(spec), Path(root), limits
        self.dim, self.rerank = self.encoder.dim, spec.teacher is not None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        stats = [FileStat(str(p), int(s), int(m)) for p, s, m in zip(batch["path"], batch["size"], batch["mtime_ns"])]
        results = encode_batch(self.encoder, decode_batch(self.root, stats, self.limits))
        out = {"chunk": batch["chunk"], "path": batch["path"],
               "sha256": np.array([r.sha256 or "" for r in results], dtype=object),
               "reason": np.array([r.reason or "" for r in results], dtype=object),
               "emb": np.stack([r.emb if r.emb is not None else np.zeros(self.dim, np.float32) for r in results])}
        if self.rerank:
            shape = next((r.tokens.shape for r in results if r.tokens is not None), (0, 0))
            out["tokens"] = np.stack([r.tokens if r.tokens is not None else np.zeros(shape, np.float16)
                                      for r in results])
        return out


def ray_pool(spec: ModelSpec, workers: int | None) -> dict[str, Any]:
    """map_batches resources: one actor per GPU when the cluster has GPUs, else `workers` CPU actors
    (default: one per 4 CPUs) sharing every CPU, each with that many torch threads."""
    import ray

    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    if gpus and spec.device != "cpu":
        return {"num_gpus": 1, "compute": ray.data.ActorPoolStrategy(size=workers or gpus)}
    n = workers or max(1, cpus // 4)
    if n > cpus:
        raise ConfigError(f"--workers: {n} CPU actors need {n} CPUs, the Ray cluster has {cpus}")
    return {"num_cpus": cpus // n, "compute": ray.data.ActorPoolStrategy(size=n)}


def run_ray(root: Path, chunks: list[list[FileStat]], spec: ModelSpec, batch_size: int, limits: Limits,
            address: str | None = None, workers: int | None = None) -> Iterator[list[FileResult]]:
    """Each chunk's results, in order, computed by a Ray Data actor pool."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--engine ray: Ray is not installed; pip install '.[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    rows = [{"chunk": c, "path": f.path, "size": f.size, "mtime_ns": f.mtime_ns}
            for c, chunk in enumerate(chunks) for f in chunk]
    if not rows:
        return iter(())
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True          # chunks come back whole, in order
    ctx.enable_progress_bars = False                     # the indexer's own bar counts images
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    pool = ray_pool(spec, workers)
    actor_spec = spec if "num_gpus" in pool else ModelSpec(**{**spec.to_dict(), "threads": pool["num_cpus"]})
    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows) // batch_size))
    kwargs = {"spec": actor_spec, "root": str(root), "limits": limits}
    out = ds.map_batches(_RayEmbedder, fn_constructor_kwargs=kwargs, batch_size=batch_size, batch_format="numpy", **pool)
    return _ray_chunks(out, chunks)


def _ray_chunks(out: Any, chunks: list[list[FileStat]]) -> Iterator[list[FileResult]]:
    stats = {f.path: f for chunk in chunks for f in chunk}
    done: list[FileResult] = []
    current = 0
    for b in out.iter_batches(batch_size=None, batch_format="numpy"):
        for j, (c, path) in enumerate(zip(b["chunk"], b["path"])):
            if int(c) != current:
                yield done
                done, current = [], int(c)
            sha, reason = b["sha256"][j] or None, b["reason"][j] or None
            done.append(FileResult(stats[str(path)], sha, reason, None if reason else np.asarray(b["emb"][j], np.float32),
                                   np.asarray(b["tokens"][j], np.float16) if "tokens" in b and not reason else None))
    yield done
