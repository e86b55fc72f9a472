"""Stage `latency`: end-to-end query latency of teacher, student (per index kind) and two-stage
-> metrics/latency.json, plots/{latency_scaling,index_tradeoff,rerank_tradeoff}.csv, plots/latency.png.

A query starts from RAW input (caption text, or a decoded test image) and goes through the
backbone, the student, the index (and the teacher re-rank). Single queries: p50 / p95 ms after
a warm-up; batched: queries/s. Threads fixed by `latency.threads`. Collections larger than the
test set are perturbed copies of the test embeddings (rows marked synthetic). The exhaustive
teacher is timed on a fixed sample of `teacher_queries` queries. Targets are checked and printed.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from aladin.config import load_section, shared_seed  # noqa: E402
from aladin.cross_eval import load_cross  # noqa: E402
from aladin.errors import DataError  # noqa: E402
from aladin.io import atomic_path, read_json, write_json  # noqa: E402
from aladin.latency import LatencyConfig, cross_encoder_rows, fix_threads, run_latency  # noqa: E402
from aladin.retriever import Retriever  # noqa: E402
from aladin.runtime import resolve_device, run_stage  # noqa: E402
from aladin.tracking import TrackingConfig, mlflow_run  # noqa: E402

log = logging.getLogger("aladin")
EVAL, RERANK_QUALITY = Path("metrics/eval.json"), Path("plots/rerank_quality.csv")
OUT, PLOTS = Path("metrics/latency.json"), Path("plots")
CROSS = Path("models/cross.pt")


def _p50(rows: list[dict], method: str, n: int) -> float | None:
    hit = [r["p50_ms"] for r in rows if r["method"] == method and r["query"] == "text" and r["n_images"] == n]
    return hit[0] if hit else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def targets(res: dict, ev: dict, scaling_kind: str) -> dict[str, dict]:
    """The project's speed / quality targets, each {value, limit, ok}; at 100K the student searches
    its approximate index (`scaling_kind`), at 1K exactly (flat)."""
    t, scaling = res["text"], res["scaling"]
    student_1k, student_100k = _p50(scaling, "student_flat", 1000), _p50(scaling, f"student_{scaling_kind}", 100000)

    def check(value: float | None, limit: float, at_least: bool = False) -> dict:
        ok = None if value is None else (value >= limit if at_least else value <= limit)
        return {"value": value, "limit": limit, "ok": ok}
    return {
        "student_5k_vs_text_encoder": check(t["student"]["p50_ms"] / t["encoder_only"]["p50_ms"], 1.25),
        f"student_100k_{scaling_kind}_vs_1k_flat": check(_ratio(student_100k, student_1k), 1.5),
        "two_stage_rsum_vs_teacher": check(ev["summary"]["two_stage_rsum_vs_teacher"], 0.99, at_least=True),
        "two_stage_vs_student_latency": check(t["two_stage"]["p50_ms"] / t["student"]["p50_ms"], 1.5),
    }


def plot(res: dict, depths: pd.DataFrame, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(16, 4.5))
    sc = pd.DataFrame(res["scaling"])
    for (method, query), g in sc.groupby(["method", "query"]):
        ax[0].loglog(g["n_images"], g["p50_ms"], "o-", label=f"{method} ({query} query)")
    ax[0].set(xlabel="collection size (images)", ylabel="p50 latency per query (ms)",
              title="Latency vs collection size (synthetic past the test set)")
    ax[0].legend()
    kinds = pd.DataFrame(res["index_kinds"])
    ax[1].plot(kinds["search_p50_ms"], kinds["recall_at_k_vs_flat"], "o")
    for _, r in kinds.iterrows():
        ax[1].annotate(r["kind"], (r["search_p50_ms"], r["recall_at_k_vs_flat"]))
    ax[1].set(xlabel="search p50 (ms, query embedded)", ylabel="recall@10 of exact top-10", title="Index kinds")
    ax[2].plot(depths["e2e_p50_ms"], depths["rsum"], "o-")
    for _, r in depths.iterrows():
        ax[2].annotate(f"k={int(r['rerank_k'])}", (r["e2e_p50_ms"], r["rsum"]))
    ax[2].set(xlabel="two-stage p50 end to end (ms)", ylabel="rsum (full test set)", title="Re-rank depth")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def main() -> None:
    cfg = load_section(LatencyConfig, "latency")
    seed, tracking = shared_seed(), load_section(TrackingConfig, "tracking")
    fix_threads(cfg.threads)
    ev = read_json(EVAL)
    if not RERANK_QUALITY.is_file():
        raise DataError(f"{RERANK_QUALITY}: not found (run the evaluate stage)")
    quality = pd.read_csv(RERANK_QUALITY)
    rerank_k = int(ev["two_stage"]["rerank_k"])
    device = resolve_device(cfg.device)
    retr = Retriever(device=device, rerank_k=rerank_k)
    files = [Path(f) for f in retr.store.image_files]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise DataError(f"{missing[0]}: test image not found ({len(missing)} missing); run the data stage")
    res = run_latency(retr, cfg, seed, rerank_k, quality["rerank_k"].tolist(), files)
    cross = load_cross(CROSS, device)
    if cross is not None:
        res["scaling"] += cross_encoder_rows(retr, cross, cfg, seed)

    t = res["text"]
    teacher = {n: _p50(res["scaling"], "teacher", n) for n in (5000, 100000)}
    student = {n: _p50(res["scaling"], "student_flat", n) for n in (1000, 5000, 100000)}
    cross = {n: _p50(res["scaling"], "cross_encoder", n) for n in (1000, 5000)}
    summary = {
        "speedup_cross_vs_student_1k": _ratio(cross[1000], student[1000]),
        "speedup_cross_vs_student_5k": _ratio(cross[5000], student[5000]),
        "speedup_teacher_vs_student_5k": _ratio(teacher[5000], student[5000]),
        "speedup_teacher_vs_student_100k": _ratio(teacher[100000], student[100000]),
        "two_stage_latency_vs_student": t["two_stage"]["p50_ms"] / t["student"]["p50_ms"],
        "two_stage_latency_vs_teacher_5k": _ratio(t["two_stage"]["p50_ms"], teacher[5000]),
        "two_stage_rsum_vs_teacher": ev["summary"]["two_stage_rsum_vs_teacher"],
        "two_stage_rsum_vs_student": ev["summary"]["two_stage_rsum_vs_student"],
    }
    result = {"text": t, "image": res["image"], "summary": summary, "targets": targets(res, ev, cfg.scaling_kind),
              "conventions": {
                  "timing": "wall clock per query after warm-up, raw input to ranked ids, "
                            f"{cfg.threads} thread(s) for torch and faiss",
                  "synthetic": "collections past the test set are perturbed copies of the test embeddings "
                               f"(noise {cfg.noise}); the teacher rescores the real set chunk by chunk",
                  "teacher": f"exhaustive scoring timed on a fixed sample of {cfg.teacher_queries} queries",
                  "cross_encoder": f"one joint pass per (query, image) pair, timed on a fixed sample of "
                                   f"{cfg.cross_queries} queries, real test images only",
                  "image_queries": "decoded test images (PIL), resized and encoded by the vision backbone"}}
    depths = pd.DataFrame(res["rerank"]).rename(columns=lambda c: c if c == "rerank_k" else f"e2e_{c}")
    depths = depths.merge(quality, on="rerank_k")
    with mlflow_run("latency", {"latency": asdict(cfg), "seed": seed}, tracking) as run:
        write_json(OUT, result)
        for name, rows in (("latency_scaling", res["scaling"]), ("index_tradeoff", res["index_kinds"])):
            with atomic_path(PLOTS / f"{name}.csv") as tmp:
                pd.DataFrame(rows).to_csv(tmp, index=False)
        with atomic_path(PLOTS / "rerank_tradeoff.csv") as tmp:
            depths.to_csv(tmp, index=False)
        plot(res, depths, PLOTS / "latency.png")
        run.log_metrics({k: v for k, v in result.items() if k != "conventions"})
        for f in ("latency_scaling.csv", "index_tradeoff.csv", "rerank_tradeoff.csv", "latency.png"):
            run.log_artifact(PLOTS / f)
    for name, tgt in result["targets"].items():
        print(f"target {name}: {tgt['value']} (limit {tgt['limit']}) -> {'n/a' if tgt['ok'] is None else 'PASS' if tgt['ok'] else 'FAIL'}")
    for name, v in summary.items():
        print(f"{name}: {v}")


if __name__ == "__main__":
    run_stage(main)
