#!/usr/bin/env bash
# One session of the thick-slice model's planned schedule (configs/thick.toml: 12,000 steps,
# cosine learning rate on that total). Resumes from the committed checkpoint
# (checkpoints/thick/last.pt: model, optimizer, scheduler, step and data stream), trains for
# MINUTES (default 60), then copies the checkpoint and the learning curve back for committing:
#   bash scripts/train_thick.sh [MINUTES] [DATA]   (DATA defaults to ../shared/data)
# On a GPU machine the same command runs on CUDA; with several GPUs, run the `sainr train` line
# under `torchrun --nproc_per_node N -m` instead.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-60}
data=${2:-../shared/data}
run=runs/thick
mkdir -p "$run" checkpoints/thick docs/training
if [ ! -f "$run/last.pt" ] && [ -f checkpoints/thick/last.pt ]; then
  cp checkpoints/thick/last.pt checkpoints/thick/history.csv "$run/"
fi
source .venv/bin/activate
sainr train --config configs/thick.toml --out "$run" --data-root "$data" --max-minutes "$minutes"
cp "$run/last.pt" "$run/history.csv" checkpoints/thick/
cp "$run/history.csv" docs/training/thick_history.csv
cp "$run/history.png" docs/training/thick_history.png
