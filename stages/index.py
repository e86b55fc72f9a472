"""Stage `index`: models/student.pt + features/test -> index/ (faiss indexes over the student's
test image embeddings (text queries) and caption embeddings (image queries), the embeddings
themselves, and manifest.json tying them to the checkpoint, the features and the params)."""
from __future__ import annotations

import dataclasses
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faiss  # noqa: E402

from aladin.config import load_section, require, shared_seed  # noqa: E402
from aladin.encode import encode_images, encode_texts  # noqa: E402
from aladin.index import IndexConfig, save_index_dir, sha256_file  # noqa: E402
from aladin.models.factory import load_model  # noqa: E402
from aladin.runtime import resolve_device, run_stage, set_threads  # noqa: E402
from aladin.store import open_split  # noqa: E402

log = logging.getLogger("aladin")
FEATURES, STUDENT, OUT = Path("features"), Path("models/student.pt"), Path("index")


@dataclass(frozen=True)
class IndexParams(IndexConfig):
    batch_size: int = 256        # student encoding batch
    device: str = "auto"

    def validate(self) -> None:
        super().validate()
        require(self.batch_size > 0, "batch_size", "must be > 0")

    @property
    def index(self) -> IndexConfig:
        return IndexConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(IndexConfig)})


def main() -> None:
    p = load_section(IndexParams, "index")
    seed = shared_seed()
    set_threads(p.threads)
    faiss.omp_set_num_threads(p.threads)
    device = resolve_device(p.device)
    store = open_split(FEATURES, "test")
    student = load_model(STUDENT, device, kind="matching")
    image_emb = encode_images(student, store, batch_size=p.batch_size)
    caption_emb = encode_texts(student, store, batch_size=p.batch_size)
    t0 = time.perf_counter()
    provenance = {
        "model": {"path": str(STUDENT), "sha256": sha256_file(STUDENT)},
        "features": {"path": str(store.path), "manifest_sha256": sha256_file(store.path / "manifest.json")},
    }
    save_index_dir(OUT, image_emb, caption_emb, p.index, seed, provenance)
    log.info("index: %s over %d images and %d captions (dim %d) in %.1f s", p.kind, len(image_emb),
             len(caption_emb), image_emb.shape[1], time.perf_counter() - t0)


if __name__ == "__main__":
    run_stage(main)
