"""Stage `latency_scaling`: index search alone as the collection grows (synthetic clustered
vectors of the student's width) -> metrics/latency_scaling.json. Depends on the index params
and the embedding width only."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from aladin import params
from aladin.io import write_json
from aladin.latency.scaling import scaling_latency
from aladin.runtime import run_stage, set_threads
from aladin.store import open_split

FEATURES, OUT = Path("features"), Path("metrics/latency_scaling.json")


def main() -> None:
    cfg, index, distill = params.load("latency"), params.load("index"), params.load("distill")
    dim = distill.codebook.codes if distill.student == "codebook" else distill.model.dim     # the student's D
    set_threads(cfg.threads)
    store = open_split(FEATURES, "test")
    words = max(int(round(float(np.mean(store.token_counts)))) - 2, 1)       # per caption, [CLS] [SEP] aside
    rows = scaling_latency(dim, store.n_captions // store.n_images, index.index, cfg, params.seed(), words)
    write_json(OUT, {"rows": rows})


if __name__ == "__main__":
    run_stage(main)
