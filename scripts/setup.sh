#!/usr/bin/env bash
# Set-up shared by the README's two commands: a project venv with torch, then this package.
# torch==2.13.0 is installed first unless a torch is already there (on CPU-only machines this
# takes the CPU wheel; install your CUDA build of torch into .venv beforehand to use a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[test]"
