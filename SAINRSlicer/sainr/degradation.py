"""Thick slices from thin ones: the one acquisition model of training, adaptation and evaluation.

A clinical slice is not a sample of the tissue at one position: it averages the tissue across
its thickness with a slice profile. Along the slice axis (axis 0, in HR voxels of width 1) an
acquired slice centred at position ``p`` is the weighted sum of the HR voxels, each voxel
weighted by the integral of the profile over that voxel, ``[i - 1/2, i + 1/2]``:

- ``none``: pure decimation, the slice *is* the HR voxel at ``p`` (integer ``p`` only);
- ``gaussian``: a Gaussian of full width at half maximum ``T``;
- ``box``: a rectangle of width ``T`` (a box of ``T`` voxels has ``T`` taps of equal weight;
  for even ``T`` it covers half a voxel more on each side, so the two end taps weigh half).

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

PROFILES = ("none", "gaussian", "box")
#: Gaussian weights are kept out to this many standard deviations (< 0.3 % of the weight lost).
_GAUSS_REACH = 3.0
_FWHM_PER_SIGMA = 2 * math.sqrt(2 * math.log(2))


@dataclass(frozen=True)
class Acquisition:
    """How LR slices are acquired from the HR: ``factor`` = LR spacing / HR spacing, slice
    ``thickness`` relative to the LR spacing, and the slice ``profile``."""

    factor: float
    thickness: float = 1.0
    profile: str = "gaussian"

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"unknown slice profile {self.profile!r}; use one of {PROFILES}")
        if not (math.isfinite(self.factor) and self.factor >= 1):
            raise ValueError(f"the factor must be a finite number >= 1, got {self.factor}")
        if not (math.isfinite(self.thickness) and self.thickness > 0):
            raise ValueError(f"the slice thickness must be positive, got {self.thickness}")
        if self.profile == "none" and not float(self.factor).is_integer():
            raise ValueError("pure decimation needs an integer factor (slices on HR voxels)")

    @property
    def width(self) -> float:
        """Slice thickness in HR voxels (one voxel for pure decimation)."""
        return 1.0 if self.profile == "none" else self.thickness * self.factor

    @property
    def relative_thickness(self) -> float:
        """Slice thickness / slice spacing as the model is told it (1 / factor for decimation:
        the slice is one HR voxel thick)."""
        return self.width / self.factor


def _gaussian_cdf(x: np.ndarray, sigma: float) -> np.ndarray:
    return 0.5 * (1 + np.vectorize(erf)(x / (sigma * math.sqrt(2))))


def weights(profile: str, width: float, centre: float) -> tuple[int, np.ndarray]:
    """(first voxel index, weights summing to 1) of a slice centred at ``centre`` (HR voxels).

    Each weight is the profile's integral over one HR voxel, so that the profile, not the
    HR grid, decides the blur at any centre. A slice no thicker than one HR voxel is that
    voxel (a box of width 1): the HR holds nothing thinner."""
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
    else:
        raise ValueError(f"unknown slice profile {profile!r}; use one of {PROFILES}")
    keep = np.nonzero(w > 1e-12)[0]
    w = w[keep[0] : keep[-1] + 1]
    return first + int(keep[0]), w / w.sum()


def margin(acq: Acquisition) -> int:
    """HR voxels a slice's weights reach beyond its centre: the margin a patch needs."""
    first, w = weights(acq.profile, acq.width, 0.0)
    return max(-first, first + len(w) - 1, 0)


def lr_count(n_hr: int, factor: float) -> int:
    """LR slices at positions 0, r, 2r, ... that fit in ``n_hr`` HR slices."""
    return slice_count(n_hr, 1 / factor)


def acquire(hr: np.ndarray, acq: Acquisition, n_lr: int, start: float = 0.0) -> np.ndarray:
    """``n_lr`` LR slices centred at HR positions ``start + n x factor`` along axis 0.

    Only voxels inside ``hr`` are used (weights renormalised at the ends), so cut ``hr`` with
    :func:`margin` voxels to spare on both sides when the edge slices must be exact."""
    n_hr = hr.shape[0]
    out = np.empty((n_lr, *hr.shape[1:]), dtype=np.float32)
    for n in range(n_lr):
        first, w = weights(acq.profile, acq.width, start + n * acq.factor)
        lo, hi = max(first, 0), min(first + len(w), n_hr)
        if lo >= hi:
            raise ValueError(f"LR slice {n} at {start + n * acq.factor:g} lies outside the volume")
        w = w[lo - first : hi - first]
        out[n] = np.tensordot(w / w.sum(), hr[lo:hi], axes=1)
    return out


@dataclass(frozen=True)
class AcquisitionSampler:
    """Random acquisitions for training: a profile, a factor (integer for pure decimation)
    and a relative thickness drawn uniformly from ``thickness``."""

    factors: tuple[float, ...] = (2, 3, 4, 2.5, 3.3)
    profiles: tuple[str, ...] = ("none", "gaussian", "box")
    profile_weights: tuple[float, ...] = (0.25, 0.5, 0.25)
    thickness: tuple[float, float] = (0.5, 1.2)

    def __post_init__(self) -> None:
        if len(self.profiles) != len(self.profile_weights):
            raise ValueError("one weight per profile")
        if "none" in self.profiles and not any(float(f).is_integer() for f in self.factors):
            raise ValueError("pure decimation needs at least one integer factor")
        for p in self.profiles:
            Acquisition(2.0, 1.0, p)  # checks the profile name

    def profile(self, rng: np.random.Generator) -> str:
        p = np.asarray(self.profile_weights, dtype=np.float64)
        return str(rng.choice(self.profiles, p=p / p.sum()))

    def factor(self, profile: str, rng: np.random.Generator) -> float:
        usable = [f for f in self.factors if profile != "none" or float(f).is_integer()]
        return float(rng.choice(usable))

    @property
    def relative_range(self) -> tuple[float, float]:
        """The relative slice thicknesses (thickness / slice spacing) this sampler produces:
        ``thickness`` for the Gaussian and box profiles, 1 / factor for pure decimation."""
        values: list[float] = []
        if any(p != "none" for p in self.profiles):
            values += [float(self.thickness[0]), float(self.thickness[1])]
        if "none" in self.profiles:
            values += [1.0 / float(f) for f in self.factors if float(f).is_integer()]
        return min(values), max(values)

    def acquisition(self, profile: str, factor: float, rng: np.random.Generator) -> Acquisition:
        thickness = float(rng.uniform(*self.thickness)) if profile != "none" else 1.0
        return Acquisition(factor, thickness, profile)
