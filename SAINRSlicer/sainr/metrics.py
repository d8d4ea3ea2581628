"""Image-quality metrics on whole volumes (PSNR with MAX = ground-truth maximum)."""

from __future__ import annotations

import numpy as np


def psnr(pred: np.ndarray, truth: np.ndarray) -> float:
    """10 log10(MAX^2 / MSE), MAX = max(truth); prediction clipped to [0, MAX] first."""
    peak = float(truth.max())
    pred = np.clip(pred.astype(np.float64), 0.0, peak)
    mse = float(np.mean((pred - truth.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(peak**2 / mse)
