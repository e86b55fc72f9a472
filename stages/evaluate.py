"""Stage `evaluate`: test-set retrieval metrics of every method -> metrics/eval.json.

Rows (each under '5k' = whole test set and '1k' = mean of 5 folds of 1,000 images):

- teacher          exhaustive alignment scoring (the score matrix is computed once, both directions);
- student          the distilled student searched through the configured faiss index (index/),
                   with the index's recall of the exact flat top-10 when it is approximate;
- student_exact    the same embeddings, exhaustive dot products (what the index approximates);
- student_triplet  the triplet-only student (no distillation), exhaustive dot products;
- two_stage        student top-`rerank_k` from the index, re-ordered by the teacher's scores;
- cross_encoder    the cross-attention baseline (when the `cross` stage trained it). One transformer
                   pass per pair makes the 1K/5K protocols unaffordable on a CPU, so it is scored
                   on fold 0 (the first 1,000 test images) for a fixed query sample
                   ('fold0_sampled'; teacher and students are scored on the same queries), and as
                   a re-ranker of the student's top-`cross_rerank_k` for every fold-0 query
                   ('fold0', beside two-stage and the student on the same fold).

Ranks past a top-k list: see aladin/evaluation.py (R@K exact up to k; exhaustive rank beyond).
Also writes plots/rerank_quality.csv: 5K metrics of two-stage per depth.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faiss  # noqa: E402
import pandas as pd  # noqa: E402

from aladin import evaluation as E  # noqa: E402
from aladin.config import load_section, require, shared_seed  # noqa: E402
from aladin import cross_eval  # noqa: E402
from aladin.datasets import eccv_metrics, load_coco_ids  # noqa: E402
from aladin.encode import encode_images, encode_texts  # noqa: E402
from aladin.errors import DataError  # noqa: E402
from aladin.index import load_index_dir  # noqa: E402
from aladin.io import atomic_path, write_json  # noqa: E402
from aladin.metrics import captions_per_image, full_key, summarize  # noqa: E402
from aladin.models.factory import load_model  # noqa: E402
from aladin.runtime import resolve_device, run_stage, set_threads  # noqa: E402
from aladin.scoring import score_store  # noqa: E402
from aladin.store import open_split  # noqa: E402
from aladin.tracking import TrackingConfig, mlflow_run  # noqa: E402

log = logging.getLogger("aladin")
DATA, FEATURES, INDEX = Path("data"), Path("features"), Path("index")
TEACHER, STUDENT, TRIPLET = Path("models/teacher.pt"), Path("models/student.pt"), Path("models/student_triplet.pt")
CROSS = Path("models/cross.pt")
OUT, DEPTHS_CSV = Path("metrics/eval.json"), Path("plots/rerank_quality.csv")
K = 10                           # student top-k for the index row: R@1/5/10 need 10


@dataclass
class EvaluateParams:
    rerank_k: int = 20                                                  # two-stage candidates per query
    rerank_depths: list[int] = field(default_factory=lambda: [5, 10, 20, 50, 100])   # trade-off sweep, 5K
    chunk_mb: float = 2.0                                               # teacher similarity block (cache-sized is fastest)
    batch_size: int = 256
    cross_fold_images: int = 1000                                       # cross-encoder: fold 0 size
    cross_text_queries: int = 100                                       # sampled, each vs the fold's images
    cross_image_queries: int = 20                                       # sampled, each vs the fold's captions
    cross_rerank_k: int = 10                                            # student candidates re-ranked, fold 0
    device: str = "auto"
    threads: int = 0                                                    # 0 = torch's default

    def validate(self) -> None:
        require(self.rerank_k >= K, "rerank_k", f"must be >= {K} (R@10 is read from the re-ranked list)")
        require(all(d > 0 for d in self.rerank_depths), "rerank_depths", "must be > 0")
        require(self.chunk_mb > 0 and self.batch_size > 0, "chunk_mb", "chunk_mb and batch_size must be > 0")
        require(self.threads >= 0, "threads", "must be >= 0")
        require(self.cross_fold_images > 0, "cross_fold_images", "must be > 0")
        require(self.cross_rerank_k >= K, "cross_rerank_k", f"must be >= {K}")


def main() -> None:
    p = load_section(EvaluateParams, "evaluate")
    seed, tracking = shared_seed(), load_section(TrackingConfig, "tracking")
    set_threads(p.threads)
    if p.threads:
        faiss.omp_set_num_threads(p.threads)
    device = resolve_device(p.device)
    store = open_split(FEATURES, "test")
    cap_img = store.caption_image
    idx = load_index_dir(INDEX, model_path=STUDENT)
    if (len(idx.image_emb), len(idx.caption_emb)) != (store.n_images, store.n_captions):
        raise DataError(f"{INDEX}: built over another test set than {store.path}; rerun the index stage")
    rows: dict[str, dict] = {}
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    teacher_scores = score_store(load_model(TEACHER, device, kind="alignment"), store, device, p.chunk_mb)
    teacher_scores = teacher_scores.numpy() if hasattr(teacher_scores, "numpy") else teacher_scores
    seconds["teacher_scoring"] = time.perf_counter() - t0
    rows["teacher"] = E.exhaustive_metrics(teacher_scores, cap_img)

    retrieval = E.IndexedRetrieval(idx.image_emb, idx.caption_emb, idx.cfg, seed, full=(idx.images, idx.captions))
    rows["student"] = E.protocol(E.index_rank_fn(retrieval, cap_img, K), cap_img)
    rows["student"]["index"] = idx.cfg.kind
    if idx.cfg.kind != "flat":
        rows["student"].update(E.index_recall(retrieval, K))
    student_scores = idx.image_emb @ idx.caption_emb.T
    rows["student_exact"] = E.exhaustive_metrics(student_scores, cap_img)

    triplet = load_model(TRIPLET, device, kind="matching")
    t_img = encode_images(triplet, store, batch_size=p.batch_size)
    t_cap = encode_texts(triplet, store, batch_size=p.batch_size)
    triplet_scores = t_img @ t_cap.T
    rows["student_triplet"] = E.exhaustive_metrics(triplet_scores, cap_img)

    scorers = E.matrix_scorers(teacher_scores)
    t0 = time.perf_counter()
    rows["two_stage"] = E.protocol(E.two_stage_rank_fn(retrieval, cap_img, p.rerank_k, *scorers), cap_img)
    rows["two_stage"]["rerank_k"] = p.rerank_k
    full = (slice(0, store.n_images), slice(0, store.n_captions))
    depths = [{"rerank_k": d, **summarize(*E.two_stage_rank_fn(retrieval, cap_img, d, *scorers)(*full))}
              for d in sorted(set(p.rerank_depths))]
    seconds["two_stage"] = time.perf_counter() - t0

    cross = cross_eval.load_cross(CROSS, device)
    if cross is not None:
        t0 = time.perf_counter()
        n = min(p.cross_fold_images, store.n_images)
        args = (n, p.cross_text_queries, p.cross_image_queries, seed)
        rows["cross_encoder"] = {"fold0_sampled": cross_eval.exhaustive_metrics(cross, store, device, *args)}
        cap_q, img_q = cross_eval.subsample_queries(store, *args)
        for name, scores in (("teacher", teacher_scores), ("student_exact", student_scores),
                        ("student_triplet", triplet_scores)):
            rows[name]["fold0_sampled"] = cross_eval.sampled_metrics(scores, store, n, cap_q, img_q)
        fold0 = (slice(0, n), slice(0, n * captions_per_image(cap_img, store.n_images)))
        k = p.cross_rerank_k
        rows["cross_rerank"] = {"rerank_k": k, "fold0": summarize(*E.two_stage_rank_fn(
            retrieval, cap_img, k, *cross_eval.pair_scorers(cross, store, device))(*fold0))}
        rows["two_stage"]["fold0"] = summarize(*E.two_stage_rank_fn(retrieval, cap_img, k, *scorers)(*fold0))
        rows["student"]["fold0"] = summarize(*E.index_rank_fn(retrieval, cap_img, K)(*fold0))
        seconds["cross_encoder"] = time.perf_counter() - t0

    # MS-COCO with its caption ids (data.source karpathy + annotations): ECCV Caption and CxC metrics.
    coco = load_coco_ids(DATA, store.image_ids, captions_per_image(cap_img, store.n_images))
    if coco is not None:
        for name, scores in (("teacher", teacher_scores), ("student_exact", student_scores)):
            rows[name]["eccv"] = eccv_metrics(scores, *coco)

    fk = full_key(store.n_images)
    teacher_rsum = rows["teacher"][fk]["rsum"]
    summary = {   # on the whole test set
        "two_stage_rsum_vs_teacher": rows["two_stage"][fk]["rsum"] / teacher_rsum,
        "student_rsum_vs_teacher": rows["student"][fk]["rsum"] / teacher_rsum,
        "two_stage_rsum_vs_student": rows["two_stage"][fk]["rsum"] / rows["student"][fk]["rsum"],
    }
    result = {**rows, "summary": summary,
              "protocol": {"n_images": store.n_images, "n_captions": store.n_captions,
                           "1k": "mean of 5 folds of 1,000 images (each fold its own collection)",
                           "ranks_past_top_k": "max(k+1, exhaustive student rank)",
                           "medr": "floor of the median rank"},
              "seconds": {k: round(v, 1) for k, v in seconds.items()}}
    with mlflow_run("evaluate", {"evaluate": asdict(p), "index": asdict(idx.cfg), "seed": seed}, tracking) as run:
        write_json(OUT, result)
        with atomic_path(DEPTHS_CSV) as tmp:
            pd.DataFrame(depths).to_csv(tmp, index=False)
        run.log_metrics({k: v for k, v in result.items() if k not in ("protocol",)})
        run.log_artifact(OUT)
        run.log_artifact(DEPTHS_CSV)
    for name, row in rows.items():
        if fk in row:
            log.info("%-16s %s rsum %6.1f  1K rsum %6.1f", name, fk, row[fk]["rsum"],
                     row.get("1k", {}).get("rsum", float("nan")))


if __name__ == "__main__":
    run_stage(main)
