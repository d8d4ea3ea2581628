"""Thick slices from thin ones: the one acquisition model of training, adaptation and evaluation.

A clinical slice is not a sample of the tissue at one position: it averages the tissue across
its thickness with a slice profile. Along the slice axis (axis 0, in HR voxels of width 1) an
acquired slice centred at position ``p`` is the weighted sum of the HR voxels, each voxel
weighted by the integral of the profile over that voxel, ``[i - 1/2, i + 1/2]``:

- ``none``: pure decimation, the slice *is* the HR voxel at ``p`` (integer ``p`` only);
- ``gaussian``: a Gaussian of full width at half maximum ``T``;
- ``box``: a rectangle of width ``T`` (a box of ``T`` voxels has ``T`` taps of equal weight;
  for even ``T`` it covers half a voxel more on each side, so the two end taps weigh half);
- ``sinc``: a Hann-windowed sinc of full width at half maximum ``T`` with :data:`SINC_LOBES`
  zero crossings on each side: the ringing profile of a 2D slice-selective RF pulse, whose
  negative side lobes pull in tissue from beyond the nominal slice.

A per-slice width jitter (:attr:`Acquisition.jitter`) lets each acquired slice of a patch be a
little thinner or thicker than the nominal ``T`` (imperfect RF profiles, B1 inhomogeneity); the
model is told the nominal value.

``T`` is the slice thickness in HR voxels, ``thickness x factor`` with ``thickness`` relative to
the slice spacing: 1 = contiguous slices, < 1 = gaps, > 1 = overlap. Because the weights are
integrals over voxel boxes, a non-integer factor gives slices centred between HR voxels that
are exactly as sharp as those at integer positions (no extra linear blend). The weights use
only voxels inside the volume (renormalised at its ends); patches are cut with a margin of
:func:`margin` voxels so that their edge slices see real neighbours, as they would in a scan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from math import erf

import numpy as np

from .geometry import slice_count

PROFILES = ("none", "gaussian", "box", "sinc")
#: Gaussian weights are kept out to this many standard deviations (< 0.3 % of the weight lost).
_GAUSS_REACH = 3.0
_FWHM_PER_SIGMA = 2 * math.sqrt(2 * math.log(2))
#: Zero crossings of the windowed sinc on each side of its centre (where the window ends).
SINC_LOBES = 3
#: Sub-samples per HR voxel when integrating the windowed sinc over a voxel (midpoint rule).
_SINC_SUBSAMPLES = 16


def _windowed_sinc(u: np.ndarray) -> np.ndarray:
    """sinc(u) x Hann window reaching zero at ``u = +-SINC_LOBES`` (u in zero-crossing units)."""
    window = np.where(np.abs(u) < SINC_LOBES, 0.5 + 0.5 * np.cos(np.pi * u / SINC_LOBES), 0.0)
    return np.sinc(u) * window


def _sinc_fwhm() -> float:
    """Full width at half maximum of :func:`_windowed_sinc`, in zero-crossing units (bisection:
    the window narrows the main lobe a little below the bare sinc's)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _windowed_sinc(np.array(mid)) > 0.5 else (lo, mid)
    return 2 * lo


_SINC_FWHM = _sinc_fwhm()


@dataclass(frozen=True)
class Acquisition:
    """How LR slices are acquired from the HR: ``factor`` = LR spacing / HR spacing, slice
    ``thickness`` relative to the LR spacing, and the slice ``profile``."""

    factor: float
    thickness: float = 1.0
    profile: str = "gaussian"
    jitter: float = 0.0  # per-slice widths drawn from nominal x [1 - jitter, 1 + jitter]

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"unknown slice profile {self.profile!r}; use one of {PROFILES}")
        if not (math.isfinite(self.factor) and self.factor >= 1):
            raise ValueError(f"the factor must be a finite number >= 1, got {self.factor}")
        if not (math.isfinite(self.thickness) and self.thickness > 0):
            raise ValueError(f"the slice thickness must be positive, got {self.thickness}")
        if self.profile == "none" and not float(self.factor).is_integer():
            raise ValueError("pure decimation needs an integer factor (slices on HR voxels)")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"the width jitter must be in [0, 1), got {self.jitter}")

    @property
    def width(self) -> float:
        """Slice thickness in HR voxels (one voxel for pure decimation)."""
        return 1.0 if self.profile == "none" else self.thickness * self.factor

    @property
    def relative_thickness(self) -> float:
        """Slice thickness / slice spacing as the model is told it (1 / factor for decimation:
        the slice is one HR voxel thick)."""
        return self.width / self.factor

    def told(self, native_width: float = 0.0) -> float:
        """Slice thickness / spacing of the LR slices when the HR itself was acquired with slices
        ``native_width`` HR voxels thick along this axis (0: the HR is the reference, as for
        near-isotropic volumes and in-plane axes). The native profile and the simulated one are
        combined in quadrature (exact for Gaussians, close for the other bell-like profiles), so
        that the model learns the thickness of what it sees, not of the simulation alone; pure
        decimation keeps one native slice: max(1, native_width) / factor."""
        if self.profile == "none":
            return max(1.0, native_width) / self.factor
        return math.hypot(self.width, native_width) / self.factor


