#!/usr/bin/env bash
# One session of the forgiving model's schedule (configs/forgiving.toml: 10,000 steps):
#   bash scripts/train_forgiving.sh [MINUTES] [DATA]   (scripts/train_session.sh does the work)
exec bash "$(dirname "$0")/train_session.sh" forgiving "$@"
