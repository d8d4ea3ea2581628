"""Slice thickness from the image itself (torch-free: the Slicer process imports it).

A volume's header rarely says how thick its slices are (NIfTI has no such field), yet the
model must be told: thin slices with gaps (decimation) and contiguous thick slices call for
different reconstructions. The idea of ESPRESO / SMORE: the in-plane axes are sharp, so they
show what the through-plane axis would look like before the slice profile blurred it. Along each
in-plane axis we *simulate* slices at the real slice spacing with a range of candidate
thicknesses (the project's own acquisition model, :mod:`sainr.degradation`), measure a
scale-free statistic of the simulated slice-to-slice signal, and pick the thickness whose
statistic matches the real through-plane one.

The statistic is the mean squared difference of adjacent slices: thicker slices average more
tissue and differ less from their neighbours. Real and simulated slices come from the same
volume, so its intensity scale cancels. Noise is the same in a voxel whichever axis one reads
it along, while averaging in the simulation removes it; the noise level is measured in-plane
and put back into the simulated slices so that both sides carry the same noise.

Only lines through the foreground count (a robust threshold), and the in-plane lines are
thinned, so the estimate takes a fraction of a second on a clinical volume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .degradation import weights
from .errors import SainrError

#: Candidate relative thicknesses (slice thickness / slice spacing) of the simulation.
CANDIDATES: tuple[float, ...] = tuple(float(t) for t in np.geomspace(0.15, 2.5, 15))
#: The slice profile of the simulated candidates.
REFERENCE_PROFILE = "gaussian"
#: Lines (per in-plane axis) kept for the simulation: enough for a stable statistic, few
#: enough for speed.
MAX_LINES = 2000
#: Fewer slices than this leave too few slice pairs for a statistic.
MIN_SLICES = 4
#: Foreground: voxels above this fraction of the volume's high percentile.
FOREGROUND_FRACTION = 0.1
_HIGH_PERCENTILE = 99.0
#: Median absolute deviation to standard deviation of a normal distribution.
_MAD_TO_SIGMA = 1.4826
#: Offsets (fractions of the slice spacing) of the simulated slice grids: slices fall anywhere.
_PHASES = (0.0, 1 / 3, 2 / 3)
_SEED = 20231
#: Slices on which the noise is measured (evenly spread): plenty of voxels, a fraction of the time.
_NOISE_SLICES = 8


class ThicknessEstimateError(SainrError):
    """The volume holds too little to estimate its slice thickness (too few slices or lines)."""


@dataclass(frozen=True)
class SliceThickness:
    """A resolved slice thickness: ``mm``, ``relative`` (thickness / slice spacing), where it
    came from (``source``, human text) and an optional ``warning`` for the user."""

    mm: float
    relative: float
    source: str
    warning: str | None = None


#: Sources of a slice thickness, in the order they are consulted.
SOURCE_GIVEN = "given"
SOURCE_DICOM = "DICOM SliceThickness"
SOURCE_NRRD = "NRRD thicknesses"
SOURCE_ESTIMATE = "estimated from the image"


@dataclass(frozen=True)
class _Energy:
    """Sum of squared adjacent-sample differences and how many pairs it holds."""

    total: float
    pairs: int


def _difference_energy(lines: np.ndarray) -> _Energy:
    """Squared differences of adjacent samples along the last axis of ``lines`` (L, n)."""
    d = np.diff(lines, axis=-1)
    return _Energy(float(np.sum(d * d, dtype=np.float64)), int(d.size))


def _threshold(volume: np.ndarray) -> float:
    """Foreground threshold: a fraction of a high percentile (robust to a few hot voxels)."""
    return FOREGROUND_FRACTION * float(np.percentile(volume, _HIGH_PERCENTILE))


def _noise_sigma(volume: np.ndarray, axis: int, threshold: float) -> float:
    """Noise standard deviation from a second difference along in-plane array axis ``axis``:
    robust (median absolute deviation) so that edges, which are sparse, barely count."""
    x = np.moveaxis(volume, axis, -1)
    h = x[..., 2:] - 2 * x[..., 1:-1] + x[..., :-2]
    h = h[x[..., 1:-1] > threshold]
    if h.size == 0:
        return 0.0
    mad = float(np.median(np.abs(h - np.median(h))))
    return _MAD_TO_SIGMA * mad / math.sqrt(6.0)  # a second difference of white noise: 6 sigma^2


def _foreground_lines(lines: np.ndarray, threshold: float, limit: int | None) -> np.ndarray:
    """The lines (rows of ``lines``) whose mean lies above ``threshold``, evenly thinned to at
    most ``limit``. A line's mean barely changes when its samples are blurred, so the same lines
    are chosen whatever the slice thickness; all their pairs count, edges of the anatomy
    included, on the real and the simulated side alike."""
    useful = np.nonzero(lines.mean(axis=1) > threshold)[0]
    if limit is not None and useful.size > limit:
        useful = useful[:: int(math.ceil(useful.size / limit))]
    return lines[useful]


def _sampling_matrix(
    n_hr: int, factor: float, thickness: float, phase: float
) -> tuple[np.ndarray, np.ndarray]:
    """Slices at HR positions ``(phase + n) x factor`` of relative ``thickness`` as a
    (n_lr, n_hr) weight matrix (weights renormalised at the line's ends, as
    :func:`sainr.degradation.acquire` does), and each slice's sum of squared weights: the share
    of the voxel noise variance that survives the averaging."""
    rows, energy = [], []
    centre = phase * factor
    while centre <= n_hr - 1:
        first, w = weights(REFERENCE_PROFILE, thickness * factor, centre)
        lo, hi = max(first, 0), min(first + len(w), n_hr)
        w = w[lo - first : hi - first] / w[lo - first : hi - first].sum()
        row = np.zeros(n_hr, dtype=np.float32)
        row[lo:hi] = w
        rows.append(row)
        energy.append(float(np.sum(w**2)))
        centre += factor
    return np.stack(rows), np.asarray(energy)


def _simulated_energies(
    lines: np.ndarray, factor: float, sigma: float, rng: np.random.Generator
) -> np.ndarray:
    """Per candidate thickness, the mean squared adjacent-slice difference of slices simulated
    along ``lines`` (L, n_hr) at ``factor`` HR samples apart (NaN when no pair fits). Each
    phase takes its share of the lines; the noise that the averaging removed is added back, so
    that every simulated slice carries the voxel noise ``sigma`` as a real slice does."""
    groups = np.array_split(lines, len(_PHASES))
    noise = [rng.standard_normal(g.shape, dtype=np.float32) for g in groups]
    out = []
    for t in CANDIDATES:
        total, pairs = 0.0, 0
        for group, phase, z in zip(groups, _PHASES, noise):
            mat, kept = _sampling_matrix(lines.shape[1], factor, t, phase)
            if mat.shape[0] < 2 or group.shape[0] == 0:
                continue
            lr = group @ mat.T
            lr += z[:, : mat.shape[0]] * (sigma * np.sqrt(np.clip(1.0 - kept, 0.0, None)))
            e = _difference_energy(lr)
            total, pairs = total + e.total, pairs + e.pairs
        out.append(total / pairs if pairs else math.nan)
    return np.asarray(out)


def _match(real: float, simulated: np.ndarray) -> float:
    """The candidate thickness whose simulated energy equals ``real``, interpolated linearly in
    log thickness; the simulated energies are made non-increasing first (thicker slices are
    smoother), and an energy beyond the candidates' gives the end of the range."""
    t = np.log(np.asarray(CANDIDATES))
    ok = np.isfinite(simulated)
    if ok.sum() < 2:
        raise ThicknessEstimateError("too few in-plane samples to estimate the slice thickness")
    t, e = t[ok], np.minimum.accumulate(simulated[ok])
    # np.interp needs increasing x: energies decrease with thickness, so reverse both.
    return float(np.exp(np.interp(real, e[::-1], t[::-1])))


