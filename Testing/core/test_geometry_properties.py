"""Geometry properties under random grids (hypothesis): spacings, factors, origins, flips, axis
permutations and oblique rotations.

For every random volume the result's thin slices lie on the input's slice line at the requested
spacing (never beyond the last acquired slice), the acquired slices' physical positions are
reproduced when the factor is an integer, the in-plane grid is untouched, and the written NIfTI
reads back the same in SimpleITK (LPS) and nibabel (RAS). A tiny random model is used: the
voxel values do not matter here, only where they are.
"""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import slice_points
from sainr import Target, reduce_spacing
from sainr.geometry import SLICE_TOL, slice_grid

PROPERTY = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,  # the same examples on every CI run
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # tiny_model is read-only
)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = (f(a) for a in (ax, ay, az) for f in (math.cos, math.sin))
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@st.composite
def volumes(draw) -> tuple[sitk.Image, int, dict]:
    """(image, its slice axis, reduce_spacing target kwargs) on a random oblique grid."""
    axis = draw(st.integers(0, 2))
    in_plane = [draw(st.floats(0.2, 2.0)) for _ in range(2)]
    spacing = in_plane[:axis] + [max(in_plane) * draw(st.floats(1.3, 8.0))] + in_plane[axis:]
    size = [draw(st.integers(5, 9)) for _ in range(3)]
    size[axis] = draw(st.integers(2, 5))
    perm = draw(st.permutations(range(3)))
    flips = np.array([draw(st.sampled_from([-1.0, 1.0])) for _ in range(3)])
    direction = np.eye(3)[:, perm] * flips
    if draw(st.booleans()):
        angles = [draw(st.floats(-math.pi, math.pi)) for _ in range(3)]
        direction = _rotation(*angles) @ direction
    origin = [draw(st.floats(-300.0, 300.0)) for _ in range(3)]
    array = np.random.default_rng(draw(st.integers(0, 99))).random(size[::-1], dtype=np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(tuple(direction.ravel()))
    kind = draw(st.sampled_from(["integer factor", "factor", "spacing"]))
    if kind == "integer factor":
        target = {"factor": draw(st.integers(2, 5))}
    elif kind == "factor":
        target = {"factor": draw(st.floats(1.2, 6.0))}
    else:
        target = {"spacing": spacing[axis] / draw(st.floats(1.2, 6.0))}
    return image, axis, target


@PROPERTY
@given(case=volumes())
def test_thin_slices_lie_on_the_slice_line_at_the_requested_spacing(
    case, tiny_model, tmp_path_factory
):
    image, axis, target = case
    out = reduce_spacing(image, Target(**target), model=tiny_model).image
    c_lr, n_lr = image.GetSpacing()[axis], image.GetSize()[axis]
    c_hr, n_hr = out.GetSpacing()[axis], out.GetSize()[axis]
    expected = target.get("spacing") or c_lr / target["factor"]
    assert math.isclose(c_hr, expected, rel_tol=1e-12)

    # in-plane grid untouched: origin, direction, in-plane sizes and spacings are identical
    assert out.GetOrigin() == image.GetOrigin() and out.GetDirection() == image.GetDirection()
    for a in {0, 1, 2} - {axis}:
        assert out.GetSize()[a] == image.GetSize()[a]
        assert out.GetSpacing()[a] == image.GetSpacing()[a]

    # thin slice j lies at acquired position j * c_hr / c_lr, on the acquired slice line
    pts = slice_points(out, axis, range(n_hr))
    np.testing.assert_allclose(
        pts, slice_points(image, axis, np.arange(n_hr) * c_hr / c_lr), atol=1e-9
    )
    line = np.asarray(image.GetDirection()).reshape(3, 3)[:, axis]
    offsets = pts - np.asarray(image.GetOrigin())
    np.testing.assert_allclose(offsets, np.outer(np.arange(n_hr) * c_hr, line), atol=1e-9)
    # as many thin slices as fit up to the last acquired slice, none beyond it
    extent = (n_lr - 1) * c_lr
    assert (n_hr - 1) * c_hr <= extent + SLICE_TOL * c_hr
    assert n_hr * c_hr >= extent + SLICE_TOL * c_hr - 1e-9

    factor = target.get("factor")
    if isinstance(factor, int):  # every acquired slice is reproduced at thin slice factor * i
        np.testing.assert_allclose(
            slice_points(out, axis, range(0, n_hr, factor)),
            slice_points(image, axis, range(n_lr)),
            atol=1e-9,
        )

    _check_nifti_round_trip(out, tmp_path_factory.mktemp("nifti") / "out.nii.gz")


def _lps_affine(image: sitk.Image) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    return affine


def _check_nifti_round_trip(out: sitk.Image, path) -> None:
    """The written file reads back with the same grid and voxels in SimpleITK and nibabel
    (NIfTI stores float32 geometry: 1e-4 mm)."""
    sitk.WriteImage(out, str(path))
    back = sitk.ReadImage(str(path))
    assert back.GetSize() == out.GetSize()
    np.testing.assert_allclose(_lps_affine(back), _lps_affine(out), atol=1e-4)
    nii = nib.load(str(path))
    ras = np.eye(4)
    ras[:3] = LPS_TO_RAS @ _lps_affine(out)[:3]
    np.testing.assert_allclose(nii.affine, ras, atol=1e-4)
    np.testing.assert_allclose(nii.header.get_zooms(), out.GetSpacing(), rtol=1e-6)
    voxels = np.asarray(nii.dataobj)  # (i, j, k)
    np.testing.assert_array_equal(voxels, sitk.GetArrayViewFromImage(back).transpose(2, 1, 0))
    # every voxel's physical position agrees between the two readers
    corner = np.array([[0, 0, 0], list(np.asarray(out.GetSize()) - 1)], dtype=float)
    for index in corner:
        lps = back.TransformContinuousIndexToPhysicalPoint(index.tolist())
        np.testing.assert_allclose(
            nib.affines.apply_affine(nii.affine, index), LPS_TO_RAS @ lps, atol=1e-4
        )


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    n_lr=st.integers(2, 400),
    c_lr=st.floats(0.1, 12.0),
    factor=st.one_of(st.integers(2, 20), st.floats(1.01, 20.0)),
)
def test_slice_grid_for_any_spacing_and_header_rounding(n_lr, c_lr, factor):
    """Thin slice j sits at acquired position j c_H / c_L, between its lower and upper acquired
    slices, none beyond the last; with an integer factor every acquired slice is reproduced
    exactly, also when the header stores the spacing as float32."""
    c_hr = c_lr / factor
    for c_header in (c_lr, float(np.float32(c_lr))):
        grid = slice_grid(n_lr, c_header, c_hr)
        pos = np.arange(grid.n_hr) * c_hr / c_header
        np.testing.assert_allclose(grid.lower + grid.frac, pos, atol=SLICE_TOL / factor)
        assert np.all((grid.frac >= 0) & (grid.frac < 1)) and grid.lower.max() <= n_lr - 1
        assert pos[-1] <= n_lr - 1 + SLICE_TOL  # never beyond the last acquired slice
        assert grid.n_hr * c_hr / c_header > n_lr - 1  # and no thin slice left out
        if isinstance(factor, int):
            assert grid.n_hr == (n_lr - 1) * factor + 1
            assert grid.lower[::factor].tolist() == list(range(n_lr))
            assert not grid.frac[::factor].any()
