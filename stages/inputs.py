"""Stage `inputs`, the first of the DAG (always run): checks every section of params.yaml, then
fingerprints the files outside the repo that it names -> inputs/data.json (the selected dataset
source), inputs/features.json (the backbones) and inputs/external.yaml (the files DVC hashes
itself, dvc.yaml's `external` stages).

DVC deletes a stage's outputs just before running it: a bad value in any section must stop the
pipeline here, before the stage that reads it has lost what the user had (this stage's own
outputs persist, dvc.yaml)."""
from __future__ import annotations

from pathlib import Path

from aladin import params
from aladin.inputs import data_inputs, feature_inputs, write_external
from aladin.io import write_json
from aladin.runtime import run_stage

OUT = Path("inputs")


def main() -> None:
    params.validate_all()
    data, features = data_inputs(params.load("data")), feature_inputs(params.load("features"))
    write_json(OUT / "data.json", data)
    write_json(OUT / "features.json", features)
    write_external(OUT / "external.yaml", data, features)


if __name__ == "__main__":
    run_stage(main)
