#!/usr/bin/env bash
# Self-supervised SA-INR on the development data WITHOUT thin-slice ground truth (method note §5):
#   (i)   thick-slice inputs            -> runs/selfsup/thick/
#   (ii)  stage I: slice VAE on their in-plane slices -> runs/selfsup/vae/vae.pt
#   (iii) synthetic thin-slice volumes  -> runs/selfsup/synthetic/ (+ _checks.json, _reformat.png)
#   (iv)  stage II: the supervised trainer, unchanged -> runs/selfsup/sainr/
# Heavy (tens of minutes on a 2-core CPU); re-running resumes both trainings.
# Usage: bash scripts/selfsupervised.sh [DATA]   (DATA: the shared data folder, default ../shared/data)
# VAE_STEPS and VAE_MINUTES (optional time budget) size stage I.
set -euo pipefail
cd "$(dirname "$0")/.."
data=$(realpath "${1:-../shared/data}")
run=runs/selfsup
source .venv/bin/activate
mkdir -p "$run/thick" "$run/synthetic/heldout"

# (i) knee qDESS rows 0-279 (the training rows of configs/default.toml) with every 2nd slice
# (1.5 -> 3.0 mm); the brain T1 with every 4th axial slice (0.88 -> 3.52 mm); the brain PD
# (2.4 mm) and T2w (2 mm) are real thick-slice acquisitions, used as they are.
python - "$data" "$run/thick" <<'PY'
import sys
from sainr.train.selfsup.synthesis import prepare_thick
data, thick = sys.argv[1:]
prepare_thick(f"{data}/knee_qdess_echo1_sag_0p31x0p31x1p5.nii.gz", f"{thick}/knee_qdess_3p0mm.nii.gz",
              keep_every=2, crop=[[], [0, 280], []])
prepare_thick(f"{data}/brain_chris_t1_0p88iso.nii.gz", f"{thick}/brain_chris_t1_3p5mm.nii.gz",
              keep_every=4, axis=2)
PY
ln -sfn "$data/brain_chris_pd_0p86x0p86x2p4.nii.gz" "$run/thick/brain_chris_pd_2p4mm.nii.gz"
ln -sfn "$data/brain_t2w_1x1x2.nii.gz" "$run/thick/brain_t2w_2mm.nii.gz"

# (ii) stage I: the VAE learns the in-plane slices of the thick volumes only
sainr train-vae "$run"/thick/*.nii.gz --out "$run/vae" --steps "${VAE_STEPS:-2000}" \
  ${VAE_MINUTES:+--max-minutes "$VAE_MINUTES"}

# (iii) synthetic thin slices (residual mode). Factor m per volume keeps the synthetic slice
# axis the one stage II decimates (the coarsest axis, or all axes when near-isotropic):
# knee 3.0 -> 0.75 mm, T1 3.52 -> 0.88 mm, PD 2.4 -> 0.8 mm, T2w 2.0 -> 1.0 mm.
for pair in knee_qdess_3p0mm:4 brain_chris_t1_3p5mm:4 brain_chris_pd_2p4mm:3 brain_t2w_2mm:2; do
  sainr synthesize "$run/thick/${pair%:*}.nii.gz" --vae "$run/vae/vae.pt" \
    --out "$run/synthetic" --factor "${pair#*:}"
done

# (iv) stage II on the synthetic volumes; validation on real held-out thin-slice volumes
for f in knee_qdess_echo1_sag_0p31x0p31x1p5 knee_fair_T_1mm brain_mni152_2009a_sym_t1_1mm; do
  ln -sfn "$data/$f.nii.gz" "$run/synthetic/heldout/$f.nii.gz"
done
sainr train --config configs/selfsup.toml --data-root "$run/synthetic" --out "$run/sainr"
