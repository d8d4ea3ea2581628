#!/usr/bin/env bash
# One session of the forgiving model's planned schedule (configs/forgiving.toml: 10,000 steps,
# cosine learning rate on that total). Resumes from the committed checkpoint
# (checkpoints/forgiving/last.pt: model, optimizer, scheduler, step and data stream), trains for
# MINUTES (default 60), then copies the checkpoint and the learning curve back for committing:
#   bash scripts/train_forgiving.sh [MINUTES] [DATA]   (DATA defaults to ../shared/data)
# On a GPU machine the same command runs on CUDA; with several GPUs, run the `sainr train` line
# under `torchrun --nproc_per_node N -m` instead.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-60}
data=${2:-../shared/data}
run=runs/forgiving
mkdir -p "$run" checkpoints/forgiving docs/training
if [ ! -f "$run/last.pt" ] && [ -f checkpoints/forgiving/last.pt ]; then
  cp checkpoints/forgiving/last.pt checkpoints/forgiving/history.csv "$run/"
fi
if [ -f .venv/bin/activate ]; then source .venv/bin/activate; fi
sainr train --config configs/forgiving.toml --out "$run" --data-root "$data" --max-minutes "$minutes"
cp "$run/last.pt" "$run/history.csv" checkpoints/forgiving/
cp "$run/history.csv" docs/training/forgiving_history.csv
cp "$run/history.png" docs/training/forgiving_history.png
