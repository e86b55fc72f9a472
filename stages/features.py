"""Stage `features`: data/dataset.json -> features/{train,val,test} (region and token feature stores)."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aladin.config import load_section  # noqa: E402
from aladin.errors import AladinError, ConfigError  # noqa: E402
from aladin.features import FeaturesConfig, extract_features  # noqa: E402
from aladin.runtime import resolve_device, run_stage  # noqa: E402

DATASET = Path("data/dataset.json")
OUT = Path("features")


def main() -> None:
    cfg = load_section(FeaturesConfig, "features")
    try:
        device = resolve_device(cfg.device)
    except AladinError as e:
        raise ConfigError(f"features.{e}") from None
    extract_features(cfg, DATASET, OUT, device)
    logging.getLogger("aladin").info("wrote %s/", OUT)


if __name__ == "__main__":
    run_stage(main)