def estimate_relative_thickness(
    array: np.ndarray, spacing: tuple[float, float, float], axis: int
) -> float:
    """Slice thickness / slice spacing of a volume, estimated from its voxels.

    ``array`` is in SimpleITK's numpy order (k, j, i), ``spacing`` in index order (i, j, k)
    as SimpleITK gives it, ``axis`` the slice axis as an index axis (0, 1, 2 = i, j, k, see
    :func:`sainr.geometry.detect_slice_axis`). About 1 / factor for thin slices kept every
    factor-th, 1 for contiguous thick slices, above 1 for overlapping ones; the result lies in
    [min(CANDIDATES), max(CANDIDATES)]. Raises :class:`ThicknessEstimateError` when the volume
    has fewer than MIN_SLICES slices or too little foreground.
    """
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2 (i, j, k), got {axis}")
    if np.ndim(array) != 3:
        raise ValueError(f"a 3D array is needed, got {np.ndim(array)} dimensions")
    volume = np.moveaxis(np.asarray(array, dtype=np.float32), 2 - axis, 0)
    if volume.shape[0] < MIN_SLICES:
        raise ThicknessEstimateError(
            f"{volume.shape[0]} slices are too few to estimate the slice thickness "
            f"(at least {MIN_SLICES})"
        )
    threshold = _threshold(volume[:, ::2, ::2])
    real = _foreground_lines(volume.reshape(volume.shape[0], -1).T, threshold, None)
    if real.shape[0] == 0:
        raise ThicknessEstimateError("too little foreground to estimate the slice thickness")
    some = volume[:: max(1, volume.shape[0] // _NOISE_SLICES)]
    sigma = min(_noise_sigma(some, v, threshold) for v in (1, 2))
    rng = np.random.default_rng(_SEED)
    in_plane = [a for a in (2, 1, 0) if a != axis]  # index axes of volume axes 1 and 2
    curves, counts = [], []
    for v, index_axis in zip((1, 2), in_plane):
        factor = float(spacing[axis]) / float(spacing[index_axis])
        lines = np.moveaxis(volume, v, -1).reshape(-1, volume.shape[v])
        lines = _foreground_lines(lines, threshold, MAX_LINES)
        if factor >= 1 and lines.shape[0] > 0:
            curves.append(_simulated_energies(lines, factor, sigma, rng))
            counts.append(lines.shape[0])
    if not curves:
        raise ThicknessEstimateError("too little in-plane extent to estimate the thickness")
    simulated = np.average(np.stack(curves), axis=0, weights=np.asarray(counts, dtype=float))
    return _match(_difference_energy(real).total / _difference_energy(real).pairs, simulated)
