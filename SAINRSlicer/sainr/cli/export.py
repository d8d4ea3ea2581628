"""``sainr export CHECKPOINT --name NAME``: ship a training checkpoint under Resources/Models
(:func:`sainr.runtime.weights.export_model`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..runtime.weights import export_model


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``sainr export``."""
    p.add_argument("checkpoint", type=Path, help="training checkpoint (e.g. RUN/best.pt)")
    p.add_argument("--name", default="default", help="model name in the catalog")
    p.add_argument("--description", default="", help="one line for the catalog")
    p.add_argument("--models-dir", type=Path, help="catalog folder (default: Resources/Models)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export and print the catalog entry."""
    entry = export_model(args.checkpoint, args.name, args.description, args.models_dir)
    print(f"{args.name}: {entry['file']} sha256 {entry['sha256']} ({entry['bytes']} bytes)")
    return 0
