"""Stage `evaluate_oracle`: the ceiling row, the caption parser's verdict on every test pair used as
scores (aladin.evaluation.protocols.oracle_row) -> metrics/eval_oracle.json. It depends on the test data
alone, so it runs once per dataset; on a dataset without scene records (MS-COCO) the file is `{}`.
"""
from __future__ import annotations

import logging
from pathlib import Path

from aladin.evaluation.protocols import oracle_row, test_scenes
from aladin.io import write_json
from aladin.runtime import run_stage
from aladin.store import open_split

log = logging.getLogger("aladin")
DATA, FEATURES, OUT = Path("data"), Path("features"), Path("metrics/eval_oracle.json")


def main() -> None:
    store = open_split(FEATURES, "test")
    scenes = test_scenes(DATA, store)
    if scenes is None:
        log.info("no scene records in %s: no oracle row", DATA)
        write_json(OUT, {})
        return
    row = oracle_row(store, scenes)
    write_json(OUT, {"oracle": row})
    log.info("oracle: %s", ", ".join(f"{key} rsum {m['rsum']:.1f}" for key, m in row.items() if "rsum" in m))


if __name__ == "__main__":
    run_stage(main)
