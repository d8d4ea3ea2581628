"""Choose which residual blocks a shallower student keeps, on the VALIDATION volumes only.

Every set of ``KEEP`` of the teacher's residual blocks is cut from it
(:func:`sainr.train.prune.narrowed`, no training) and scored by the training validation of
the config (its ``[[val]]`` volumes, factors and profiles; told the true thickness), at the
config's training precision. The choice: the highest mean PSNR over all rows, i.e. the cut that
starts nearest its teacher. Prints the configuration and one line per cut.

Usage: python scripts/choose_blocks.py CONFIG [DATA] [KEEP]
"""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sainr.runtime.weights import load_model
from sainr.train.prune import narrowed
from sainr.train.training import TrainConfig, load_volumes, validate


def main(config: str, data: str = "../shared/data", keep: int = 2) -> None:
    cfg = TrainConfig.load(config)
    teacher = load_model(cfg.teacher).eval()
    volumes = load_volumes(cfg.val, Path(data))
    precision = "fp32" if cfg.amp == "none" else cfg.amp
    profiles = tuple(cfg.val_profiles)
    print(
        f"teacher {cfg.teacher} ({teacher.config.blocks} blocks); keep {keep}; validation "
        f"{[e['path'] for e in cfg.val]}, factors {list(cfg.val_factors)}, profiles "
        f"{list(profiles)}, {cfg.val_size}^2 centre crops, precision {precision}, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads"
    )
    widths = teacher.config.channels, teacher.config.hidden
    for blocks in itertools.combinations(range(teacher.config.blocks), keep):
        t0 = time.time()
        cut = narrowed(teacher, *widths, blocks)
        scores = validate(cut, volumes, cfg.val_factors, cfg.val_size, precision, profiles)
        mean = float(np.mean([v for k, v in scores.items() if k.startswith("psnr_")]))
        gains = "  ".join(f"{p} {scores[f'gain_{p}']:+.2f}" for p in profiles)
        print(
            f"blocks {list(blocks)}: mean PSNR {mean:.3f} dB; gain {gains} ({time.time() - t0:.0f} s)"
        )


if __name__ == "__main__":
    main(sys.argv[1], *(sys.argv[2:3] or []), *(int(a) for a in sys.argv[3:4]))
