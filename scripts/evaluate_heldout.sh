#!/usr/bin/env bash
# Reproduce the model card's evaluation: the shipped models vs linear and B-spline interpolation
# on the VALIDATION volumes held out from training (see configs/default.toml and
# configs/thick.toml; decisions were made on them: scripts/evaluate_test.sh is the test set),
# written to docs/evaluation/: every volume at x2/x3/x4 with pure decimation and with contiguous
# thick slices (Gaussian and box profiles, thickness = spacing), figures for the Gaussian case.
# Needs the development data folder (default ../shared/data); further arguments go to
# `sainr evaluate` (e.g. --model thick=runs/thick/last.pt, --adapt-steps 50).
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
rm -f docs/evaluation/figure_*.png
sainr evaluate "$held"/*.nii.gz "${models[@]}" --factors 2 3 4 --profiles none gaussian box \
  --figures gaussian --crop 128 --max-slices 8 --out docs/evaluation \
  --note "VALIDATION volumes (decisions were made on them): knee qDESS (training subject, held-out rows 300-415), knee FAIR (other scanner and subject), brain MNI152 (an average of 152 subjects)" "$@"
