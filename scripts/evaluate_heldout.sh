#!/usr/bin/env bash
# Reproduce the model card's evaluation: the shipped models vs linear and B-spline interpolation
# on the volumes held out from training (see configs/default.toml), written to docs/evaluation/.
# Needs the development data folder (default ../shared/data); further arguments go to
# `sainr evaluate` (e.g. --model fast_nolasa=runs/fast_nolasa/best.pt for the ablation).
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data}
shift || true
held=$(mktemp -d)
trap 'rm -rf "$held"' EXIT
source .venv/bin/activate
python scripts/prepare_heldout.py "$data" "$held"
models=()
for name in $(python -c "import json; print(' '.join(json.load(open('Resources/Models/models.json'))['models']))"); do
  models+=(--model "$name=$name")
done
sainr evaluate "$held"/*.nii.gz "${models[@]}" --factors 2 3 4 --crop 128 --max-slices 8 \
  --out docs/evaluation "$@"
