"""``sainr train --out RUN [--config TOML] [--set KEY=VALUE ...]``: train SA-INR
(:mod:`sainr.train.training`; resumes from RUN/last.pt, torchrun-ready)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import SainrError
from ..train.training import TrainConfig, train


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``sainr train``."""
    p.add_argument("--config", type=Path, help="TOML config (see configs/default.toml)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value"
    )
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, history)")
    p.add_argument(
        "--data-root",
        type=Path,
        default=Path("."),
        help="folder the config's paths are relative to",
    )
    p.add_argument("--max-minutes", type=float, help="stop (with a checkpoint) after this long")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the config with its overrides (a bad one, or missing volumes, is a user error)
    and train."""
    try:
        cfg = TrainConfig.load(args.config, args.set)
    except (ValueError, TypeError, OSError) as exc:
        raise SainrError(f"bad training config: {exc}") from exc
    missing = cfg.missing_volumes(args.data_root)
    if missing:
        names = ", ".join(str(p) for p in missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise SainrError(f"{len(missing)} training volume(s) not found: {names} (see --data-root)")
    train(cfg, args.out, args.data_root, args.max_minutes)
    return 0
