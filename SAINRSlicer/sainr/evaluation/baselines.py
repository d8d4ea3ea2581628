"""Interpolation baselines on the same thin-slice grid as SA-INR.

Every method samples thin slice j at the corner-aligned LR position p_j = j c_H / c_L and
leaves the in-plane grid untouched. ``linear_interpolate`` works on arrays directly; the
SimpleITK baselines (linear, cubic B-spline) resample an image onto the reference grid of
:func:`sainr.geometry.output_geometry`, whose slice j lies at origin + j c_H along the slice
direction, i.e. at exactly p_j. In-plane the sample points are integer voxel positions, where
ITK's interpolating cubic B-spline reproduces the data, so only the slice axis is interpolated.

The profile-aware classical baseline ("B-spline + Wiener") knows what SA-INR is told: the slice
profile. Thick slices average the tissue across their thickness (:mod:`sainr.acquisition`);
interpolation alone leaves that blur in place. :func:`bspline_wiener` interpolates with the
B-spline, then undoes the known profile along the slice axis with a Wiener filter
(:func:`wiener_deconvolve`) whose point-spread function on the thin grid comes from the same
acquisition model that simulates the thick slices (:func:`slice_profile_psf`).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..acquisition import weights
from ..geometry import Geometry, SliceGrid, output_geometry, slice_grid

INTERPOLATORS = {"linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline}

#: Noise-to-signal ratio of the Wiener filter (power, relative to a unit-gain signal). Chosen
#: on the validation volumes only, as the value with the best mean PSNR over their Gaussian
#: and box cases (``scripts/choose_wiener_nsr.py``; the table is in
#: ``docs/evaluation/wiener_nsr.md``); never looked at on a test volume.
WIENER_NSR = 0.01


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


def slice_profile_psf(profile: str, width: float) -> np.ndarray:
    """The slice profile as a centred, odd-length kernel on the thin grid.

    ``width`` is the slice thickness in thin-grid voxels; tap ``h + d`` (``h`` = half the
    length) is the weight of the thin voxel ``d`` voxels from the slice centre, i.e. the
    weights :func:`sainr.acquisition.weights` gives a slice centred on a voxel. A slice no
    thicker than one voxel (and pure decimation, ``profile`` none) is a delta."""
    first, w = weights(profile, float(width), 0.0)
    half = max(-first, first + len(w) - 1, 0)
    psf = np.zeros(2 * half + 1)
    psf[first + half : first + half + len(w)] = w
    return psf


def wiener_deconvolve(volume: np.ndarray, psf: np.ndarray, nsr: float, axis: int = 0) -> np.ndarray:
    """Undo the blur ``psf`` (centred, odd length, summing to 1) along ``axis`` (float32).

    Frequency response G = H (1 + nsr) / (H^2 + nsr) with H the (real: symmetric) transfer
    function of ``psf``: the Wiener filter for a noise-to-signal power ratio ``nsr``, scaled so
    that G = 1 wherever H = 1. Hence the mean intensity is kept, a delta profile leaves the
    volume unchanged, and only frequencies the profile attenuated are restored (as far as the
    noise allows). The volume is extended by its mirror image first (length 2n), so that the
    FFT's circular convolution acts like a symmetric boundary, not a wrap-around."""
    psf = np.asarray(psf, dtype=np.float64)
    if psf.ndim != 1 or len(psf) % 2 != 1:
        raise ValueError(f"the PSF must be a 1D kernel of odd length, got shape {psf.shape}")
    if not nsr > 0:
        raise ValueError(f"the noise-to-signal ratio must be positive, got {nsr}")
    x = np.moveaxis(np.asarray(volume, dtype=np.float32), axis, 0)
    n = x.shape[0]
    extended = np.concatenate([x, x[::-1]], axis=0)
    half = len(psf) // 2
    f = np.fft.rfftfreq(2 * n)
    gain = psf[half] + 2 * sum(
        psf[half + d] * np.cos(2 * np.pi * f * d) for d in range(1, half + 1)
    )
    g = gain * (1 + nsr) / (gain**2 + nsr)
    spectrum = np.fft.rfft(extended, axis=0) * g.reshape(-1, *([1] * (x.ndim - 1)))
    out = np.fft.irfft(spectrum, n=2 * n, axis=0)[:n]
    return np.ascontiguousarray(np.moveaxis(out.astype(np.float32), 0, axis))


def bspline_wiener(
    volume: np.ndarray, grid: SliceGrid, profile: str, thickness: float, nsr: float = WIENER_NSR
) -> np.ndarray:
    """B-spline interpolation along axis 0 onto ``grid``, then Wiener deconvolution of the
    slice profile: ``profile`` of ``thickness`` x the acquired slice spacing (the thickness
    relative to the spacing, as SA-INR is told it)."""
    thin = bspline_interpolate(volume, grid)
    return wiener_deconvolve(thin, slice_profile_psf(profile, thickness * grid.factor), nsr)
