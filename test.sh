#!/usr/bin/env bash
# Run the test suite (installs into .venv first).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh
python -m pytest "$@"
