"""Stage `latency_teacher`: exhaustive teacher search per query as the collection grows ->
metrics/latency_teacher.json. Runs once per teacher: a student ablation does not re-run it."""
from __future__ import annotations

from pathlib import Path

from aladin import params
from aladin.io import write_json
from aladin.latency.queries import latency_queries, test_image_files
from aladin.latency.teacher import teacher_latency
from aladin.retrieval.retriever import Retriever
from aladin.runtime import resolve_device, run_stage, set_threads

OUT = Path("metrics/latency_teacher.json")


def main() -> None:
    cfg = params.load("latency")
    set_threads(cfg.threads)
    retr = Retriever(student=None, device=resolve_device(cfg.device))
    texts, images = latency_queries(retr.store, test_image_files(retr.store), cfg, params.seed())
    write_json(OUT, teacher_latency(retr, texts, images, cfg))


if __name__ == "__main__":
    run_stage(main)
