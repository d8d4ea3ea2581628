#!/usr/bin/env bash
# Equal-steps LASA ablation (issue 12): does the attention earn its training time?
# Two arms fine-tune the same model (INIT: a shipped model name or a .pt file; the shipped
# default unless given) for the same STEPS with the thick-slice config
# (configs/thick.toml: data, patches, profiles, seed, hence the same batches) on a short cosine
# schedule from the learning rate the main schedule had reached; arm "on" keeps LASA and its
# gate as trained, arm "off" drops both (encoder and decoder copied; training.warm_start).
# Both validate on the held-out crops every 200 steps (runs/ablation_lasa/ARM/history.csv).
#   bash scripts/ablation_lasa.sh on|off [STEPS] [DATA] [INIT]
# (STEPS 600, DATA ../shared/data, INIT default). The run in docs/training/lasa_ablation.md
# started from the step-5,000 default: git show caac26a:Resources/Models/sainr_default.pt
set -euo pipefail
cd "$(dirname "$0")/.."
arm=$1
steps=${2:-600}
data=${3:-../shared/data}
init=${4:-default}
case $arm in
  on) switch=() ;;
  off) switch=(--set model.lasa=false --set model.gating=false) ;;
  *) echo "arm must be on or off, got '$arm'" >&2; exit 2 ;;
esac
source .venv/bin/activate
sainr train --config configs/thick.toml --data-root "$data" --out "runs/ablation_lasa/$arm" \
  --set init="$init" --set steps="$steps" --set warmup=50 --set lr=1.2e-4 --set ema=0 \
  --set val_every=200 "${switch[@]}"