def _gaussian_cdf(x: np.ndarray, sigma: float) -> np.ndarray:
    return 0.5 * (1 + np.vectorize(erf)(x / (sigma * math.sqrt(2))))


def weights(profile: str, width: float, centre: float) -> tuple[int, np.ndarray]:
    """(first voxel index, weights summing to 1) of a slice centred at ``centre`` (HR voxels).

    Each weight is the profile's integral over one HR voxel, so that the profile, not the
    HR grid, decides the blur at any centre. A slice no thicker than one HR voxel is that
    voxel (a box of width 1): the HR holds nothing thinner. The windowed sinc has negative side
    lobes, so its weights may be negative; they still sum to 1."""
    if profile == "none":
        return int(round(centre)), np.ones(1)
    if width <= 1:  # no thinner than the HR voxel itself: that voxel (at integer centres)
        profile, width = "box", 1.0
    if profile == "box":
        lo, hi = centre - width / 2, centre + width / 2
        first, last = math.floor(lo + 0.5), math.ceil(hi - 0.5)
        edges = np.arange(first, last + 1, dtype=np.float64)
        w = np.clip(np.minimum(edges + 0.5, hi) - np.maximum(edges - 0.5, lo), 0, None)
    elif profile == "gaussian":
        sigma = width / _FWHM_PER_SIGMA
        first = math.floor(centre - _GAUSS_REACH * sigma + 0.5)
        last = math.ceil(centre + _GAUSS_REACH * sigma - 0.5)
        edges = np.arange(first, last + 2, dtype=np.float64) - 0.5 - centre
        w = np.diff(_gaussian_cdf(edges, sigma))
    elif profile == "sinc":
        scale = width / _SINC_FWHM  # HR voxels per zero-crossing unit
        reach = SINC_LOBES * scale
        first = math.floor(centre - reach + 0.5)
        last = math.ceil(centre + reach - 0.5)
        sub = (np.arange(_SINC_SUBSAMPLES) + 0.5) / _SINC_SUBSAMPLES - 0.5
        pos = np.arange(first, last + 1, dtype=np.float64)[:, None] + sub[None, :] - centre
        w = _windowed_sinc(pos / scale).mean(axis=1)
    else:
        raise ValueError(f"unknown slice profile {profile!r}; use one of {PROFILES}")
    keep = np.nonzero(np.abs(w) > 1e-12)[0]
    w = w[keep[0] : keep[-1] + 1]
    return first + int(keep[0]), w / w.sum()


def margin(acq: Acquisition) -> int:
    """HR voxels a slice's weights reach beyond its centre (at the widest jittered width): the
    margin a patch needs."""
    first, w = weights(acq.profile, acq.width * (1 + acq.jitter), 0.0)
    return max(-first, first + len(w) - 1, 0)


def lr_count(n_hr: int, factor: float) -> int:
    """LR slices at positions 0, r, 2r, ... that fit in ``n_hr`` HR slices."""
    return slice_count(n_hr, 1 / factor)


def acquire(
    hr: np.ndarray,
    acq: Acquisition,
    n_lr: int,
    start: float = 0.0,
    scales: np.ndarray | None = None,
) -> np.ndarray:
    """``n_lr`` LR slices centred at HR positions ``start + n x factor`` along axis 0, slice n
    ``scales[n]`` times the nominal width when given (:func:`slice_scales`).

    Only voxels inside ``hr`` are used (weights renormalised at the ends), so cut ``hr`` with
    :func:`margin` voxels to spare on both sides when the edge slices must be exact."""
    n_hr = hr.shape[0]
    out = np.empty((n_lr, *hr.shape[1:]), dtype=np.float32)
    for n in range(n_lr):
        width = acq.width * (1.0 if scales is None else float(scales[n]))
        first, w = weights(acq.profile, width, start + n * acq.factor)
        lo, hi = max(first, 0), min(first + len(w), n_hr)
        if lo >= hi:
            raise ValueError(f"LR slice {n} at {start + n * acq.factor:g} lies outside the volume")
        w = w[lo - first : hi - first]
        out[n] = np.tensordot(w / w.sum(), hr[lo:hi], axes=1)
    return out
