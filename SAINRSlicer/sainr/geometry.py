"""Slice geometry: which voxel axis is through-plane, where each thin slice lies, output grid.

Conventions (SA-INR, corner-aligned grid): thin slice j lies at LR slice position
p_j = j * c_H / c_L. Thin slice 0 coincides with acquired slice 0, so the output keeps the
input's origin and direction cosines and changes only the spacing and size along the slice axis.
All axes here are *voxel index* axes in ITK order (i, j, k) = (x, y, z); a numpy array from
SimpleITK stores them reversed, so index axis ``a`` is array axis ``2 - a``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from .errors import AxisError, InputImageError, SpacingError
from .request import Target

#: Relative tolerance for comparing spacings (never absolute: spacings may be micrometres).
EPS = 1e-6
#: Tolerance (in thin-slice units) when counting and placing thin slices. Header spacings are
#: often rounded (float32 NIfTI, DICOM conversions: 2.999995 mm for 3 mm), so a thin slice may
#: lie up to 0.1 % of its spacing beyond the last acquired slice rather than be dropped.
SLICE_TOL = 1e-3
#: The slice axis must be at least this much coarser than the finer in-plane axis.
MIN_ANISOTROPY = 1.2
#: Refuse spacing reductions beyond this factor unless the caller forces them.
MAX_FACTOR = 20.0
_PATIENT_AXES = ("R-L", "A-P", "S-I")
_PLANES = ("sagittal", "coronal", "axial")


@dataclass(frozen=True)
class Geometry:
    """Voxel grid in patient space (LPS, as SimpleITK): index (i, j, k) -> physical point.

    ``direction`` is the 3x3 matrix whose columns are the unit vectors of the index axes.
    """

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # row-major 3x3, as SimpleITK's GetDirection()

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    def index_to_point(self, index: np.ndarray) -> np.ndarray:
        """Physical points (N, 3) of continuous indices (N, 3)."""
        scaled = np.asarray(index, dtype=np.float64) * np.asarray(self.spacing)
        return np.asarray(self.origin) + scaled @ self.direction_matrix.T


@dataclass(frozen=True)
class SliceGrid:
    """Where each thin (HR) slice lies between the acquired (LR) slices.

    ``lower[j]`` is the acquired slice at or below thin slice j, ``frac[j]`` in [0, 1) the
    fractional distance to the next acquired slice (the last one is replicated).
    """

    n_lr: int
    n_hr: int
    spacing_lr: float
    spacing_hr: float
    lower: np.ndarray
    frac: np.ndarray

    @property
    def upper(self) -> np.ndarray:
        return np.minimum(self.lower + 1, self.n_lr - 1)

    @property
    def factor(self) -> float:
        return self.spacing_lr / self.spacing_hr


def slice_count(n: int, ratio: float) -> int:
    """How many slices ``ratio`` times as dense as ``n`` slices fit from the first of them to
    the last: floor((n - 1) ratio) + 1, the one count used everywhere (thin slices from
    acquired ones with ratio c_L / c_H, acquired from thin ones with its inverse).

    The floor tolerates SLICE_TOL (in units of the new slices), so that a header spacing
    rounded to float32 (3 x 0.7 mm stored as 2.0999999 mm) keeps its last slice: the covered
    extent never shrinks by a slice because of rounding."""
    return int(math.floor((n - 1) * ratio + SLICE_TOL)) + 1


def slice_grid(n_lr: int, spacing_lr: float, spacing_hr: float) -> SliceGrid:
    """Slice localisation for n_lr acquired slices at spacing_lr resampled to spacing_hr.

    n_H = :func:`slice_count` (n_L, c_L / c_H); the last thin slice never lies beyond the
    last acquired slice (up to SLICE_TOL).
    """
    if n_lr < 2:
        raise InputImageError(f"need at least 2 slices along the slice axis, got {n_lr}")
    if not (spacing_lr > 0 and spacing_hr > 0):
        raise SpacingError(f"spacings must be positive, got {spacing_lr} and {spacing_hr} mm")
    ratio = spacing_lr / spacing_hr
    n_hr = slice_count(n_lr, ratio)
    pos = np.arange(n_hr, dtype=np.float64) / ratio
    lower = np.minimum(np.floor(pos + SLICE_TOL / ratio).astype(np.int64), n_lr - 1)
    frac = np.clip(pos - lower, 0.0, None)
    frac[frac * ratio < SLICE_TOL] = 0.0
    return SliceGrid(n_lr, n_hr, float(spacing_lr), float(spacing_hr), lower, frac)


def check_direction(direction: tuple[float, ...] | np.ndarray, tol: float = 1e-4) -> None:
    """Refuse sheared or degenerate direction matrices (columns must be orthonormal)."""
    mat = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(mat)):
        raise InputImageError("the direction matrix contains NaN or Inf; fix the file's header")
    err = np.abs(mat.T @ mat - np.eye(3)).max()
    if err > tol:
        raise InputImageError(
            f"the direction matrix is not orthonormal (sheared or scaled, error {err:.2g}); "
            "resample the volume to an orthogonal grid first"
        )


def check_spacing(spacing: tuple[float, ...]) -> None:
    """Refuse zero, negative or non-finite voxel spacing."""
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise InputImageError(
            f"voxel spacing must be positive and finite, got {tuple(spacing)} mm; "
            "fix the file's header"
        )


def axis_label(direction: tuple[float, ...] | np.ndarray, axis: int) -> str:
    """Human description of an index axis, e.g. 'k (S-I, axial slices)'."""
    col = np.abs(np.asarray(direction, dtype=np.float64).reshape(3, 3)[:, axis])
    main = int(np.argmax(col))
    oblique = "" if col[main] > 0.99 else "~"
    return f"{'ijk'[axis]} ({oblique}{_PATIENT_AXES[main]}, {_PLANES[main]} slices)"


def detect_slice_axis(
    spacing: tuple[float, ...],
    direction: tuple[float, ...] | np.ndarray,
    axis: int | None = None,
    min_anisotropy: float = MIN_ANISOTROPY,
) -> int:
    """The through-plane index axis: the one with the largest spacing.

    The direction cosines are validated (orthonormal) so that "largest spacing" is a
    physical statement; the array layout is never assumed. A near-isotropic volume is
    ambiguous and is refused unless the caller names ``axis``.
    """
    check_spacing(spacing)
    check_direction(direction)
    if axis is not None:
        if axis not in (0, 1, 2):
            raise AxisError(f"axis must be 0, 1 or 2 (i, j, k), got {axis}")
        return axis
    order = np.argsort(spacing)[::-1]
    coarse, second = spacing[order[0]], spacing[order[1]]
    if coarse < min_anisotropy * second:
        raise AxisError(
            f"cannot tell the slice axis: spacing {tuple(round(s, 4) for s in spacing)} mm is "
            f"nearly isotropic (largest/second = {coarse / second:.2f} < {min_anisotropy}); "
            "name it with --axis 0|1|2"
        )
    return int(order[0])


def resolve_target_spacing(geom: Geometry, axis: int, target: Target) -> float:
    """The target slice spacing (mm) of ``target`` for slice axis ``axis`` of ``geom``: finer
    than the current slices, by at most MAX_FACTOR unless forced."""
    spacing = target.spacing
    current = geom.spacing[axis]
    if target.isotropic:
        spacing = min(s for a, s in enumerate(geom.spacing) if a != axis)
    elif target.factor is not None:
        spacing = current / target.factor
    assert spacing is not None  # a Target holds exactly one of the three
    if spacing >= current * (1 - EPS):  # relative: micro-scale spacings are judged alike
        raise SpacingError(
            f"target spacing {spacing:.4g} mm is not smaller than the current slice spacing "
            f"{current:.4g} mm; choose a value below {current:.4g} mm"
        )
    if current / spacing > MAX_FACTOR and not target.force:
        raise SpacingError(
            f"target spacing {spacing:.4g} mm is a {current / spacing:.1f}x reduction of "
            f"{current:.4g} mm (limit {MAX_FACTOR:g}x); use a larger spacing or force it (--force)"
        )
    return float(spacing)


#: Thicker slices than this multiple of their spacing are no MRI acquisition (overlap of 3x):
#: the bound when the model does not say which thicknesses it was trained for.
MAX_RELATIVE_THICKNESS = 3.0


def relative_thickness(
    thickness_mm: float | None,
    spacing_mm: float,
    trained: tuple[float, float] | None = None,
) -> float:
    """Acquired slice thickness / slice spacing, 1 (contiguous slices) when not given.

    Below 1 the slices have gaps, above 1 they overlap. Not a positive number, beyond
    ``MAX_RELATIVE_THICKNESS`` (a typo or a header in other units) or outside the ``trained``
    range of the model (relative; its output is untested there) is refused, with the range."""
    if thickness_mm is None:
        return 1.0
    if not (math.isfinite(thickness_mm) and thickness_mm > 0):
        raise SpacingError(
            f"the slice thickness must be a positive number of mm, got {thickness_mm}"
        )
    ratio = thickness_mm / spacing_mm
    lo, hi = trained if trained is not None else (0.0, MAX_RELATIVE_THICKNESS)
    if not (lo * (1 - EPS) <= ratio <= hi * (1 + EPS)):
        if trained is None:
            raise SpacingError(
                f"a slice thickness of {thickness_mm:g} mm is {ratio:.1f}x the slice spacing "
                f"{spacing_mm:.4g} mm (limit {hi:g}x); give the acquired slice thickness in mm "
                "with --slice-thickness MM (Python: slice_thickness_mm)"
            )
        raise SpacingError(
            f"a slice thickness of {thickness_mm:g} mm is {ratio:.2g}x the slice spacing "
            f"{spacing_mm:.4g} mm; this model was trained for {lo:.2g}-{hi:.2g}x "
            f"({lo * spacing_mm:.3g}-{hi * spacing_mm:.3g} mm here); give a thickness in that "
            "range, or --slice-thickness auto"
        )
    return float(ratio)


def output_geometry(geom: Geometry, axis: int, grid: SliceGrid) -> Geometry:
    """Same origin and direction, new spacing and size on the slice axis only."""
    size = list(geom.size)
    spacing = list(geom.spacing)
    size[axis] = grid.n_hr
    spacing[axis] = grid.spacing_hr
    return replace(geom, size=tuple(size), spacing=tuple(spacing))
