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
# knee qDESS rows 300-415 (array axis j) are held out; rows 0-279 were used for training
python - "$data" "$held" <<'PY'
import sys
import SimpleITK as sitk
data, held = sys.argv[1:]
knee = sitk.ReadImage(f"{data}/knee_qdess_echo1_sag_0p31x0p31x1p5.nii.gz")
sitk.WriteImage(knee[:, 300:416, :], f"{held}/knee_qdess_heldout_rows300-415.nii.gz", True)
PY
ln -s "$(realpath "$data")/knee_fair_T_1mm.nii.gz" "$held/"
ln -s "$(realpath "$data")/brain_mni152_2009a_sym_t1_1mm.nii.gz" "$held/"
models=()
for name in $(python -c "import json; print(' '.join(json.load(open('Resources/Models/models.json'))['models']))"); do
  models+=(--model "$name=$name")
done
sainr evaluate "$held"/*.nii.gz "${models[@]}" --factors 2 3 4 --crop 128 --max-slices 8 \
  --out docs/evaluation "$@"
