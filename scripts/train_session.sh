#!/usr/bin/env bash
# One session of a planned training schedule (configs/NAME.toml, cosine learning rate on its
# total step count). Resumes from the committed checkpoint (checkpoints/NAME/last.pt: model,
# optimizer, scheduler, step and data stream), trains for MINUTES (default 60), then copies the
# checkpoint and the learning curve back for committing:
#   bash scripts/train_session.sh NAME [MINUTES] [DATA] [sainr train options...]
# DATA defaults to ../shared/data; further options go to `sainr train`, e.g. `--set workers=0`
# for a distil config (written for a GPU machine's cores) on a laptop.
# On a GPU machine the same command runs on CUDA; with several GPUs, run the `sainr train` line
# under `torchrun --nproc_per_node N -m` instead.
set -euo pipefail
cd "$(dirname "$0")/.."
name=$1
minutes=${2:-60}
data=${3:-../shared/data}
run=runs/$name
mkdir -p "$run" "checkpoints/$name" docs/training
if [ ! -f "$run/last.pt" ] && [ -f "checkpoints/$name/last.pt" ]; then
  cp "checkpoints/$name/last.pt" "checkpoints/$name/history.csv" "$run/"
fi
if [ -f .venv/bin/activate ]; then source .venv/bin/activate; fi
sainr train --config "configs/$name.toml" --out "$run" --data-root "$data" --max-minutes "$minutes" "${@:4}"
cp "$run/last.pt" "$run/history.csv" "checkpoints/$name/"
cp "$run/history.csv" "docs/training/${name}_history.csv"
cp "$run/history.png" "docs/training/${name}_history.png"
