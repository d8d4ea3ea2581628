"""Python API on real MRI: geometry of the result, input untouched, values, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import KNEE_FAIR, slice_points
from sainr import ReduceOptions, Target, reduce_spacing
from sainr.acquisition import Acquisition, acquire, lr_count
from sainr.errors import AxisError, InputImageError, SpacingError
from sainr.evaluation.baselines import bspline_interpolate, linear_interpolate
from sainr.evaluation.metrics import psnr
from sainr.geometry import slice_grid
from sainr.intensity import robust_scale
from sainr.runtime.inference import super_resolve
from sainr.runtime.weights import load_model


@pytest.fixture(scope="module")
def model():
    """The shipped default model (real weights from the project's training script)."""
    return load_model()


def test_output_geometry_matches_simpleitk_index_to_point(knee_thick, model):
    result = reduce_spacing(knee_thick, 1.0, model=model)
    out = result.image
    assert out.GetSize() == (64, 64, 58)
    np.testing.assert_allclose(out.GetSpacing(), (0.3125, 0.3125, 1.0), atol=1e-6)
    assert out.GetOrigin() == knee_thick.GetOrigin()
    assert out.GetDirection() == knee_thick.GetDirection()
    c_lr = knee_thick.GetSpacing()[2]
    expected = slice_points(knee_thick, 2, np.arange(58) * 1.0 / c_lr)
    np.testing.assert_allclose(slice_points(out, 2, range(58)), expected, atol=1e-6)
    assert result.mask.GetSize() == out.GetSize() and result.mask.GetOrigin() == out.GetOrigin()
    assert result.info["axis"] == 2 and "sagittal" in result.info["axis_label"]


def _oblique_permuted(image: sitk.Image) -> sitk.Image:
    """Same voxels, slice axis moved to index axis i, rotated oblique direction cosines.

    New index axes (i, j, k) = old (k, i, j): the in-plane order is kept, so the network sees
    the very same array and the result must be the same voxels."""
    arr = sitk.GetArrayFromImage(image)  # (k, j, i)
    moved = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(arr, (1, 2, 0))))
    sp = image.GetSpacing()
    moved.SetSpacing((sp[2], sp[0], sp[1]))
    a, b = 0.35, -0.2
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    moved.SetDirection(tuple((rz @ rx).ravel()))
    moved.SetOrigin((12.5, -40.25, 7.0))
    return moved


def test_oblique_permuted_volume_keeps_every_acquired_slice_in_place(knee_thick, model):
    image = _oblique_permuted(knee_thick)
    before = sitk.GetArrayFromImage(image).copy()
    result = reduce_spacing(image, Target(factor=4), model=model)
    out = result.image
    assert result.info["axis"] == 0
    assert out.GetSize() == (77, 64, 64)  # (i, j, k) = (thin slices, old i, old j)
    assert out.GetDirection() == image.GetDirection() and out.GetOrigin() == image.GetOrigin()
    # acquired slice i lies at output slice 4 i, at the same physical position
    np.testing.assert_allclose(
        slice_points(out, 0, range(0, 77, 4)), slice_points(image, 0, range(20)), atol=1e-6
    )
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), before)  # input untouched
    # the permuted run gives the same voxels as the native one (layout is not assumed)
    native = sitk.GetArrayFromImage(reduce_spacing(knee_thick, Target(factor=4), model=model).image)
    moved_back = np.transpose(sitk.GetArrayFromImage(out), (2, 0, 1))
    np.testing.assert_array_equal(moved_back, native)


def test_values_are_real_intensities_and_beat_linear_on_real_knee(knee_image, knee_thick, model):
    """Thin slices in the input's units and type, closer to the withheld 1.5 mm slices than
    linear interpolation is. The kept slices are the original 1.5 mm thin ones (gaps
    between them), and the model is told so."""
    result = reduce_spacing(knee_thick, 1.5, ReduceOptions(slice_thickness_mm=1.5), model=model)
    out = sitk.GetArrayFromImage(result.image)
    truth = sitk.GetArrayFromImage(knee_image)[: out.shape[0]].astype(np.float64)
    assert out.dtype == np.int16 and out.shape == truth.shape
    lr = sitk.GetArrayFromImage(knee_thick).astype(np.float64)
    linear = np.empty_like(truth)
    linear[0::2] = lr
    linear[1::2] = (lr[:-1] + lr[1:]) / 2
    assert psnr(out, truth) > psnr(linear, truth) + 0.2
    assert 0.0 < result.info["gated_fraction"] < 1.0


