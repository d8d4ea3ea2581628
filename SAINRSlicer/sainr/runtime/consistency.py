"""Data consistency: thin slices that give back the acquired ones.

Acquiring the thin-slice result again (:func:`sainr.acquisition.acquire`: a box profile
:data:`BOX_WIDTH` times as thick as the model was told, centred on each acquired slice) should
give the acquired slices.
Where it does not, the network has left some of the slice profile's blur in place or missed
some tissue. One step of iterative back-projection (Irani & Peleg, 1991) adds that residual,
interpolated linearly along the slice axis, back onto the thin slices.

The residual also holds the noise the network removed, and adding all of it back would undo
the denoising. The step is therefore weighted by the residual's Wiener gain
``g = max(0, 1 - NOISE_WEIGHT sigma^2 / mean(r^2))``, ``sigma`` being the residual's noise
level (median absolute deviation of its in-plane second differences, which edges barely move):
close to 1 on clean input, 0 where the residual is mostly noise. A box profile is the
reference of the thickness estimate (:mod:`sainr.thickness`); a told thickness is a full width
at half maximum, and bell-shaped slice profiles blur more than a box of that width (a Gaussian
has the variance of a box 1.47 times its FWHM), hence a box a little wider than told. The
choices (box, its width, one step, the linear back-projection, ``NOISE_WEIGHT``) were made on
the validation volumes only (``docs/evaluation/consistency.md``).
"""

from __future__ import annotations

import numpy as np

from ..acquisition import Acquisition, acquire
from ..geometry import SliceGrid
from ..thickness import noise_sigma_of, second_difference

#: How many times its measured noise power the residual must exceed for the back-projection
#: to count fully (2: a residual only twice the noise power gets no weight at all).
NOISE_WEIGHT = 2.0
#: The reference slice profile of the re-acquisition.
PROFILE = "box"
#: Its width per unit of the told slice thickness.
BOX_WIDTH = 1.25
#: Acquired slices sampled for the residual's noise level (evenly spaced).
_NOISE_SLICES = 8


def describe() -> str:
    """What the step does, for a result's record (:func:`sainr.io.outputs.is_complete`): a
    result made without it, or with other settings, is redone by a rerun, not kept."""
    return (
        f"{PROFILE} re-acquisition {BOX_WIDTH:g} x the told thickness, one linear "
        f"back-projection, noise weight {NOISE_WEIGHT:g}"
    )


def reacquire(
    thin: np.ndarray, grid: SliceGrid, thickness: float, width: float = BOX_WIDTH
) -> np.ndarray:
    """The acquired slices (``grid.n_lr``, H, W) that thin slices ``thin`` (slice axis first)
    give when imaged again with a box profile ``width`` x ``thickness`` x the acquired spacing
    thick."""
    acquisition = Acquisition(grid.factor, width * thickness, PROFILE)
    return acquire(thin, acquisition, grid.n_lr)


def noise_level(residual: np.ndarray) -> float:
    """Standard deviation of the white noise in ``residual`` (S, H, W), from its second
    differences along both in-plane axes (:func:`sainr.thickness.noise_sigma_of`)."""
    picked = residual[
        np.unique(np.linspace(0, len(residual) - 1, _NOISE_SLICES).round().astype(int))
    ]
    return noise_sigma_of(
        np.concatenate([second_difference(picked, axis).ravel() for axis in (1, 2)])
    )


def residual_gain(residual: np.ndarray, noise_weight: float = NOISE_WEIGHT) -> float:
    """Weight of the back-projection: the residual's Wiener gain against its own noise power
    counted ``noise_weight`` times (0: always 1, plain back-projection)."""
    # one slice at a time: no float64 copy of the whole residual
    power = sum(float(np.vdot(plane, plane)) for plane in residual) / max(residual.size, 1)
    if power == 0.0:
        return 0.0
    return max(0.0, 1.0 - noise_weight * noise_level(residual) ** 2 / power)


def enforce_consistency(
    thin: np.ndarray,
    acquired: np.ndarray,
    grid: SliceGrid,
    thickness: float,
    noise_weight: float = NOISE_WEIGHT,
    width: float = BOX_WIDTH,
) -> float:
    """Back-project, in place, what ``thin`` (``grid.n_hr``, H, W) misses of ``acquired``
    (``grid.n_lr``, H, W; both normalised, slice axis first) when imaged again with slices
    ``thickness`` x the spacing thick (:func:`reacquire` with ``width``); returns the weight it
    was given (0: left unchanged; ``noise_weight``: :func:`residual_gain`).

    Memory: the residual is the size of the acquired volume; the thin volume is updated one
    slice at a time."""
    residual = reacquire(thin, grid, thickness, width)
    np.subtract(acquired, residual, out=residual)  # in place: one acquired-sized array
    gain = residual_gain(residual, noise_weight)
    if gain > 0.0:
        residual *= gain
        for j, (lower, upper, t) in enumerate(zip(grid.lower, grid.upper, grid.frac)):
            thin[j] += (1 - float(t)) * residual[lower] + float(t) * residual[upper]
    return gain
