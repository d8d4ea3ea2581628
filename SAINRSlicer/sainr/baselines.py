"""Interpolation baselines on the same thin-slice grid as SA-INR."""

from __future__ import annotations

import numpy as np

from .geometry import SliceGrid


def linear_interpolate(volume: np.ndarray, grid: SliceGrid) -> np.ndarray:
    """Linear interpolation along axis 0 (the slice axis) onto ``grid``; in-plane unchanged."""
    t = grid.frac.astype(np.float32)[:, None, None]
    return volume[grid.lower] * (1 - t) + volume[grid.upper] * t
