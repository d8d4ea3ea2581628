#!/usr/bin/env bash
# README command 2: set up, then run the whole test suite (core, CLI, Slicer Logic on real MRML)
# and the linter.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source .venv/bin/activate
ruff check SAINRSlicer Testing scripts
python -m pytest -q "$@"
