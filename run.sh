#!/usr/bin/env bash
# Run the whole ALADIN pipeline on the embedded default dataset:
# installs into .venv, makes sure git + DVC are initialised, then `dvc repro`, and ends on the
# results table of this run (every figure: `dvc metrics show`; experiments: README "Results").
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh
if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git init -q && git add -A && git -c user.name=aladin -c user.email=aladin@localhost commit -qm "initial commit"
fi
if ! git rev-parse HEAD >/dev/null 2>&1; then
    git add -A && git -c user.name=aladin -c user.email=aladin@localhost commit -qm "initial commit"
fi
[ -d .dvc ] || dvc init -q
dvc repro "$@"
python scripts/results_table.py --headline
