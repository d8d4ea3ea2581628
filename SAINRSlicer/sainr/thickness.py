"""Slice thickness from the image itself (torch-free: the Slicer process imports it).

A volume's header rarely says how thick its slices are (NIfTI has no such field), yet the
model must be told: thin slices with gaps (decimation) and contiguous thick slices call for
different reconstructions. The idea of ESPRESO / SMORE: the in-plane axes are sharp, so they
show what the through-plane axis would look like before the slice profile blurred it. Along each
in-plane axis we *simulate* slices at the real slice spacing with a range of candidate
thicknesses (the project's own acquisition model, :mod:`sainr.acquisition`), measure a
scale-free statistic of the simulated slice-to-slice signal, and pick the thickness whose
statistic matches the real through-plane one.

The statistic is the sharpness of the strongest edges met across the slices (tissue
boundaries, sharp in every direction): thin slices see a boundary as a step from one slice
to the next, thick slices spread it over two. It ignores the intensity scale and how much
anatomy lies along each axis. Which edges count as "strongest" is decided in several ways:
the top 1, 3 and 10 % of rises, each ranked by its absolute size and by its size relative to
its line's mean (so that one very bright structure cannot hold all the strongest edges); the
thickness is matched for each selection and the matches are combined by their geometric
mean, which is steadier across anatomies than any one of them. The simulated slices have a
box profile (an RF-selected slice is closer to a box than to a Gaussian of the same full
width at half maximum; the box also fitted the validation and training volumes better). Noise is the same in a voxel whichever axis one reads it along,
while averaging in the simulation removes it; the noise level is measured in-plane and put
back into the simulated slices so that both sides carry the same noise.

Only lines through the foreground count (a robust threshold), and the in-plane lines are
thinned, so the estimate stays quick on a clinical volume (timings in
docs/thickness_estimation.md).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .acquisition import weights
from .errors import SainrError
from .geometry import relative_thickness
from .validation import zero_nonfinite

#: Candidate relative thicknesses (slice thickness / slice spacing) of the simulation.
CANDIDATES: tuple[float, ...] = tuple(float(t) for t in np.geomspace(0.15, 3.5, 17))
#: The slice profile of the simulated candidates.
REFERENCE_PROFILE = "box"
#: Lines (per in-plane axis) kept for the simulation: enough for a stable statistic, few
#: enough for speed.
MAX_LINES = 2000
#: Fewer slices than this leave too few slice pairs for a statistic.
MIN_SLICES = 4
#: Shares of the strongest monotone rises whose sharpness is measured, one match each.
EDGE_QUANTILES: tuple[float, ...] = (0.01, 0.03, 0.1)
#: How a rise is ranked among the strongest: by its size, and by its size relative to its
#: line's mean intensity. One match per ranking and quantile.
RANKINGS: tuple[str, ...] = ("absolute", "relative")
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
#: Rises from which the strongest-edge cut is taken (evenly spread): a stable quantile.
_QUANTILE_SAMPLES = 200_000
#: Through-plane lines kept for the real statistic (evenly thinned): the statistic is stable
#: long before all the lines of a large volume are used.
MAX_REAL_LINES = 40_000


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
SOURCE_ASSUMED = "assumed contiguous"


@dataclass(frozen=True)
class _Sharpness:
    """Per edge selection (quantile x ranking, in :func:`_selections` order), the sum of the
    edge sharpness of the selected edges and how many edges that is."""

    total: np.ndarray
    edges: np.ndarray

    def mean(self) -> np.ndarray:
        """Mean sharpness per selection (NaN where no edge was selected)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.edges > 0, self.total / np.maximum(self.edges, 1), np.nan)

    def __add__(self, other: _Sharpness) -> _Sharpness:
        return _Sharpness(self.total + other.total, self.edges + other.edges)


def _selections() -> list[tuple[float, str]]:
    """(quantile, ranking) of every edge selection, in a fixed order."""
    return [(q, r) for r in RANKINGS for q in EDGE_QUANTILES]


