#!/usr/bin/env bash
# One session of the thick-slice model's schedule (configs/thick.toml: 12,000 steps):
#   bash scripts/train_thick.sh [MINUTES] [DATA]   (scripts/train_session.sh does the work)
exec bash "$(dirname "$0")/train_session.sh" thick "$@"
