"""Stage `inputs`: fingerprints of the files outside the repo that params.yaml names ->
inputs/data.json (the selected dataset source) and inputs/features.json (the backbones)."""
from __future__ import annotations

from pathlib import Path

from aladin import params
from aladin.inputs import data_inputs, feature_inputs
from aladin.io import write_json
from aladin.runtime import run_stage

OUT = Path("inputs")


def main() -> None:
    write_json(OUT / "data.json", data_inputs(params.load("data")))
    write_json(OUT / "features.json", feature_inputs(params.load("features")))


if __name__ == "__main__":
    run_stage(main)
