"""The evaluation's figure: one plane through the slice axis per case, every method beside the
truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..acquisition import Acquisition
from ..geometry import SliceGrid
from .cases import Case
from .methods import TRUTH, Method


def save_figure(
    case: Case,
    acq: Acquisition,
    lr: np.ndarray,
    grid: SliceGrid,
    truth: np.ndarray,
    methods: list[Method],
    preds: dict[str, tuple[np.ndarray, np.ndarray | None]],
    path: Path,
) -> None:
    """One plane through the slice axis (the centre column): nearest-upsampled LR input, each
    method, truth, and for the first SA-INR model its |error| and gating mask."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = truth.shape[2] // 2
    nearest = np.minimum(np.floor(grid.lower + grid.frac + 0.5).astype(np.int64), grid.n_lr - 1)
    panels = [
        (f"LR input ×{acq.factor:g} {acq.profile} (nearest)", lr[nearest, :, x], "gray", 0.0, 1.0)
    ]
    panels += [(m.name, preds[m.name][0][:, :, x], "gray", 0.0, 1.0) for m in methods]
    panels.append((TRUTH, truth[:, :, x], "gray", 0.0, 1.0))
    first = next((m for m in methods if m.model is not None), None)
    if first is not None:
        pred, mask = preds[first.name]
        error = np.abs(pred[:, :, x] - truth[:, :, x])
        panels.append((f"|error| {first.name}", error, "magma", 0.0, max(float(error.max()), 1e-6)))
        if mask is not None:
            panels.append((f"gating mask {first.name}", mask[:, :, x], "gray", 0.0, 1.0))
    aspect = case.spacing[0] / case.spacing[1]  # thin-slice spacing / in-plane spacing
    height = float(np.clip(2.2 * truth.shape[0] * aspect / truth.shape[1], 1.2, 6.0))
    fig, axes = plt.subplots(
        1, len(panels), figsize=(2.2 * len(panels), height + 0.9), squeeze=False
    )
    for ax, (title, img, cmap, vmin, vmax) in zip(axes[0], panels, strict=True):
        ax.imshow(
            img,
            cmap=cmap,
            vmin=vmin,
            vmax=vmax,
            aspect=aspect,
            origin="lower",
            interpolation="nearest",
        )
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].set_ylabel("thin-slice index ↑", fontsize=8)
    fig.suptitle(
        f"{case.name}, {case.label}, {acq.profile} ×{acq.factor:g}, column {x}", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
