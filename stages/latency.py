"""Stage `latency`: the search system end to end (raw query -> backbone -> student -> index
(-> teacher re-rank)) on the test collection, joined with the encoder, teacher and scaling
stages' measurements -> metrics/latency.json, plots/{latency_scaling,index_tradeoff,
rerank_tradeoff,efficiency}.csv, plots/latency.png and plots/efficiency.png (1K rsum against
latency, a point per method). Targets are checked and printed.
"""
from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from aladin import params
from aladin.models.factory import load_cross
from aladin.errors import DataError
from aladin.io import atomic_path, read_json, write_json
from aladin.latency.cross import cross_encoder_rows
from aladin.latency.plots import plot_efficiency, plot_report
from aladin.latency.queries import latency_queries, test_image_files
from aladin.latency.report import efficiency_points, latency_headline, latency_report
from aladin.latency.system import search_latency
from aladin.retrieval.retriever import Retriever
from aladin.runtime import resolve_device, run_stage, set_threads
from aladin.tracking import mlflow_run

log = logging.getLogger("aladin")
METRICS, PLOTS, CROSS = Path("metrics"), Path("plots"), Path("models/cross.pt")
RERANK_QUALITY = PLOTS / "rerank_quality.csv"


def main() -> None:
    cfg = params.load("latency")
    seed, tracking = params.seed(), params.load("tracking")
    set_threads(cfg.threads)
    evaluation = read_json(METRICS / "eval.json")
    if not RERANK_QUALITY.is_file():
        raise DataError(f"{RERANK_QUALITY}: not found (run the evaluate stage)")
    quality = pd.read_csv(RERANK_QUALITY)
    rerank_k = int(evaluation["two_stage"]["rerank_k"])
    device = resolve_device(cfg.device)
    retr = Retriever(device=device)
    texts, images = latency_queries(retr.store, test_image_files(retr.store), cfg, seed)
    system = search_latency(retr, texts, images, cfg, seed, rerank_k, quality["rerank_k"].tolist())
    cross = load_cross(CROSS, device)
    cross_rows = ([] if cross is None else
                  cross_encoder_rows(retr, cross, texts, cfg, int(evaluation["cross_rerank"]["rerank_k"])))
    report = latency_report(system, read_json(METRICS / "latency_encoders.json"),
                            read_json(METRICS / "latency_teacher.json"),
                            read_json(METRICS / "latency_scaling.json")["rows"], cross_rows, evaluation, cfg)
    depths = pd.DataFrame(report.pop("rerank")).rename(columns=lambda c: c if c == "rerank_k" else f"e2e_{c}")
    depths = depths.merge(quality, on="rerank_k")
    tables = {"latency_scaling": report.pop("scaling"), "index_tradeoff": report.pop("index_kinds"),
              "rerank_tradeoff": depths.to_dict("records")}
    tables["efficiency"] = efficiency_points(report, tables["rerank_tradeoff"], evaluation, tables["latency_scaling"])
    with mlflow_run("latency", {"latency": asdict(cfg), "seed": seed}, tracking) as run:
        write_json(METRICS / "latency.json", report)
        for name, rows in tables.items():
            with atomic_path(PLOTS / f"{name}.csv") as tmp:
                pd.DataFrame(rows).to_csv(tmp, index=False)
        plot_report({"scaling": tables["latency_scaling"], "index_kinds": tables["index_tradeoff"]},
                    tables["rerank_tradeoff"], PLOTS / "latency.png")
        plot_efficiency(tables["efficiency"], PLOTS / "efficiency.png")
        run.log_metrics({k: v for k, v in report.items() if k != "conventions"})
        run.log_headline(latency_headline(report))
        for f in (*(f"{name}.csv" for name in tables), "latency.png", "efficiency.png"):
            run.log_artifact(PLOTS / f)
    for name, tgt in report["targets"].items():
        print(f"target {name}: {tgt['value']} (limit {tgt['limit']}) -> "
              f"{'n/a' if tgt['ok'] is None else 'PASS' if tgt['ok'] else 'FAIL'}")
    for name, v in report["summary"].items():
        print(f"{name}: {v}")


if __name__ == "__main__":
    run_stage(main)
