"""Load test of the search service: HTTP throughput and latency against in-process search.

Starts ``aladin-search serve`` on 127.0.0.1 (a free port), then, for each concurrency level,
a *separate client process* sends text queries (test captions) from that many keep-alive
connections for ``--duration`` seconds. Reports per level: requests/s, p50/p95 round-trip
latency, and the server-side time (``took_ms`` of each response), so the HTTP share is
visible. The in-process baseline is the student's per-query latency from
``metrics/latency.json`` when present, and always a fresh in-process measurement of the same
engine and queries (server stopped, so the two never share the CPU).

    python benchmarks/service_load.py                         # defaults: levels 1 2 4 8, 10 s each
    python benchmarks/service_load.py --levels 1 4 --duration 5 --out metrics/service_load.json

Bounded in time: server start-up has a timeout, every level runs for ``--duration`` plus a
short warm-up, and the client process is killed past a hard deadline. Numbers depend on the
machine: the client shares its cores with the server.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def pct(ms: list[float], q: float) -> float:
    return float(np.percentile(ms, q)) if ms else float("nan")


# ---------------------------------------------------------------- client process (--client)

def client(port: int, queries: list[str], concurrency: int, duration: float, warmup: float,
           k: int, rerank: bool) -> dict:
    """`concurrency` threads, one keep-alive connection each, querying until the deadline."""
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + duration
    lock = threading.Lock()
    rtt, server, errors = [], [], []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        conn = http.client.HTTPConnection(HOST, port, timeout=60)
        while (t0 := time.perf_counter()) < stop_at:
            q = urllib.parse.urlencode({"q": rng.choice(queries), "k": k, "rerank": str(rerank).lower()})
            try:
                conn.request("GET", f"/api/search/text?{q}")
                resp = conn.getresponse()
                body = resp.read()
                ok = resp.status == 200
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=60)
                body, ok = str(e).encode(), False
            t1 = time.perf_counter()
            if t0 < measure_from:
                continue
            with lock:
                if ok:
                    rtt.append((t1 - t0) * 1e3)
                    server.append(json.loads(body)["took_ms"])
                else:
                    errors.append(body[:200].decode(errors="replace"))
        conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"concurrency": concurrency, "duration_s": duration, "requests": len(rtt), "errors": len(errors),
            "error_examples": errors[:3], "throughput_qps": len(rtt) / duration,
            "p50_ms": pct(rtt, 50), "p95_ms": pct(rtt, 95), "mean_ms": float(np.mean(rtt)) if rtt else float("nan"),
            "server_p50_ms": pct(server, 50), "server_p95_ms": pct(server, 95)}


# ---------------------------------------------------------------- driver

def wait_healthy(proc: subprocess.Popen, port: int, timeout: float, log: Path) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode} during start-up; log:\n{log.read_text()[-3000:]}")
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=5)
            conn.request("GET", "/health")
            resp = conn.getresponse()
            if resp.status == 200:
                return json.loads(resp.read())
        except OSError:
            pass
        time.sleep(0.5)
    sys.exit(f"server not healthy after {timeout:.0f} s; log:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_level(port: int, queries_file: Path, level: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--client", "--port", str(port), "--queries", str(queries_file),
           "--concurrency", str(level), "--duration", str(args.duration), "--warmup", str(args.warmup),
           "--k", str(args.k)] + (["--rerank"] if args.rerank else [])
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                             timeout=args.duration + args.warmup + 120)
    except subprocess.TimeoutExpired:
        return {"concurrency": level, "error": "client process timed out"}
    except subprocess.CalledProcessError as e:
        return {"concurrency": level, "error": f"client process failed: {e.stderr[-1000:]}"}
    return json.loads(out.stdout)


def in_process(args: argparse.Namespace, queries: list[str]) -> dict:
    """The same engine as the server, called directly: what HTTP adds is the difference."""
    from aladin.latency.timing import per_query
    from aladin.search.cli import load_engine

    engine = load_engine(args.root, [args.index] if args.index else None, teacher=args.rerank, threads=args.threads)
    return per_query(lambda q: engine.search_text(q, args.k, args.rerank), queries[:args.inprocess_queries])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=Path("."), help="pipeline root (data/, features/, models/, index/)")
    p.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4, 8], help="client concurrency levels")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per level")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each level")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--rerank", action="store_true", help="two-stage search (student then teacher)")
    p.add_argument("--index", help="index kind to serve (default: the kind stored in index/)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per query in the server")
    p.add_argument("--server-concurrency", type=int, default=os.cpu_count() or 1,
                   help="queries the server runs at once")
    p.add_argument("--inprocess-queries", type=int, default=200)
    p.add_argument("--startup-timeout", type=float, default=300.0)
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    # client mode: run by the driver in a separate process
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--queries", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--concurrency", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.client:
        queries = json.loads(args.queries.read_text())
        print(json.dumps(client(args.port, queries, args.concurrency, args.duration, args.warmup,
                                args.k, args.rerank)))
        return

    from aladin.search.cli import collection_captions

    queries = collection_captions(args.root)
    random.Random(0).shuffle(queries)
    queries = queries[:2000]
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="service_load."))
    queries_file, log = tmp / "queries.json", tmp / "server.log"
    queries_file.write_text(json.dumps(queries))
    serve = [sys.executable, "-m", "aladin.search.cli", "serve", "--root", str(args.root), "--host", HOST,
             "--port", str(port), "--threads", str(args.threads), "--concurrency", str(args.server_concurrency)]
    if not args.rerank:
        serve.append("--no-teacher")
    if args.index:
        serve += ["--index", args.index]
    levels = []
    with open(log, "w") as log_f:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        proc = subprocess.Popen(serve, stdout=log_f, stderr=subprocess.STDOUT, env=env)
        try:
            health = wait_healthy(proc, port, args.startup_timeout, log)
            print(f"service up on {HOST}:{port}: {health['n_images']} images, index {health['default_index']}",
                  file=sys.stderr)
            args.k = min(args.k, health["n_images"])           # small test collections
            for level in args.levels:
                levels.append(run_level(port, queries_file, level, args))
                print(json.dumps(levels[-1]), file=sys.stderr)
        finally:
            stop(proc)

    base = in_process(args, queries)
    latency_json = args.root / "metrics" / "latency.json"
    result = {
        "setup": {"host": HOST, "k": args.k, "rerank": args.rerank, "server_threads": args.threads,
                  "server_concurrency": args.server_concurrency, "duration_s": args.duration,
                  "cpu_count": os.cpu_count(), "n_images": health["n_images"], "index": health["default_index"],
                  "note": "client and server share this machine's cores"},
        "levels": levels,
        "in_process": base,
        "latency_stage": json.loads(latency_json.read_text()) if latency_json.is_file() else None,
    }
    first = next((lv for lv in levels if "p50_ms" in lv), None)
    if first:
        # Two views of what HTTP adds at the lowest concurrency: round trip minus the in-process
        # call (separate runs), and round trip minus the server's own timing (same requests).
        overhead = first["p50_ms"] - base["p50_ms"]
        result["http_overhead_p50_ms"] = overhead
        result["http_overhead_fraction"] = overhead / first["p50_ms"]
        result["http_overhead_vs_server_p50_ms"] = first["p50_ms"] - first["server_p50_ms"]
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")

    print(f"\nin-process search_text: p50 {base['p50_ms']:.2f} ms, p95 {base['p95_ms']:.2f} ms "
          f"({base['n_queries']} queries, {args.threads} thread(s))")
    print(f"{'conc':>5} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'server p50':>11} {'errors':>7}")
    for lv in levels:
        if "error" in lv:
            print(f"{lv['concurrency']:>5} {lv['error']}")
            continue
        print(f"{lv['concurrency']:>5} {lv['throughput_qps']:>8.1f} {lv['p50_ms']:>8.2f} {lv['p95_ms']:>8.2f} "
              f"{lv['server_p50_ms']:>11.2f} {lv['errors']:>7}")
    if first:
        print(f"HTTP overhead at concurrency {first['concurrency']}: {result['http_overhead_p50_ms']:.2f} ms "
              f"of {first['p50_ms']:.2f} ms p50 ({100 * result['http_overhead_fraction']:.1f}%) vs in-process; "
              f"{result['http_overhead_vs_server_p50_ms']:.2f} ms vs the server's own timing")


if __name__ == "__main__":
    main()
