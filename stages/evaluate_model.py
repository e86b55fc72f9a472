"""Stages `evaluate_teacher` / `evaluate_triplet`: one model's exhaustive test scores, computed
once per model -> metrics/eval_<name>.json (its 1K / 5K rows); the teacher's score matrix also
goes to scores/teacher_test.npy for two-stage re-ranking in the `evaluate` stage.

    python -m stages.evaluate_model teacher           # models/teacher.pt
    python -m stages.evaluate_model student_triplet   # models/student_triplet.pt
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from aladin import params
from aladin.evaluation.protocols import exhaustive_row, model_test_scores, test_scenes
from aladin.io import atomic_path, write_json
from aladin.runtime import resolve_device, run_stage, set_threads
from aladin.store import open_split

log = logging.getLogger("aladin")
DATA, FEATURES, MODELS, SCORES = Path("data"), Path("features"), Path("models"), Path("scores")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", choices=["teacher", "student_triplet"])
    name = parser.parse_args().name
    p = params.load("evaluate")
    set_threads(p.threads)
    store = open_split(FEATURES, "test")
    t0 = time.perf_counter()
    scores = model_test_scores(MODELS / f"{name}.pt", store, resolve_device(p.device), p.chunk_mb, p.batch_size)
    seconds = time.perf_counter() - t0
    row = exhaustive_row(scores, store, DATA, test_scenes(DATA, store))
    if name == "teacher":
        with atomic_path(SCORES / "teacher_test.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(scores, dtype=np.float32))
    write_json(Path("metrics") / f"eval_{name}.json", {name: row, "seconds": round(seconds, 1)})
    log.info("%s: exhaustive test scores in %.1f s; %s", name, seconds,
             ", ".join(f"{key} rsum {m['rsum']:.1f}" for key, m in row.items() if "rsum" in m))


if __name__ == "__main__":
    run_stage(main)
