"""Stage `headline`: the figures an experiment is compared by -> metrics/headline.json, under one
`headline` key so that `dvc exp show` can be limited to them (README "Results"): every row's rsum
per protocol, the rsum ratios, within-family R@1 and text->image recall against the oracle
(metrics/eval.json), the latency ratios and p50s (metrics/latency.json). The same figures as each
MLflow parent run's metrics."""
from __future__ import annotations

from pathlib import Path

from aladin.evaluation.protocols import headline_metrics
from aladin.io import read_json, write_json
from aladin.latency.report import latency_headline
from aladin.runtime import run_stage

METRICS = Path("metrics")


def main() -> None:
    figures = headline_metrics(read_json(METRICS / "eval.json")) | latency_headline(read_json(METRICS / "latency.json"))
    write_json(METRICS / "headline.json", {"headline": figures})


if __name__ == "__main__":
    run_stage(main)
