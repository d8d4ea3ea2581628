#!/usr/bin/env bash
# The TEST evaluation: the shipped models vs linear, B-spline and B-spline + Wiener on the test
# volumes of scripts/prepare_test.py (reported only, never used for a choice; decisions are made
# on the validation volumes of scripts/prepare_heldout.py). Every volume along index axis k
# (prepare_test puts the simulated slice axis there), x2/x3/x4, pure decimation and contiguous
# thick slices (Gaussian and box, thickness = spacing); each model told the true thickness and,
# as a user who gives none gets it, the thickness estimated from the image. Figures for the
# Gaussian case.
#
# Usage: scripts/evaluate_test.sh [DATA [OUT [sainr evaluate options...]]]
#   DATA: the development data folder (default ../shared/data); OUT: default docs/evaluation/test.
#   MODELS="default" restricts the models (default: every shipped one, Resources/Models/models.json).
#   Later options override (e.g. --crop 96 --max-slices 8 for a quick run).
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data}
out=${2:-docs/evaluation/test}
shift 2 || shift $# || true
test_dir=$(mktemp -d)
trap 'rm -rf "$test_dir"' EXIT
if [[ -z "${VIRTUAL_ENV:-}" ]]; then source .venv/bin/activate; fi
python scripts/prepare_test.py "$data" "$test_dir"
if [[ -z "${MODELS:-}" ]]; then
  MODELS=$(python -c "import json; print(' '.join(json.load(open('Resources/Models/models.json'))['models']))")
fi
models=()
for name in $MODELS; do
  models+=(--model "$name=$name")
done
mkdir -p "$out"
rm -f "$out"/figure_*.png
sainr evaluate "$test_dir"/*.nii.gz "${models[@]}" --axis 2 --factors 2 3 4 \
  --profiles none gaussian box --figures gaussian --crop 128 --max-slices 8 --no-ungated \
  --note "TEST volumes (reported only, never used for a choice): brain_pycortexS1 (single subject, new; native slice axis, 1 mm), knee_mese_te25_sag (knee subject A, new; simulated along its in-plane S-I axis, 0.625 mm), prostate_px0001_t2tse_tra (new subject; simulated along its in-plane L-R axis, 0.5 mm); prepared by scripts/prepare_test.py" \
  --out "$out" "$@"
