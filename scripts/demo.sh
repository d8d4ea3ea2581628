#!/usr/bin/env bash
# README command 1: set up, then reduce the bundled 3 mm knee to 1 mm slices with the shipped
# default model; writes the volume, the gating mask and a comparison picture to demo-output/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source .venv/bin/activate
mkdir -p demo-output
sainr reduce Resources/Sample/knee_qdess_sag_3mm.nii.gz demo-output/knee_1mm.nii.gz \
  --spacing 1.0 --mask demo-output/knee_1mm_mask.nii.gz --preview demo-output/knee_1mm.png
