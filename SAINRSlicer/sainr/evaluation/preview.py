"""Comparison picture: input vs SA-INR, reformatted perpendicular to the acquired slices.

Through-plane super-resolution is only visible in a plane that contains the slice axis, so the
picture cuts the volumes through the middle of one in-plane axis and shows (left to right) the
acquired slices (nearest neighbour), linear interpolation, SA-INR and the gating mask, all at
true physical aspect ratio.
"""

from __future__ import annotations

import os

import numpy as np
import SimpleITK as sitk

from ..geometry import slice_grid
from .baselines import linear_interpolate


def _cut(array: np.ndarray, slice_axis: int) -> np.ndarray:
    """2D cut (slice axis vertical) through the middle of the first in-plane index axis."""
    vol = np.moveaxis(array, 2 - slice_axis, 0)  # (slice, a, b)
    return vol[:, vol.shape[1] // 2, :]


def cut_extent(hr: sitk.Image, slice_axis: int) -> tuple[float, float, float, float]:
    """imshow extent (mm) of :func:`_cut` of ``hr``: width along the in-plane index axis the
    cut keeps (the smaller one), height along the slice axis."""
    in_plane = min(a for a in range(3) if a != slice_axis)
    width = hr.GetSize()[in_plane] * hr.GetSpacing()[in_plane]
    return (0, width, hr.GetSize()[slice_axis] * hr.GetSpacing()[slice_axis], 0)


def save_comparison(
    lr: sitk.Image, hr: sitk.Image, mask: sitk.Image, slice_axis: int, path: str | os.PathLike
) -> None:
    """Write a PNG with acquired / linear / SA-INR / gating-mask panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lr_arr = sitk.GetArrayFromImage(lr).astype(np.float32)
    grid = slice_grid(
        lr.GetSize()[slice_axis], lr.GetSpacing()[slice_axis], hr.GetSpacing()[slice_axis]
    )
    lr_vol = np.moveaxis(lr_arr, 2 - slice_axis, 0)
    nearest = lr_vol[np.rint(grid.lower + grid.frac).astype(int).clip(0, grid.n_lr - 1)]
    panels = {
        f"acquired ({grid.spacing_lr:.4g} mm)": nearest[:, nearest.shape[1] // 2, :],
        "linear": linear_interpolate(lr_vol, grid)[:, lr_vol.shape[1] // 2, :],
        f"SA-INR ({grid.spacing_hr:.4g} mm)": _cut(sitk.GetArrayFromImage(hr), slice_axis),
    }
    extent = cut_extent(hr, slice_axis)
    vmin, vmax = np.percentile(lr_arr, [0.5, 99.5])
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.6))
    for ax, (title, img) in zip(axes, panels.items()):
        ax.imshow(img, cmap="gray", vmin=vmin, vmax=vmax, extent=extent, interpolation="nearest")
        ax.set_title(title)
    base = panels[f"SA-INR ({grid.spacing_hr:.4g} mm)"]
    axes[3].imshow(base, cmap="gray", vmin=vmin, vmax=vmax, extent=extent)
    gate = _cut(sitk.GetArrayFromImage(mask), slice_axis).astype(float)
    axes[3].imshow(np.ma.masked_equal(gate, 0), cmap="autumn", alpha=0.5, extent=extent)
    axes[3].set_title(f"gating mask ({100 * gate.mean():.0f} % attended)")
    for ax in axes:
        ax.set_xlabel("mm (in-plane)")
    axes[0].set_ylabel("mm (through-plane)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
