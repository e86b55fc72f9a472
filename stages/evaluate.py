"""Stage `evaluate`: test-set retrieval metrics of every method -> metrics/eval.json.

Rows (each under '5k' = whole test set and '1k' = mean of 5 folds of 1,000 images):

- teacher, student_triplet  from their own stages (metrics/eval_<name>.json: scored once per model);
- oracle           the ceiling, from its own stage (metrics/eval_oracle.json: once per dataset);
- student          the distilled student searched through the configured faiss index (index/),
                   with the index's recall of the exact flat top-10 when it is approximate;
- student_exact    the same embeddings, exhaustive dot products (what the index approximates);
- two_stage        student top-`rerank_k` from the index, re-ordered by the teacher's scores
                   (scores/teacher_test.npy);
- cross_encoder    the cross-attention baseline (when the `cross` stage trained it), on fold 0 (the
                   first 1,000 test images) for a fixed query sample ('fold0_sampled'; teacher and
                   student are scored on the same queries), and as a re-ranker of the student's
                   top-`cross_rerank_k` for every fold-0 query ('fold0').

Ranks past a top-k list: see aladin/evaluation.py (R@K exact up to k; exhaustive rank beyond).
Also writes plots/rerank_quality.csv: 5K metrics of two-stage per depth.
"""
from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from aladin import params
from aladin.models.factory import load_cross
from aladin.errors import DataError
from aladin.evaluation.protocols import evaluate_system, headline_metrics
from aladin.retrieval.index import load_index_dir
from aladin.io import atomic_path, load_array, read_json, write_json
from aladin.evaluation.metrics import protocol_description
from aladin.runtime import resolve_device, run_stage, set_threads
from aladin.store import open_split
from aladin.tracking import mlflow_run

log = logging.getLogger("aladin")
DATA, FEATURES, INDEX, METRICS = Path("data"), Path("features"), Path("index"), Path("metrics")
TEACHER_SCORES, STUDENT, CROSS = Path("scores/teacher_test.npy"), Path("models/student.pt"), Path("models/cross.pt")
OUT, DEPTHS_CSV = METRICS / "eval.json", Path("plots/rerank_quality.csv")


def main() -> None:
    p = params.load("evaluate")
    seed, tracking = params.seed(), params.load("tracking")
    set_threads(p.threads)
    device = resolve_device(p.device)
    store = open_split(FEATURES, "test")
    idx = load_index_dir(INDEX, model_path=STUDENT)
    if (len(idx.image_emb), len(idx.caption_emb)) != (store.n_images, store.n_captions):
        raise DataError(f"{INDEX}: built over another test set than {store.path}; rerun the index stage")
    fixed = {name: read_json(METRICS / f"eval_{name}.json")[name] for name in ("teacher", "student_triplet")}
    oracle = read_json(METRICS / "eval_oracle.json").get("oracle")
    teacher_scores = load_array(TEACHER_SCORES)
    rows, depths = evaluate_system(idx, store, teacher_scores, fixed, oracle, load_cross(CROSS, device), p, seed,
                                   device, DATA)
    rows["protocol"] = {"n_images": store.n_images, "n_captions": store.n_captions,
                        **protocol_description(store.n_images),
                        "ranks_past_top_k": "max(k+1, exhaustive student rank)",
                        "medr": "floor of the median rank"}
    with mlflow_run("evaluate", {"evaluate": asdict(p), "index": asdict(idx.cfg), "seed": seed}, tracking) as run:
        write_json(OUT, rows)
        with atomic_path(DEPTHS_CSV) as tmp:
            pd.DataFrame(depths).to_csv(tmp, index=False)
        run.log_metrics({k: v for k, v in rows.items() if k != "protocol"})
        run.log_headline(headline_metrics(rows))
        run.log_artifact(OUT)
        run.log_artifact(DEPTHS_CSV)
    for name, row in rows.items():
        figures = [f"{key} rsum {m['rsum']:6.1f}" for key, m in row.items() if isinstance(m, dict) and "rsum" in m]
        if figures:
            log.info("%-16s %s", name, "  ".join(figures))


if __name__ == "__main__":
    run_stage(main)
