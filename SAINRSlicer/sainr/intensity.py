"""Robust intensity scaling, identical in training and inference.

x' = (x - a) / (b - a) with a, b the 0.5th and 99.5th percentiles of the volume. The input is
not clipped (bright structures stay bright); outputs are mapped back to the input's units.
Per-volume (not per-crop) scaling keeps the network's input scale independent of crop content.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputImageError

LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5
#: Percentiles are estimated on at most this many voxels (evenly strided), for speed.
_MAX_SAMPLES = 4_000_000
#: Below this magnitude, differences of float32 values cannot overflow float32.
_FLOAT32_SAFE = 1e38


@dataclass(frozen=True)
class IntensityScale:
    """Affine map between the volume's units and the network's normalised units."""

    low: float
    high: float

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """``x`` in normalised float32 units; computed in float64 where float32 would
        overflow (``x - low`` for values near the float32 limits, +-3.4e38)."""
        if (
            x.dtype == np.float32
            and float(np.abs(x).max(initial=0)) + abs(self.low) > _FLOAT32_SAFE
        ):
            x = x.astype(np.float64)
        return ((x - self.low) / (self.high - self.low)).astype(np.float32, copy=False)

    def denormalize(self, y: np.ndarray) -> np.ndarray:
        return y.astype(np.float64) * (self.high - self.low) + self.low


def robust_scale(volume: np.ndarray) -> IntensityScale:
    """Percentile scale of ``volume``; refuses volumes without contrast."""
    flat = volume.reshape(-1)
    if flat.size > _MAX_SAMPLES:
        flat = flat[:: flat.size // _MAX_SAMPLES + 1]
    flat = flat.astype(np.float64)  # percentiles of float32 near +-3e38 would overflow
    low, high = np.percentile(flat, [LOW_PERCENTILE, HIGH_PERCENTILE])
    if not high > low:
        high = float(flat.max())
        low = float(flat.min())
    if not high > low:
        raise InputImageError(
            f"the volume is constant (every voxel = {low:g}); there is nothing to interpolate"
        )
    return IntensityScale(float(low), float(high))
