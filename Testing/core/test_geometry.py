"""Slice localisation, slice-axis detection and output geometry (issue: geometry is sacred)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from sainr.acquisition import lr_count
from sainr.errors import AxisError, InputImageError, SpacingError
from sainr.evaluation.flops import Slab
from sainr.geometry import (
    SLICE_TOL,
    Geometry,
    axis_label,
    detect_slice_axis,
    output_geometry,
    resolve_target_spacing,
    slice_count,
    slice_grid,
)
from sainr.planning import plan_grid
from sainr.request import Target


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
    assert resolve_target_spacing(geom, 2, Target(spacing=1.0)) == 1.0
    assert resolve_target_spacing(geom, 2, Target(factor=4)) == pytest.approx(0.75)
    assert resolve_target_spacing(geom, 2, Target(isotropic=True)) == pytest.approx(0.3)
    with pytest.raises(SpacingError, match="not smaller"):
        resolve_target_spacing(geom, 2, Target(spacing=3.0))
    with pytest.raises(SpacingError, match="limit"):
        resolve_target_spacing(geom, 2, Target(spacing=0.1))
    assert resolve_target_spacing(geom, 2, Target(spacing=0.1, force=True)) == 0.1
    for given in ({"spacing": 1.0, "factor": 2.0}, {}, {"factor": 2.0, "isotropic": True}):
        with pytest.raises(SpacingError, match="exactly one"):
            Target(**given)
    with pytest.raises(SpacingError, match="factor must be a finite number > 1"):
        Target(factor=float("nan"))
    with pytest.raises(SpacingError, match="positive number of mm"):
        Target(spacing=-1.0)


def test_output_geometry_changes_only_the_slice_axis():
    geom = Geometry(
        (64, 48, 20), (0.3, 0.35, 3.0), (1.0, -2.0, 5.0), tuple(_rotation(0.1, 0.2, 0.3).ravel())
    )
    out = output_geometry(geom, 2, slice_grid(20, 3.0, 1.0))
    assert out.size == (64, 48, 58) and out.spacing == (0.3, 0.35, 1.0)
    assert out.origin == geom.origin and out.direction == geom.direction
    # thin slice j lies at acquired position j / 3 along the slice line
    pts = out.index_to_point(np.array([[0, 0, j] for j in range(58)]))
    ref = geom.index_to_point(np.array([[0, 0, j / 3] for j in range(58)]))
    np.testing.assert_allclose(pts, ref, atol=1e-9)


#: (acquired, target) slice spacings as headers store them: float32 rounds 4.5 and 1.5 exactly,
#: 2.1 (= 3 x 0.7), 3.5 and 0.7 not (2.0999999 mm, 3.5000000 mm, 0.69999999 mm).
FLOAT32_SPACINGS = [
    (np.float32(4.5), 1.5),
    (np.float32(4.5), np.float32(1.5)),
    (np.float32(1.5), 0.5),
    (np.float32(2.1), 0.7),
    (np.float32(3.5), 0.7),
    (np.float32(4.2), np.float32(0.7)),
    (np.float32(4.5), 0.9),
    (2.1, np.float32(0.7)),
    (np.float32(0.7 * 3), 0.7),
]


def _old_count(n: int, ratio: float) -> int:
    """The count with the 1e-6 tolerance the data, flops and adaptation code used before."""
    return int(np.floor((n - 1) * ratio + 1e-6)) + 1


@pytest.mark.parametrize(("thick", "thin"), FLOAT32_SPACINGS)
def test_float32_header_spacings_keep_every_slice_and_the_extent(thick, thin):
    n = 40
    k = round(float(thick) / float(thin))
    grid = slice_grid(n, float(thick), float(thin))
    assert grid.n_hr == slice_count(n, float(thick) / float(thin)) == (n - 1) * k + 1
    # the last thin slice lies on the last acquired one: the covered extent is unchanged
    assert (grid.n_hr - 1) * float(thin) == pytest.approx((n - 1) * float(thick), rel=1e-6)
    assert grid.lower[-1] + grid.frac[-1] == pytest.approx(n - 1, abs=SLICE_TOL)
    # and back: the thin slices hold exactly the n acquired ones
    assert lr_count(grid.n_hr, float(thick) / float(thin)) == n
    assert Slab(side=1, lr_slices=n).queries(float(thick) / float(thin)) == grid.n_hr  # FLOPs


def test_the_float32_cases_are_ones_the_old_tolerance_lost_a_slice_on():
    lost = [
        (t, h)
        for t, h in FLOAT32_SPACINGS
        if _old_count(40, float(t) / float(h)) < 39 * round(t / h) + 1
    ]
    assert lost  # e.g. 2.0999999 mm / 0.7 mm = 2.99999986: 117 thin slices instead of 118


def test_a_float32_header_is_planned_with_every_slice():
    image = sitk.Image(8, 8, 40, sitk.sitkFloat32)
    image.SetSpacing((0.7, 0.7, float(np.float32(2.1))))
    plan = plan_grid(image, 0.7)
    axis, out = plan.axis, plan.output
    assert axis == 2 and out.size[2] == 118
    last = out.origin[2] + (out.size[2] - 1) * out.spacing[2]
    assert last == pytest.approx(image.GetOrigin()[2] + 39 * image.GetSpacing()[2], abs=1e-4)
