#!/usr/bin/env bash
# README command 2: set up, then run the whole test suite (core, CLI, Slicer Logic on real MRML),
# the linter and the formatter check (`ruff format SAINRSlicer Testing scripts` fixes the latter).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source .venv/bin/activate
ruff check SAINRSlicer Testing scripts
ruff format --check SAINRSlicer Testing scripts
python -m pytest -q "$@"