def test_thick_slices_are_sharpened_where_acquired_and_between(knee_image, model):
    """Contiguous 3 mm slices (a Gaussian profile of FWHM 3 mm over the real 1.5 mm knee, as
    a clinical acquisition averages tissue), the model told that thickness: the result beats
    linear and B-spline interpolation, and its acquired slices are closer to the sharp truth
    than the input's. (Default options tell it the image estimate instead; the evaluation
    reports that case, docs/evaluation/test_current/.)"""
    sharp = sitk.GetArrayFromImage(knee_image).astype(np.float32)
    acq = Acquisition(2.0, 1.0, "gaussian")
    thick = acquire(sharp, acq, lr_count(len(sharp), 2.0))
    image = sitk.GetImageFromArray(thick)
    spacing = 2 * knee_image.GetSpacing()[2]
    image.SetSpacing((*knee_image.GetSpacing()[:2], spacing))
    told = ReduceOptions(slice_thickness_mm=acq.relative_thickness * spacing)
    out = sitk.GetArrayFromImage(
        reduce_spacing(image, knee_image.GetSpacing()[2], told, model=model).image
    )
    truth = sharp[: out.shape[0]]
    grid = slice_grid(len(thick), 2.0, 1.0)
    best = max(
        psnr(linear_interpolate(thick, grid), truth), psnr(bspline_interpolate(thick, grid), truth)
    )
    assert psnr(out, truth) > best + 0.3
    assert psnr(out[0::2], truth[0::2]) > psnr(thick[: len(out[0::2])], truth[0::2]) + 0.3


def test_consistency_step_brings_the_result_closer_to_the_truth(model):
    """Contiguous 3 mm box slices of the real 1 mm knee FAIR crop (little noise), the model
    told that thickness: after the data consistency step the result is closer to the sharp
    truth than the network's own output, and the summary reports the step's weight."""
    knee = sitk.ReadImage(str(KNEE_FAIR))
    sharp = sitk.GetArrayFromImage(knee).astype(np.float32)
    thick = acquire(sharp, Acquisition(3.0, 1.0, "box"), lr_count(len(sharp), 3.0))
    image = sitk.GetImageFromArray(thick)
    image.SetSpacing((*knee.GetSpacing()[:2], 3 * knee.GetSpacing()[2]))
    told = ReduceOptions(slice_thickness_mm=3 * knee.GetSpacing()[2])
    result = reduce_spacing(image, knee.GetSpacing()[2], told, model=model)
    out = sitk.GetArrayFromImage(result.image)
    scale = robust_scale(thick)
    grid = slice_grid(len(thick), 3.0, 1.0)
    network, _ = super_resolve(model, scale.normalize(thick), grid, torch.device("cpu"))
    network = scale.denormalize(np.maximum(network, 0))
    truth = sharp[: out.shape[0]]
    assert 0.3 < result.info["consistency_weight"] <= 1.0
    assert psnr(out, truth) > psnr(network, truth) + 0.2


def test_bad_inputs_raise_clear_errors(knee_thick, model):
    arr = sitk.GetArrayFromImage(knee_thick).astype(np.float32)
    nan = arr.copy()
    nan[3, 10, 10] = np.nan
    nan_img = sitk.GetImageFromArray(nan)
    nan_img.CopyInformation(knee_thick)
    cases = [
        (sitk.GetImageFromArray(arr[0]), InputImageError, "2D image"),
        (sitk.JoinSeries([knee_thick, knee_thick]), InputImageError, "4D .*extract one 3D frame"),
        (sitk.Compose([knee_thick] * 3), InputImageError, "RGB.*extract one scalar"),
        (knee_thick[:, :, :1], InputImageError, "at least 2 slices"),
        (nan_img, InputImageError, "1 NaN/Inf voxels"),
        (knee_thick, SpacingError, "not smaller than the current slice spacing 3 mm"),
        (sitk.ReadImage(str(KNEE_FAIR)), AxisError, "nearly isotropic.*--axis"),
    ]
    for image, error, pattern in cases:
        target = 3.0 if error is SpacingError else 0.5
        with pytest.raises(error, match=pattern):
            reduce_spacing(image, target, model=model)


def test_nan_voxels_can_be_replaced_on_request(knee_thick, model):
    arr = sitk.GetArrayFromImage(knee_thick).astype(np.float32)
    arr[5, 20, 20] = np.inf
    image = sitk.GetImageFromArray(arr)
    image.CopyInformation(knee_thick)
    out = sitk.GetArrayFromImage(
        reduce_spacing(image, 1.0, ReduceOptions(nan_policy="zero"), model=model).image
    )
    assert np.isfinite(out).all()


def test_a_bad_image_is_refused_before_any_model_is_built(knee_thick, monkeypatch):
    """The plan comes first (the trained thickness range read from the checkpoint alone): NaN
    voxels are refused with their message before seconds go into building a model."""
    import sainr.runtime.weights

    built = []
    monkeypatch.setattr(sainr.runtime.weights, "build_model", lambda ckpt, name: built.append(name))
    arr = sitk.GetArrayFromImage(knee_thick).astype(np.float32)
    arr[5, 20, 20] = np.nan
    image = sitk.GetImageFromArray(arr)
    image.CopyInformation(knee_thick)
    with pytest.raises(InputImageError, match="NaN"):
        reduce_spacing(image, 1.0, weights="default")
    assert built == []


def test_the_torch_free_default_memory_budget_is_the_inference_default():
    """ReduceOptions lives where PyTorch may be missing, so it repeats the budget's value."""
    from sainr.runtime.inference import DEFAULT_BUDGET_MB

    assert ReduceOptions().memory_mb == DEFAULT_BUDGET_MB
