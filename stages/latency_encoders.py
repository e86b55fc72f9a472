"""Stage `latency_encoders`: the bare backbones on one raw query (the floor of every method's
latency) -> metrics/latency_encoders.json. Depends on the backbones and the test queries only."""
from __future__ import annotations

from pathlib import Path

from aladin import params
from aladin.features import store_backbones
from aladin.io import write_json
from aladin.latency.encoders import encoder_latency
from aladin.latency.queries import latency_queries, test_image_files
from aladin.runtime import resolve_device, run_stage, set_threads
from aladin.store import open_split

FEATURES, OUT = Path("features"), Path("metrics/latency_encoders.json")


def main() -> None:
    cfg = params.load("latency")
    set_threads(cfg.threads)
    store = open_split(FEATURES, "test")
    texts, images = latency_queries(store, test_image_files(store), cfg, params.seed())
    text_backbone, vision_backbone = store_backbones(store, resolve_device(cfg.device))
    write_json(OUT, encoder_latency(text_backbone, vision_backbone, texts, images, cfg))


if __name__ == "__main__":
    run_stage(main)
