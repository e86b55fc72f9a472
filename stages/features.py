"""Stage `features`: data/dataset.json -> features/{train,val,test} (region and token feature stores)."""
from __future__ import annotations

import logging
from pathlib import Path

from aladin import params
from aladin.errors import AladinError, ConfigError
from aladin.features import extract_features
from aladin.runtime import resolve_device, run_stage

DATASET = Path("data/dataset.json")
OUT = Path("features")


def main() -> None:
    cfg = params.load("features")
    try:
        device = resolve_device(cfg.device)
    except AladinError as e:
        raise ConfigError(f"features.{e}") from None
    extract_features(cfg, DATASET, OUT, device)
    logging.getLogger("aladin").info("wrote %s/", OUT)


if __name__ == "__main__":
    run_stage(main)
