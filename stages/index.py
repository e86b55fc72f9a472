"""Stage `index`: models/student.pt + features/test -> index/ (faiss indexes over the student's
test image embeddings (text queries) and caption embeddings (image queries), the embeddings
themselves, and manifest.json tying them to the checkpoint, the features and the params)."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import faiss

from aladin import params
from aladin.retrieval.encode import encode_images, encode_texts
from aladin.io import sha256_file
from aladin.retrieval.index import save_index_dir
from aladin.models.factory import STUDENTS, load_model
from aladin.runtime import resolve_device, run_stage, set_threads
from aladin.store import open_split

log = logging.getLogger("aladin")
FEATURES, STUDENT, OUT = Path("features"), Path("models/student.pt"), Path("index")


def main() -> None:
    p = params.load("index")
    set_threads(p.threads)
    faiss.omp_set_num_threads(p.threads)
    store = open_split(FEATURES, "test")
    student = load_model(STUDENT, resolve_device(p.device), kind=STUDENTS)
    image_emb = encode_images(student, store, batch_size=p.batch_size)
    caption_emb = encode_texts(student, store, batch_size=p.batch_size)
    t0 = time.perf_counter()
    provenance = {
        "model": {"path": str(STUDENT), "sha256": sha256_file(STUDENT)},
        "features": {"path": str(store.path), "manifest_sha256": sha256_file(store.path / "manifest.json")},
    }
    save_index_dir(OUT, image_emb, caption_emb, p.index, params.seed(), provenance)
    log.info("index: %s over %d images and %d captions (dim %d) in %.1f s", p.kind, len(image_emb),
             len(caption_emb), image_emb.shape[1], time.perf_counter() - t0)


if __name__ == "__main__":
    run_stage(main)
