"""Slice localisation, slice-axis detection and output geometry (issue: geometry is sacred)."""

from __future__ import annotations

import numpy as np
import pytest

from sainr.errors import AxisError, InputImageError, SpacingError
from sainr.geometry import (
    Geometry,
    axis_label,
    detect_slice_axis,
    output_geometry,
    resolve_target_spacing,
    slice_grid,
)


@pytest.mark.parametrize(
    "n_lr, c_lr, c_hr, n_hr, lower, frac",
    [
        (5, 1.0, 1.0, 5, [0, 1, 2, 3, 4], [0, 0, 0, 0, 0]),
        (4, 2.0, 1.0, 7, [0, 0, 1, 1, 2, 2, 3], [0, 0.5, 0, 0.5, 0, 0.5, 0]),
        (3, 2.5, 1.0, 6, [0, 0, 0, 1, 1, 2], [0, 0.4, 0.8, 0.2, 0.6, 0]),
        (3, 3.0, 1.0, 7, [0, 0, 0, 1, 1, 1, 2], [0, 1 / 3, 2 / 3, 0, 1 / 3, 2 / 3, 0]),
        (3, 3.3, 0.7, 10, [0, 0, 0, 0, 0, 1, 1, 1, 1, 1], None),
        (4, 4.5, 0.3, 46, None, None),
    ],
)
def test_slice_localisation_table(n_lr, c_lr, c_hr, n_hr, lower, frac):
    grid = slice_grid(n_lr, c_lr, c_hr)
    assert grid.n_hr == n_hr
    pos = np.arange(n_hr) * c_hr / c_lr
    np.testing.assert_allclose(grid.lower + grid.frac, pos, atol=1e-9)
    assert np.all((grid.frac >= 0) & (grid.frac < 1))
    assert (grid.n_hr - 1) * c_hr <= (n_lr - 1) * c_lr + 1e-9  # never beyond the last slice
    if lower is not None:
        assert grid.lower.tolist() == lower
    if frac is not None:
        np.testing.assert_allclose(grid.frac, frac, atol=1e-9)


def test_rounded_header_spacing_keeps_the_last_slice():
    grid = slice_grid(20, 2.999995, 1.0)  # a 3 mm series as stored in a float32 header
    assert grid.n_hr == 58 and grid.lower[-1] == 19 and grid.frac[-1] == 0.0
    assert grid.lower[3] == 1 and grid.frac[3] == 0.0


def test_exact_multiples_keep_their_slice():
    # 0.1 steps are not exact in binary; an epsilon-less floor would lose slices.
    grid = slice_grid(11, 0.3, 0.1)
    assert grid.n_hr == 31
    assert grid.lower[3] == 1 and grid.frac[3] == 0.0
    assert grid.upper[-1] == 10  # last slice replicated as its own upper neighbour


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@pytest.mark.parametrize("perm", [(0, 1, 2), (2, 0, 1), (1, 2, 0), (0, 2, 1)])
@pytest.mark.parametrize("flip", [(1, 1, 1), (-1, 1, -1)])
@pytest.mark.parametrize("oblique", [False, True])
def test_axis_detection_follows_spacing_under_any_orientation(perm, flip, oblique):
    base = np.eye(3)[:, list(perm)] * np.array(flip)
    direction = (_rotation(0.3, -0.2, 0.5) @ base) if oblique else base
    for thick in range(3):
        spacing = [0.4, 0.4, 0.4]
        spacing[thick] = 3.0
        assert detect_slice_axis(tuple(spacing), direction.ravel()) == thick


def test_ambiguous_axis_needs_to_be_named():
    with pytest.raises(AxisError, match="--axis"):
        detect_slice_axis((1.0, 0.97, 1.05), np.eye(3).ravel())
    assert detect_slice_axis((1.0, 0.97, 1.05), np.eye(3).ravel(), axis=1) == 1


def test_sheared_direction_and_bad_spacing_are_refused():
    sheared = np.array([[1, 0.2, 0], [0, 1, 0], [0, 0, 1]], dtype=float)
    with pytest.raises(InputImageError, match="orthonormal"):
        detect_slice_axis((0.5, 0.5, 3.0), sheared.ravel())
    for spacing in [(0.5, 0.5, 0.0), (0.5, -0.5, 3.0), (0.5, 0.5, float("nan"))]:
        with pytest.raises(InputImageError, match="spacing"):
            detect_slice_axis(spacing, np.eye(3).ravel())


def test_axis_label_names_the_anatomical_plane():
    knee_sagittal = (0, 0, -1, 1, 0, 0, 0, -1, 0)  # the qDESS knee's direction (row-major)
    assert axis_label(knee_sagittal, 2) == "k (R-L, sagittal slices)"
    assert axis_label(_rotation(0.3, 0, 0).ravel(), 2).startswith("k (~S-I")
    assert axis_label(np.eye(3).ravel(), 2) == "k (S-I, axial slices)"


def test_target_spacing_rules():
    geom = Geometry((64, 64, 20), (0.3, 0.35, 3.0), (0, 0, 0), tuple(np.eye(3).ravel()))
    assert resolve_target_spacing(geom, 2, spacing=1.0) == 1.0
    assert resolve_target_spacing(geom, 2, factor=4) == pytest.approx(0.75)
    assert resolve_target_spacing(geom, 2, isotropic=True) == pytest.approx(0.3)
    with pytest.raises(SpacingError, match="not smaller"):
        resolve_target_spacing(geom, 2, spacing=3.0)
    with pytest.raises(SpacingError, match="limit"):
        resolve_target_spacing(geom, 2, spacing=0.1)
    assert resolve_target_spacing(geom, 2, spacing=0.1, force=True) == 0.1
    with pytest.raises(SpacingError, match="exactly one"):
        resolve_target_spacing(geom, 2, spacing=1.0, factor=2.0)


def test_output_geometry_changes_only_the_slice_axis():
    geom = Geometry((64, 48, 20), (0.3, 0.35, 3.0), (1.0, -2.0, 5.0), tuple(_rotation(0.1, 0.2, 0.3).ravel()))
    out = output_geometry(geom, 2, slice_grid(20, 3.0, 1.0))
    assert out.size == (64, 48, 58) and out.spacing == (0.3, 0.35, 1.0)
    assert out.origin == geom.origin and out.direction == geom.direction
    # thin slice j lies at acquired position j / 3 along the slice line
    pts = out.index_to_point(np.array([[0, 0, j] for j in range(58)]))
    ref = geom.index_to_point(np.array([[0, 0, j / 3] for j in range(58)]))
    np.testing.assert_allclose(pts, ref, atol=1e-9)
