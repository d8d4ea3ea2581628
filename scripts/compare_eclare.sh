#!/usr/bin/env bash
# SA-INR vs ECLARE (Remedios et al., PyPI `eclare`: a network trained per volume on its own
# in-plane data) on the held-out volumes of scripts/evaluate_heldout.sh, at x3 and x4, written
# to docs/evaluation/eclare/ (results.md, results.csv, figures). Methods: linear, B-spline, the
# shipped default model, the default model adapted per case (sainr.train.adapt), the self-supervised
# model when its checkpoint is given, ECLARE. See docs/evaluation/eclare/README.md.
#
# Usage: bash scripts/compare_eclare.sh [SELFSUP_WEIGHTS] [DATA] [-- extra `sainr evaluate` options]
#   SELFSUP_WEIGHTS  self-supervised checkpoint (e.g. runs/selfsup/sainr/last.pt; '' for none)
#   DATA             the shared data folder (default ../shared/data)
# Budget (environment): CROP=64 (in-plane centre crop), ECLARE_PATCHES=2048, ECLARE_BATCH=8
# (256 ECLARE steps per case), ADAPT_STEPS=200; OUT=docs/evaluation/eclare.
# About 20 min on a free 2-core CPU with these defaults (estimate from measured per-component
# costs, see the README); the first run also sets up .venv-bench (ECLARE lives only there:
# it is never a dependency of the extension).
set -euo pipefail
cd "$(dirname "$0")/.."
selfsup=${1:-}
data=${2:-../shared/data}
shift $(($# < 2 ? $# : 2))
[ "${1:-}" = "--" ] && shift
crop=${CROP:-64} patches=${ECLARE_PATCHES:-2048} batch=${ECLARE_BATCH:-8}
steps=${ADAPT_STEPS:-200} out=${OUT:-docs/evaluation/eclare}
bench=.venv-bench
start=$SECONDS

if ! { [ -x "$bench/bin/sainr" ] && "$bench/bin/python" -c "import eclare, skimage" 2>/dev/null; }; then
  echo "setting up $bench (torch 2.13.0 CPU, eclare 1.0.1, sainr editable)" >&2
  python3 -m venv "$bench"
  # torch first and pinned: eclare asks for torch>=2.5, and an unpinned torch would pull CUDA
  "$bench/bin/pip" install -q torch==2.13.0
  "$bench/bin/pip" install -q torch==2.13.0 eclare==1.0.1
  "$bench/bin/pip" install -q -e ".[train]" scikit-image pytest
fi

held=$(mktemp -d)
trap 'rm -rf "$held"' EXIT
"$bench/bin/python" scripts/prepare_heldout.py "$data" "$held"

models=(--model default=default)
if [ -n "$selfsup" ]; then
  if [ -f "$selfsup" ]; then
    models+=(--model "selfsup=$selfsup")
  else
    echo "note: no self-supervised checkpoint at $selfsup; comparing without it" >&2
  fi
fi
"$bench/bin/sainr" evaluate "$held"/*.nii.gz "${models[@]}" --factors 3 4 --crop "$crop" \
  --max-slices 8 --adapt-steps "$steps" --adapt-models default \
  --eclare --eclare-patches "$patches" --eclare-batch-size "$batch" --out "$out" "$@"
echo "compare_eclare: $((SECONDS - start)) s in all" >&2
