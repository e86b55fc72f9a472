"""metrics/latency.json: the timing stages joined, speed ratios and the project's targets;
the efficiency-vs-effectiveness points."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..evaluation.metrics import full_key

if TYPE_CHECKING:
    from ..params import LatencyParams

# -- the report ---------------------------------------------------------------------------------
def _p50(rows: list[dict], method: str, n: int, query: str = "text") -> float | None:
    hit = [r["p50_ms"] for r in rows if r["method"] == method and r["query"] == query and r["n_images"] == n]
    return hit[0] if hit else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _check(value: float | None, limit: float, at_least: bool = False) -> dict[str, Any]:
    ok = None if value is None else (value >= limit if at_least else value <= limit)
    return {"value": value, "limit": limit, "ok": ok}


def latency_report(system: dict[str, Any], encoders: dict[str, Any], teacher: dict[str, Any],
                   scaling: list[dict[str, Any]], cross: list[dict[str, Any]], evaluation: dict[str, Any],
                   cfg: LatencyParams) -> dict[str, Any]:
    """metrics/latency.json: per-query stats, speed ratios and the project's targets.

    The student's end-to-end latency at a collection size N (``*_e2e`` rows) is its measured
    end-to-end latency on the real test collection, less the search time of its index there, plus
    the search time at N (`scaling`): the backbone and the student's query tower cost the same
    whatever N is.
    """
    t = {"encoder_only": encoders["text"], **system["text"]}
    im = {"encoder_only": encoders["image"], **system["image"], "teacher": teacher["image"]}
    own = next(r for r in system["index_kinds"] if r["kind"] == t["student"]["index"])
    overhead = t["student"]["p50_ms"] - own["search_p50_ms"]
    e2e = [{**r, "method": f"{r['method']}_e2e", "p50_ms": overhead + r["p50_ms"],
            "p95_ms": None, "mean_ms": None, "qps": None}
           for r in scaling if r["query"] == "text"]
    rows = scaling + teacher["scaling"] + cross + e2e
    # The student at N: its own index kind when the scaling stage timed it, else flat.
    kind = t["student"]["index"] if any(r["method"] == f"student_{t['student']['index']}" for r in scaling) else "flat"
    student = {n: _p50(rows, f"student_{kind}_e2e", n) for n in (1000, 5000, 100000)}
    teacher_p50 = {n: _p50(rows, "teacher", n) for n in (5000, 100000)}
    cross_p50 = {n: _p50(rows, "cross_encoder", n) for n in (1000, 5000)}
    summary = {
        "speedup_cross_vs_student_1k": _ratio(cross_p50[1000], student[1000]),
        "speedup_cross_vs_student_5k": _ratio(cross_p50[5000], t["student"]["p50_ms"]),
        "speedup_teacher_vs_student_5k": _ratio(teacher_p50[5000], t["student"]["p50_ms"]),
        "speedup_teacher_vs_student_100k": _ratio(teacher_p50[100000], student[100000]),
        "two_stage_latency_vs_student": t["two_stage"]["p50_ms"] / t["student"]["p50_ms"],
        "two_stage_latency_vs_teacher_5k": _ratio(t["two_stage"]["p50_ms"], teacher_p50[5000]),
        "two_stage_rsum_vs_teacher": evaluation["summary"]["two_stage_rsum_vs_teacher"],
        "two_stage_rsum_vs_student": evaluation["summary"]["two_stage_rsum_vs_student"],
    }
    approx_100k = _p50(rows, f"student_{cfg.scaling_kind}_e2e", 100000)
    targets = {
        "student_5k_vs_text_encoder": _check(t["student"]["p50_ms"] / t["encoder_only"]["p50_ms"], 1.25),
        f"student_100k_{cfg.scaling_kind}_vs_1k_flat": _check(_ratio(approx_100k, student[1000]), 1.5),
        "two_stage_rsum_vs_teacher": _check(summary["two_stage_rsum_vs_teacher"], 0.99, at_least=True),
        "two_stage_vs_student_latency": _check(summary["two_stage_latency_vs_student"], 1.5),
    }
    conventions = {
        "timing": "wall clock per query after warm-up, raw input to ranked ids, "
                  f"{cfg.threads} thread(s) for torch and faiss",
        "scaling": "search alone (query embedded) on synthetic clustered unit vectors of the student's width; "
                   f"*_e2e rows add the end-to-end overhead measured on the test collection ({overhead:.2f} ms: "
                   "backbone, student, ids)",
        "teacher": f"exhaustive scoring timed on a fixed sample of {cfg.teacher_queries} queries; past the test "
                   "set it rescores the real set chunk by chunk",
        "cross_encoder": f"one joint pass per (query, image) pair, timed on a fixed sample of {cfg.cross_queries} "
                         "queries, real test images only",
        "image_queries": "decoded test images (PIL), resized and encoded by the vision backbone"}
    return {"text": t, "image": im, "summary": summary, "targets": targets, "conventions": conventions,
            "scaling": rows, "index_kinds": system["index_kinds"], "rerank": system["rerank"]}


def efficiency_points(report: dict[str, Any], depths: list[dict[str, Any]], evaluation: dict[str, Any],
                      scaling: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The paper's efficiency-vs-effectiveness figure: one point per method, rsum under the 1K
    protocol against the p50 latency of a text query on the whole test collection (5K).

    1K rsum is the mean over the five folds, except for the cross-encoder rows, which are scored
    on fold 0 (sampled queries for the exhaustive one); the `protocol` column says which (a test
    set smaller than 5K has only its full-set key). The student without distillation has the
    student's architecture, so its latency.
    """
    n = evaluation["protocol"]["n_images"]
    key = "1k" if "1k" in evaluation["teacher"] else full_key(n)
    student_ms = report["text"]["student"]["p50_ms"]
    pts = [{"method": "student", "rsum": evaluation["student"][key]["rsum"], "p50_ms": student_ms},
           {"method": "student_triplet", "rsum": evaluation["student_triplet"][key]["rsum"], "p50_ms": student_ms},
           {"method": "teacher", "rsum": evaluation["teacher"][key]["rsum"], "p50_ms": _p50(scaling, "teacher", n)}]
    pts += [{"method": f"two_stage_k{int(d['rerank_k'])}", "rsum": d["rsum_1k"] if key == "1k" else d["rsum"],
             "p50_ms": d["e2e_p50_ms"]} for d in depths]
    pts = [{**p, "protocol": key} for p in pts]
    if "cross_encoder" in evaluation:
        k = evaluation["cross_rerank"]["rerank_k"]
        pts += [{"method": "cross_encoder", "rsum": evaluation["cross_encoder"]["fold0_sampled"]["rsum"],
                 "p50_ms": _p50(scaling, "cross_encoder", n), "protocol": "fold0_sampled"},
                {"method": f"cross_rerank_k{k}", "rsum": evaluation["cross_rerank"]["fold0"]["rsum"],
                 "p50_ms": _p50(scaling, "cross_rerank", n), "protocol": "fold0"}]
    return [p for p in pts if p["p50_ms"] is not None]


def latency_headline(report: dict[str, Any]) -> dict[str, float]:
    """The speed figures an experiment is compared by (MLflow parent run, metrics/headline.json):
    the summary's ratios and the student's and two-stage's p50 per text query."""
    return ({f"latency_{k}": v for k, v in report["summary"].items() if v is not None}
            | {"latency_student_p50_ms": report["text"]["student"]["p50_ms"],
               "latency_two_stage_p50_ms": report["text"]["two_stage"]["p50_ms"]})
