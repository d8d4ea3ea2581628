"""Interpolation baselines on the same thin-slice grid as SA-INR.

Every method samples thin slice j at the corner-aligned LR position p_j = j c_H / c_L and
leaves the in-plane grid untouched. ``linear_interpolate`` works on arrays directly; the
SimpleITK baselines (linear, cubic B-spline) resample an image onto the reference grid of
:func:`sainr.geometry.output_geometry`, whose slice j lies at origin + j c_H along the slice
direction, i.e. at exactly p_j. In-plane the sample points are integer voxel positions, where
ITK's interpolating cubic B-spline reproduces the data, so only the slice axis is interpolated.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .geometry import Geometry, SliceGrid, output_geometry, slice_grid

INTERPOLATORS = {"linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline}


def linear_interpolate(volume: np.ndarray, grid: SliceGrid) -> np.ndarray:
    """Linear interpolation along axis 0 (the slice axis) onto ``grid``; in-plane unchanged."""
    t = grid.frac.astype(np.float32)[:, None, None]
    return volume[grid.lower] * (1 - t) + volume[grid.upper] * t


def resample_to(image: sitk.Image, geom: Geometry, method: str) -> sitk.Image:
    """``image`` resampled (float32) onto the grid ``geom`` with 'linear' or 'bspline'."""
    if method not in INTERPOLATORS:
        raise ValueError(f"unknown interpolation {method!r}; use one of {sorted(INTERPOLATORS)}")
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([int(n) for n in geom.size])
    resampler.SetOutputSpacing(geom.spacing)
    resampler.SetOutputOrigin(geom.origin)
    resampler.SetOutputDirection(geom.direction)
    resampler.SetInterpolator(INTERPOLATORS[method])
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    resampler.SetDefaultPixelValue(0.0)
    return resampler.Execute(sitk.Cast(image, sitk.sitkFloat32))


def resample_slices(image: sitk.Image, axis: int, spacing_mm: float, method: str) -> sitk.Image:
    """Thin-slice image at ``spacing_mm`` along index axis ``axis`` (float32), on the same
    output geometry as SA-INR's :func:`sainr.api.reduce_spacing`."""
    size, spacing = image.GetSize(), image.GetSpacing()
    geom = Geometry(tuple(size), tuple(spacing), image.GetOrigin(), image.GetDirection())
    grid = slice_grid(size[axis], spacing[axis], spacing_mm)
    return resample_to(image, output_geometry(geom, axis, grid), method)


def sitk_interpolate(volume: np.ndarray, grid: SliceGrid, method: str) -> np.ndarray:
    """SimpleITK interpolation of ``volume`` (slice axis first) onto ``grid``."""
    if volume.shape[0] != grid.n_lr:
        raise ValueError(f"volume has {volume.shape[0]} slices, the grid expects {grid.n_lr}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume, dtype=np.float32))
    image.SetSpacing((1.0, 1.0, grid.spacing_lr))
    out = resample_slices(image, 2, grid.spacing_hr, method)
    return sitk.GetArrayFromImage(out)


def bspline_interpolate(volume: np.ndarray, grid: SliceGrid) -> np.ndarray:
    """Cubic B-spline (SimpleITK) along axis 0 onto ``grid``; in-plane unchanged."""
    return sitk_interpolate(volume, grid, "bspline")
