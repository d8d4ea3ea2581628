"""The evaluated cases: an HR volume read, cropped and normalised with its slice axis first, and
the thick-slice acquisitions simulated from it (:mod:`sainr.acquisition`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..acquisition import Acquisition, acquire, lr_count
from ..errors import SainrError
from ..geometry import MAX_RELATIVE_THICKNESS, SliceGrid, axis_label, slice_grid
from ..intensity import robust_scale
from ..io.read import read_volume, volume_suffix
from ..train.data import usable_axes
from ..validation import check_image, check_values

#: 3D SSIM's window; every evaluated axis needs at least this many voxels.
MIN_EXTENT = 7


@dataclass(frozen=True)
class Case:
    """One HR volume ready for evaluation: normalised, slice axis first (S, H, W)."""

    name: str
    hr: np.ndarray
    axis: int
    label: str
    spacing: tuple[float, float, float]  # mm along (S, H, W)
    #: The whole HR volume (S, H', W', not normalised) when ``hr`` is an in-plane crop of it:
    #: a user reduces whole volumes, so the thickness estimate reads this one's LR.
    whole: np.ndarray | None = None

    def seen(self, acq: Acquisition, lr: np.ndarray) -> np.ndarray:
        """The LR a user would give for ``acq``: the whole volume acquired the same way when
        ``hr`` is a crop (the slices are the same; only the in-plane extent differs), else
        ``lr`` itself. What the image's thickness is estimated from."""
        if self.whole is None:
            return lr
        return acquire(self.whole, acq, lr.shape[0])


def simulated_acquisitions(
    profiles: tuple[str, ...], factors: tuple[float, ...], thickness: float
) -> list[Acquisition]:
    """Every (profile, factor) case; pure decimation only at integer factors (its slices
    must lie on HR slices), the others with the given relative ``thickness``."""
    if not (math.isfinite(thickness) and 0 < thickness <= MAX_RELATIVE_THICKNESS):
        raise SainrError(f"--thickness must be in (0, {MAX_RELATIVE_THICKNESS:g}], got {thickness}")
    cases = [
        Acquisition(f, thickness, p)
        for p in dict.fromkeys(profiles)
        for f in factors
        if p != "none" or f.is_integer()
    ]
    if not cases:
        raise SainrError("pure decimation (profile none) needs an integer factor")
    return cases


def check_factors(factors: tuple[float, ...]) -> tuple[float, ...]:
    bad = [f for f in factors if not (math.isfinite(f) and f > 1)]
    if bad:
        raise SainrError(f"factors must be finite numbers > 1, got {bad}")
    return tuple(dict.fromkeys(float(f) for f in factors))


def axes_per_volume(axes: tuple[int | None, ...], n: int) -> list[int | None]:
    if not axes:
        return [None] * n
    if len(axes) == 1:
        return list(axes) * n
    if len(axes) != n:
        raise SainrError(f"--axis takes one value or one per volume ({n}), got {len(axes)}")
    return list(axes)


def volume_name(path: Path) -> str:
    """File name without its volume suffix (.nii.gz, .nrrd, ...)."""
    suffix = volume_suffix(path)
    return path.name[: -len(suffix)] if suffix else path.name


def load_case(path: Path, axis: int | None, crop: int | None, keep_whole: bool = True) -> Case:
    """Read, choose the slice axis, centre-crop in-plane and normalise an HR volume; with
    ``keep_whole``, keep the uncropped one for the thickness estimate (:meth:`Case.seen`)."""
    image = read_volume(path)
    check_image(image)
    spacing = tuple(float(s) for s in image.GetSpacing())
    if axis is None:
        axes = usable_axes(spacing)
        axis = axes[0] if len(axes) == 1 else 2
    array = check_values(sitk.GetArrayViewFromImage(image))
    hr = np.moveaxis(np.asarray(array, dtype=np.float32), 2 - axis, 0)
    whole = None
    if crop is not None:
        if crop < MIN_EXTENT:
            raise SainrError(f"--crop must be at least {MIN_EXTENT} voxels, got {crop}")
        starts = [max((n - crop) // 2, 0) for n in hr.shape[1:]]
        cropped = hr[:, starts[0] : starts[0] + crop, starts[1] : starts[1] + crop]
        whole = hr if keep_whole and cropped.shape != hr.shape else None
        hr = cropped
    in_plane = [a for a in (2, 1, 0) if a != axis]
    return Case(
        name=volume_name(path),
        hr=np.ascontiguousarray(robust_scale(hr).normalize(hr)),
        axis=axis,
        label=axis_label(image.GetDirection(), axis),
        spacing=(spacing[axis], spacing[in_plane[0]], spacing[in_plane[1]]),
        whole=whole,
    )


def simulate(hr: np.ndarray, acq: Acquisition) -> tuple[np.ndarray, SliceGrid, np.ndarray]:
    """(LR, thin-slice grid at the HR spacing, truth) for acquisition ``acq`` along axis 0."""
    n_lr = lr_count(hr.shape[0], acq.factor)
    grid = slice_grid(n_lr, acq.factor, 1.0)
    return acquire(hr, acq, n_lr), grid, hr[: grid.n_hr]
