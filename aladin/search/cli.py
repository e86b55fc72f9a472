"""``aladin-search``: search the indexed test collection, or your own images, from the shell or over HTTP.

    aladin-search text "a small red square to the left of a blue circle" -k 5 [--rerank] [--json]
    aladin-search image photo.jpg -k 5 [--rerank] [--json]
    aladin-search serve --port 8000 [--index hnsw --index flat] [--concurrency 2]
    aladin-search index ~/photos --collection photos [--rerank] [--engine ray [--address auto]]
    aladin-search text "two green triangles" --collection photos      # any command, on a collection

Run from the pipeline's root (or pass ``--root``): it reads features/<split>/, models/student.pt,
models/teacher.pt (for ``--rerank``; skipped with ``--no-teacher``) and index/; collections live
in collections/NAME/ (docs/SEARCH.md).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from ..data.images import load_rgb
from ..errors import AladinError, DataError
from ..io import read_json
from ..collection.build import parse_bytes
from ..collection.encoder import model_spec
from ..collection.engines import ENGINES
from ..collection.indexer import IndexOptions, index_collection
from ..collection.scan import Limits as FileLimits
from ..retrieval.retriever import Retriever
from ..runtime import resolve_device, set_threads, setup_logging
from .engine import EngineBase, SearchEngine, check_text, with_index_kind

log = logging.getLogger("aladin")


def evaluated_rerank_k(root: str | Path = ".") -> int:
    """The re-rank depth the evaluate stage measured (metrics/eval.json): the default of --rerank-k."""
    path = Path(root) / "metrics" / "eval.json"
    try:
        return int(read_json(path)["two_stage"]["rerank_k"])
    except (DataError, KeyError, TypeError) as e:
        raise AladinError(f"{path}: no evaluated re-rank depth ({e}); run the pipeline or pass --rerank-k") from None


def load_engine(root: str | Path = ".", index: list[str] | None = None, teacher: bool = True,
                threads: int = 1, concurrency: int = 1, split: str = "test", device: str = "cpu",
                rerank_k: int | None = None) -> SearchEngine:
    """Load the Retriever once and wrap it in a SearchEngine serving the index kinds `index`
    (default: the kind stored in index/; others are built at start from its embeddings).
    `rerank_k` defaults to the evaluated depth (:func:`evaluated_rerank_k`)."""
    set_threads(threads)
    root = Path(root)
    teacher_path = root / "models" / "teacher.pt"
    if teacher and not teacher_path.is_file():
        log.warning("%s not found: serving without re-ranking", teacher_path)
        teacher = False
    base = Retriever(features_dir=root / "features", split=split, student=root / "models" / "student.pt",
                     index_dir=root / "index", teacher=teacher_path if teacher else None,
                     device=resolve_device(device))
    stored = base.index.cfg.kind
    kinds = list(dict.fromkeys(index or [stored]))
    retrievers = {kind: base if kind == stored else with_index_kind(base, kind) for kind in kinds}
    log.info("loaded %d images, %d captions; indexes %s; teacher %s", base.store.n_images,
             base.store.n_captions, ", ".join(kinds), "on" if teacher else "off")
    rerank_k = rerank_k or (evaluated_rerank_k(root) if teacher else 1)
    return SearchEngine(retrievers, kinds[0], root=root, concurrency=concurrency, rerank_k=rerank_k)


DEFAULT_RERANK_K = 50      # a collection's re-rank depth when the pipeline measured none


def collection_dir(root: str | Path, name: str) -> Path:
    if not name or "/" in name or name.startswith("."):
        raise AladinError(f"--collection: {name!r} must be a plain folder name")
    return Path(root) / "collections" / name


def load_collection_engine(root: str | Path, name: str, teacher: bool = True, threads: int = 1,
                           concurrency: int = 1, device: str = "cpu", rerank_k: int | None = None) -> EngineBase:
    """The engine of collection `name` (collections/NAME under `root`)."""
    from .collection import CollectionEngine

    set_threads(threads)
    if rerank_k is None:
        rerank_k = evaluated_rerank_k(root) if (Path(root) / "metrics" / "eval.json").is_file() else DEFAULT_RERANK_K
    return CollectionEngine(collection_dir(root, name), concurrency=concurrency, teacher=teacher,
                            rerank_k=rerank_k, device=str(resolve_device(device)))


def open_engine(args: argparse.Namespace, concurrency: int = 1) -> EngineBase:
    if args.collection:
        return load_collection_engine(args.root, args.collection, teacher=not args.no_teacher, threads=args.threads,
                                      concurrency=concurrency, device=args.device, rerank_k=args.rerank_k)
    return load_engine(args.root, args.index, teacher=not args.no_teacher, threads=args.threads,
                       concurrency=concurrency, split=args.split, device=args.device, rerank_k=args.rerank_k)


def collection_captions(root: str | Path = ".", split: str = "test") -> list[str]:
    """The captions of the indexed collection (queries for benchmarks and examples)."""
    captions = read_json(Path(root) / "features" / split / "captions.json")
    if not isinstance(captions, list) or not captions:
        raise DataError(f"{root}/features/{split}/captions.json: expected a non-empty list of captions")
    return captions


def format_table(result: dict[str, Any]) -> str:
    """A search result (as returned by the engine / the API) as a readable table."""
    hits = result["hits"]
    head = (f"{len(hits)} results for {result['query']!r} (index {result['index']}"
            f"{', re-ranked by the teacher' if result['rerank'] else ''}, {result['took_ms']:.1f} ms)")
    id_w = max([len("image id")] + [len(h["image_id"]) for h in hits])
    if hits and "caption" in hits[0]:
        rows = [f"{'rank':>4}  {'score':>8}  {'image id':<{id_w}}  caption"]
        rows += [f"{h['rank']:>4}  {h['score']:>8.4f}  {h['image_id']:<{id_w}}  {h['caption']}" for h in hits]
    else:
        rows = [f"{'rank':>4}  {'score':>8}  {'image id':<{id_w}}  file"]
        rows += [f"{h['rank']:>4}  {h['score']:>8.4f}  {h['image_id']:<{id_w}}  {h['file']}" for h in hits]
    if result.get("unknown_words"):
        rows.append(f"note: {', '.join(result['unknown_words'])}: not words of the scenes' captions, "
                    "which are all the student has learnt")
    return "\n".join([head, *rows])


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", type=Path, default=Path("."),
                        help="pipeline root holding features/, models/, index/ (default: .)")
    common.add_argument("--split", default="test", help="feature-store split that was indexed (default: test)")
    common.add_argument("--index", action="append", metavar="KIND",
                        help="faiss index kind to search (flat, hnsw, ivf_flat, ivf_pq); repeat to serve "
                             "several, the first is the default (default: the kind stored in index/)")
    common.add_argument("--no-teacher", action="store_true", help="do not load the teacher (no re-ranking)")
    common.add_argument("--threads", type=int, default=1, help="torch/faiss threads per query (default: 1)")
    common.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    common.add_argument("--rerank-k", type=int, default=None,
                        help="student candidates the teacher re-ranks (default: the depth in metrics/eval.json)")
    common.add_argument("--collection", metavar="NAME",
                        help="search collections/NAME (made by `aladin-search index`) instead of the test split")

    p = argparse.ArgumentParser(prog="aladin-search", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name, what in (("text", "a text query -> top-k images"), ("image", "an image file -> top-k captions")):
        s = sub.add_parser(name, parents=[common], help=what)
        s.add_argument("query", help="the query text" if name == "text" else "path of the query image")
        s.add_argument("-k", type=int, default=10, help="number of results (default: 10)")
        s.add_argument("--rerank", action="store_true", help="re-rank the student's candidates with the teacher")
        s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s = sub.add_parser("serve", parents=[common], help="the HTTP service and web page")
    s.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--concurrency", type=int, default=os.cpu_count() or 1,
                   help="queries computed at once (default: the CPU count); with --threads, "
                        "concurrency x threads should not exceed the cores")
    s = sub.add_parser("index", help="index a folder of images (or a file listing paths) as a collection")
    s.add_argument("source", type=Path, help="a folder (searched recursively) or a text file of image paths")
    s.add_argument("--collection", metavar="NAME", required=True, help="written to <root>/collections/NAME/")
    s.add_argument("--root", type=Path, default=Path("."), help="pipeline root (models/, features/; default: .)")
    s.add_argument("--split", default="test", help="feature-store split whose backbone params to use (default: test)")
    s.add_argument("--model", type=Path, help="student checkpoint (default: <root>/models/student.pt)")
    s.add_argument("--rerank", action="store_true", help="keep the teacher's region tokens (two-stage search)")
    s.add_argument("--engine", choices=ENGINES, default="local", help="local (in-process, default) or ray")
    s.add_argument("--address", help="Ray cluster address (default: start a local Ray; 'auto': the running one)")
    s.add_argument("--workers", type=int, help="Ray actors (default: one per GPU, else one per 4 CPUs)")
    s.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    s.add_argument("--shard-size", type=int, default=1024, help="images per shard, a multiple of --batch-size")
    s.add_argument("--max-index-memory", default="2G", help="memory budget of the faiss index (default: 2G)")
    s.add_argument("--flat-threshold", type=int, default=100_000,
                   help="exact (flat) search below this many images, IVF-PQ above (default: 100000)")
    s.add_argument("--max-file-bytes", type=int, default=FileLimits.max_file_bytes,
                   help=f"skip larger files (default: {FileLimits.max_file_bytes})")
    s.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own)")
    s.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run_index(args: argparse.Namespace) -> None:
    set_threads(args.threads)
    opts = IndexOptions(engine=args.engine, address=args.address, workers=args.workers, batch_size=args.batch_size,
                        shard_size=args.shard_size, max_index_memory=parse_bytes(args.max_index_memory),
                        flat_threshold=args.flat_threshold, limits=FileLimits(max_file_bytes=args.max_file_bytes),
                        progress=not args.quiet)
    spec = model_spec(args.root, args.model, args.rerank, args.split, str(resolve_device(args.device)), args.threads)
    report = index_collection(args.source, collection_dir(args.root, args.collection), spec, opts)
    print(report.summary())


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    setup_logging(logging.WARNING if args.command != "serve" else logging.INFO)
    try:
        if args.command == "index":
            run_index(args)
            return
        if args.threads < 1:
            raise AladinError(f"--threads: must be >= 1, got {args.threads}")
        if args.command == "serve":
            serve(args)
            return
        if args.rerank and args.no_teacher:
            raise AladinError("--rerank needs the teacher: drop --no-teacher")
        # Check the query before the seconds spent loading models.
        image = load_rgb(Path(args.query)) if args.command == "image" else check_text(args.query)
        if args.rerank_k is not None and args.rerank_k < 1:
            raise AladinError(f"--rerank-k: must be >= 1, got {args.rerank_k}")
        engine = open_engine(args)
        if args.command == "text":
            result = engine.search_text(args.query, args.k, args.rerank)
        else:
            result = engine.search_image(image, args.k, args.rerank, name=args.query)
    except AladinError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(result, indent=2) if args.json else format_table(result))


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from .service import create_app

    engine = open_engine(args, args.concurrency)
    log.info("serving on http://%s:%d/ (%d concurrent queries x %d threads)", args.host, args.port,
             args.concurrency, args.threads)
    uvicorn.run(create_app(engine), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