def _no_edges() -> _Sharpness:
    """No edge in any selection: the start of a sum, and the answer for flat lines."""
    n = len(_selections())
    return _Sharpness(np.zeros(n), np.zeros(n))


def _edge_sharpness(lines: np.ndarray) -> _Sharpness:
    """Sharpness of the strongest edges crossed by ``lines`` (L, n), three samples at a time.

    An edge rises monotonically over the two steps of three adjacent samples; its sharpness is
    the share of the rise taken by the larger step: 1 when the edge falls between two samples
    (thin slices see a step), towards 1/2 when slices thicker than their spacing spread it over
    both. Only the strongest rises count (tissue boundaries, not texture or noise), selected
    per :func:`_selections`: the top share of the rises ranked by size ("absolute"), or by
    size over the mean of the line ("relative": a bright structure met by a few lines does not
    hold all the strongest edges). The sharpness itself does not depend on the ranking."""
    step_a = lines[:, 1:-1] - lines[:, :-2]
    step_b = lines[:, 2:] - lines[:, 1:-1]
    rise = np.abs(step_a + step_b)
    monotone = (step_a * step_b >= 0) & (rise > 0)
    if not monotone.any():
        return _no_edges()
    size = rise[monotone]
    larger = np.maximum(np.abs(step_a), np.abs(step_b))[monotone]
    level = np.maximum(np.abs(lines.mean(axis=1, keepdims=True)), np.finfo(np.float32).tiny)
    ranked = {"absolute": size, "relative": size / np.broadcast_to(level, rise.shape)[monotone]}
    step = max(1, size.size // _QUANTILE_SAMPLES)  # the cuts from a sample: fast enough
    levels = 1.0 - np.asarray(EDGE_QUANTILES)
    totals, edges = [], []
    for ranking in RANKINGS:
        key = ranked[ranking]
        cuts = np.quantile(key[::step], levels)
        top = key >= cuts.min()  # the widest selection; the others lie inside it
        key, share = key[top], larger[top] / size[top]
        for cut in cuts:
            strong = key >= cut
            totals.append(float(share[strong].sum()))
            edges.append(float(strong.sum()))
    return _Sharpness(np.asarray(totals), np.asarray(edges))


def _threshold(volume: np.ndarray) -> float:
    """Foreground threshold: a fraction of a high percentile (robust to a few hot voxels)."""
    return FOREGROUND_FRACTION * float(np.percentile(volume, _HIGH_PERCENTILE))


def noise_sigma_of(second_differences: np.ndarray) -> float:
    """Standard deviation of the white noise whose second differences these are (0 for none):
    robust (median absolute deviation) so that edges, which are sparse, barely count. A
    second difference of white noise has variance 6 sigma^2."""
    h = np.asarray(second_differences).ravel()
    if h.size == 0:
        return 0.0
    mad = float(np.median(np.abs(h - np.median(h))))
    return _MAD_TO_SIGMA * mad / math.sqrt(6.0)


def second_difference(volume: np.ndarray, axis: int) -> np.ndarray:
    """x[i+1] - 2 x[i] + x[i-1] along array axis ``axis``, moved last (one shorter by two):
    what :func:`noise_sigma_of` reads the noise from."""
    x = np.moveaxis(volume, axis, -1)
    return x[..., 2:] - 2 * x[..., 1:-1] + x[..., :-2]


def _noise_sigma(volume: np.ndarray, axis: int, threshold: float) -> float:
    """Noise standard deviation from a second difference along in-plane array axis ``axis``,
    over the foreground (:func:`noise_sigma_of`)."""
    inner = np.moveaxis(volume, axis, -1)[..., 1:-1]
    return noise_sigma_of(second_difference(volume, axis)[inner > threshold])


def _foreground_lines(lines: np.ndarray, threshold: float, limit: int | None) -> np.ndarray:
    """The lines (rows of ``lines``) whose mean lies above ``threshold``, evenly thinned to at
    most ``limit``. A line's mean barely changes when its samples are blurred, so the same lines
    are chosen whatever the slice thickness; all their pairs count, edges of the anatomy
    included, on the real and the simulated side alike."""
    useful = np.nonzero(lines.mean(axis=1) > threshold)[0]
    if limit is not None and useful.size > limit:
        useful = useful[:: int(math.ceil(useful.size / limit))]
    return lines[useful]


@functools.lru_cache(maxsize=4096)
def _profile(width: float, offset: float) -> tuple[int, np.ndarray]:
    """:func:`sainr.acquisition.weights` of a slice centred ``offset`` (in [0, 1)) past an HR
    sample: a slice one whole sample further has the same weights one sample further."""
    return weights(REFERENCE_PROFILE, width, offset)


@functools.lru_cache(maxsize=512)
def _sampling(
    n_hr: int, factor: float, thickness: float, phase: float
) -> tuple[tuple[tuple[int, np.ndarray], ...], np.ndarray]:
    """Slices at HR positions ``(phase + n) x factor`` of relative ``thickness``: per slice
    its first HR sample and weights (renormalised at the line's ends, as
    :func:`sainr.acquisition.acquire` does), and each slice's sum of squared weights: the
    share of the voxel noise variance that survives the averaging. Cached: both in-plane
    axes of a square image ask for the same."""
    rows, energy = [], []
    centre = phase * factor
    while centre <= n_hr - 1:
        whole = math.floor(centre)
        first, w = _profile(thickness * factor, round(centre - whole, 9))
        first += whole
        lo, hi = max(first, 0), min(first + len(w), n_hr)
        w = w[lo - first : hi - first]
        w = (w / w.sum()).astype(np.float32)
        rows.append((lo, w))
        energy.append(float(np.sum(w.astype(np.float64) ** 2)))
        centre += factor
    return tuple(rows), np.asarray(energy)


def _simulated_sharpness(
    lines: np.ndarray, factor: float, sigma: float, rng: np.random.Generator
) -> list[_Sharpness]:
    """Per candidate thickness, the edge sharpness of slices simulated along ``lines``
    (L, n_hr) at ``factor`` HR samples apart (no edges when no three slices fit). Each
    phase takes its share of the lines; the noise that the averaging removed is added back, so
    that every simulated slice carries the voxel noise ``sigma`` as a real slice does."""
    groups = np.array_split(lines, len(_PHASES))
    noise = [rng.standard_normal(g.shape, dtype=np.float32) for g in groups]
    out = []
    for t in CANDIDATES:
        sharp = _no_edges()
        for group, phase, z in zip(groups, _PHASES, noise):
            rows, kept = _sampling(lines.shape[1], factor, t, phase)
            if len(rows) < 3 or group.shape[0] == 0:
                continue
            lr = np.stack([group[:, lo : lo + len(w)] @ w for lo, w in rows], axis=1)
            lr += z[:, : len(rows)] * (sigma * np.sqrt(np.clip(1.0 - kept, 0.0, None)))
            sharp = sharp + _edge_sharpness(lr)
        out.append(sharp)
    return out


def _match(real: float, simulated: np.ndarray) -> float:
    """The candidate thickness whose simulated sharpness equals ``real``, interpolated linearly
    in log thickness; the simulated values are made non-increasing first (thicker slices are
    smoother), and a value beyond the candidates' gives the end of the range."""
    t = np.log(np.asarray(CANDIDATES))
    ok = np.isfinite(simulated)
    if ok.sum() < 2:
        raise ThicknessEstimateError("too few in-plane samples to estimate the slice thickness")
    t, e = t[ok], np.minimum.accumulate(simulated[ok])
    # np.interp needs increasing x: sharpness decreases with thickness, so reverse both.
    return float(np.exp(np.interp(real, e[::-1], t[::-1])))


def _combined(real: _Sharpness, simulated: list[_Sharpness]) -> float:
    """Geometric mean of the thicknesses matched per edge selection (real mean sharpness
    against the simulated curve of the same selection)."""
    curves = np.stack([s.mean() for s in simulated], axis=1)  # (selections, candidates)
    values = real.mean()
    if not np.isfinite(values).all():
        raise ThicknessEstimateError("no edges across the slices to estimate the thickness from")
    matched = [_match(float(v), curve) for v, curve in zip(values, curves)]
    return float(np.exp(np.mean(np.log(matched))))


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
    if not np.isfinite(volume).all():  # as --nan-to-zero does for the model
        volume = zero_nonfinite(volume)
    peak = float(np.max(np.abs(volume)))
    if peak > 0:  # the statistic is scale-free; unit scale keeps differences finite
        volume = volume / np.float32(peak)
    if volume.shape[0] < MIN_SLICES:
        raise ThicknessEstimateError(
            f"{volume.shape[0]} slices are too few to estimate the slice thickness "
            f"(at least {MIN_SLICES})"
        )
    threshold = _threshold(volume[:, ::2, ::2])
    real = _foreground_lines(volume.reshape(volume.shape[0], -1).T, threshold, MAX_REAL_LINES)
    if real.shape[0] == 0:
        raise ThicknessEstimateError("too little foreground to estimate the slice thickness")
    some = volume[:: max(1, volume.shape[0] // _NOISE_SLICES)]
    sigma = min(_noise_sigma(some, v, threshold) for v in (1, 2))
    rng = np.random.default_rng(_SEED)
    in_plane = [a for a in (2, 1, 0) if a != axis]  # index axes of volume axes 1 and 2
    simulated: list[_Sharpness] | None = None
    for v, index_axis in zip((1, 2), in_plane):
        factor = float(spacing[axis]) / float(spacing[index_axis])
        lines = np.moveaxis(volume, v, -1).reshape(-1, volume.shape[v])
        lines = _foreground_lines(lines, threshold, MAX_LINES)
        if factor >= 1 and lines.shape[0] > 0:
            curve = _simulated_sharpness(lines, factor, sigma, rng)
            simulated = curve if simulated is None else [a + b for a, b in zip(simulated, curve)]
    if simulated is None:
        raise ThicknessEstimateError("too little in-plane extent to estimate the thickness")
    return _combined(_edge_sharpness(real), simulated)


# --- where a slice thickness comes from ----------------------------------------------------

#: SimpleITK metadata key of DICOM SliceThickness (0018,0050), as the DICOM readers name it.
DICOM_THICKNESS_KEY = "0018|0050"
#: SimpleITK metadata key of an NRRD header's per-axis ``thicknesses`` field.
NRRD_THICKNESS_KEY = "NRRD_thicknesses"
_NRRD_HEADER_BYTES = 65536
#: Header and estimate disagreeing by more than this (relative) earn a warning.
DISAGREEMENT = 0.3
#: The thickness range (relative) of checkpoints that record neither theirs nor their training
#: config: the first thick-slice models, trained on Gaussian and box profiles of 0.5-1.2x the
#: spacing and on pure decimation at factors 2-5 (1/5 to 1/2).
FALLBACK_TRAINED_RANGE = (0.2, 1.2)


def header_thickness(image: sitk.Image, axis: int) -> tuple[float, str] | None:
    """(thickness in mm, source) from the image's header: DICOM SliceThickness (a DICOM
    series' readers and :mod:`sainr.cli` put it in the metadata), else the slice axis' entry
    of an NRRD ``thicknesses`` field; None when neither holds a positive finite number."""
    if image.HasMetaDataKey(DICOM_THICKNESS_KEY):
        value = _positive(image.GetMetaData(DICOM_THICKNESS_KEY).strip().split("\\")[0])
        if value is not None:
            return value, SOURCE_DICOM
    if image.HasMetaDataKey(NRRD_THICKNESS_KEY):
        fields = image.GetMetaData(NRRD_THICKNESS_KEY).split()
        if len(fields) == image.GetDimension():
            value = _positive(fields[axis])
            if value is not None:
                return value, SOURCE_NRRD
    return None


def nrrd_thicknesses(path: str | os.PathLike) -> str | None:
    """The ``thicknesses`` field of an NRRD file's text header (``.nrrd`` / ``.nhdr``), e.g.
    ``"nan nan 1.5"``, or None. ITK reads the field but SimpleITK cannot show its values, so
    the header is read here; put it in the image as :data:`NRRD_THICKNESS_KEY`."""
    if not str(path).lower().endswith((".nrrd", ".nhdr")):
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(_NRRD_HEADER_BYTES)
    except OSError:
        return None
    for raw in head.split(b"\n\n", 1)[0].splitlines()[1:]:
        key, sep, value = raw.decode("latin-1").partition(":")
        if sep and key.strip() == "thicknesses":
            return value.strip()
    return None


def _positive(text: str) -> float | None:
    """``text`` as a positive finite number, else None (NRRD writes ``nan`` for unknown)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def _clipped(relative: float, trained: tuple[float, float] | None) -> tuple[float, str | None]:
    """``relative`` clipped to the trained range, with a warning when it was outside."""
    if trained is None:
        return relative, None
    lo, hi = trained
    inside = min(max(relative, lo), hi)
    if abs(inside - relative) <= 1e-6 * relative:
        return relative, None
    return inside, (
        f"the slice thickness {relative:.2f}x the spacing lies outside the {lo:.2g}-{hi:.2g}x this "
        f"model was trained for; the model is told {inside:.2f}x"
    )


def resolve_slice_thickness(
    image: sitk.Image,
    axis: int,
    given_mm: float | None = None,
    trained: tuple[float, float] | None = None,
) -> SliceThickness:
    """The slice thickness to tell the model: the user's ``given_mm`` (refused outside the
    ``trained`` range), else the header's (DICOM SliceThickness, NRRD thicknesses), else the
    estimate from the voxels (:func:`estimate_relative_thickness`). Header and estimate
    values outside ``trained`` are clipped to it with a warning; a header the estimate
    disagrees with by more than DISAGREEMENT is kept with a warning. When nothing is known and
    the volume is too small to estimate, contiguous slices are assumed, with a warning."""
    spacing = float(image.GetSpacing()[axis])
    if given_mm is not None:
        relative = relative_thickness(given_mm, spacing, trained)
        return SliceThickness(relative * spacing, relative, SOURCE_GIVEN)
    header = header_thickness(image, axis)
    try:
        estimate = estimate_relative_thickness(
            sitk.GetArrayViewFromImage(image), image.GetSpacing(), axis
        )
    except ThicknessEstimateError as exc:
        estimate, why = None, str(exc)
    if header is not None:
        relative = relative_thickness(header[0], spacing)
        notes = []
        if estimate is not None and abs(estimate - relative) > DISAGREEMENT * relative:
            notes.append(
                f"the {header[1]} ({header[0]:.4g} mm) and the image ({estimate * spacing:.2g} "
                "mm thick by its own estimate) disagree; check the header or give "
                "--slice-thickness"
            )
        inside, clip = _clipped(relative, trained)
        warning = "; ".join(notes + ([clip] if clip else [])) or None
        return SliceThickness(inside * spacing, inside, header[1], warning)
    if estimate is None:
        return SliceThickness(
            spacing,
            1.0,
            SOURCE_ASSUMED,
            f"{why}; contiguous slices assumed (thickness = spacing): give --slice-thickness",
        )
    inside, clip = _clipped(estimate, trained)
    return SliceThickness(inside * spacing, inside, SOURCE_ESTIMATE, clip)
