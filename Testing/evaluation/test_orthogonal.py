"""The honest-evaluation pieces: B-spline + Wiener, foreground PSNR, the three-orientation
imaging operator (geometry in patient space) and the test-set preparation."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import DATA
from sainr.acquisition import Acquisition
from sainr.evaluation.baselines import (
    bspline_interpolate,
    bspline_wiener,
    slice_profile_psf,
    wiener_deconvolve,
)
from sainr.evaluation.cases import load_case, simulate
from sainr.evaluation.metrics import foreground_mask, psnr
from sainr.evaluation.orthogonal import (
    compare,
    cropped_to_overlap,
    image_like,
    register_rigid,
    thick_stack,
)

QDESS = DATA / "knee_qdess_crop_1p5mm.nii.gz"
FAIR = DATA / "knee_fair_crop_1mm.nii.gz"
SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"

#: Direction cosines of the real oblique stacks of prostate session PX0000 (coronal, axial).
CORONAL = (1.0, 0.0, 0.0, 0.0, -0.3173046404387318, 0.9483236560419634)
CORONAL += (0.0, -0.9483236605484686, -0.3173046539072568)
AXIAL = (0.9999992101466079, 2.070647876510756e-10, 0.001256863583770852)
AXIAL += (-0.00039861050350033445, 0.9483764431002154, 0.31714657870949686)
AXIAL += (-0.0011919797929912058, -0.3171468463859979, 0.948375699766075)


@pytest.mark.parametrize(("profile", "factor"), [("gaussian", 3.0), ("box", 2.0), ("box", 4.0)])
def test_wiener_restores_real_thick_slices_better_than_bspline(profile: str, factor: float) -> None:
    case = load_case(FAIR, 1, None)
    acq = Acquisition(factor, 1.0, profile)
    lr, grid, truth = simulate(case.hr, acq)
    plain = psnr(bspline_interpolate(lr, grid), truth)
    restored = psnr(bspline_wiener(lr, grid, profile, acq.relative_thickness), truth)
    assert restored > plain + 0.2


def test_wiener_inverts_a_known_blur_of_a_signal() -> None:
    # a signal with detail up to 0.2 cycles per voxel, blurred by a 4-voxel Gaussian slice
    # (mirror boundary, as the filter assumes): the blur takes most of that detail away
    rng = np.random.default_rng(0)
    x = np.arange(96)[:, None]
    freqs, phases = rng.uniform(0.02, 0.2, (8, 1, 3)), rng.uniform(0, 2 * np.pi, (8, 1, 3))
    signal = np.cos(2 * np.pi * freqs * x + phases).sum(axis=0).astype(np.float32)
    psf = slice_profile_psf("gaussian", 4.0)
    half = len(psf) // 2
    padded = np.pad(signal, ((half, half), (0, 0)), mode="symmetric")
    blurred = np.stack([np.convolve(padded[:, c], psf, mode="valid") for c in range(3)], axis=1)
    restored = wiener_deconvolve(blurred, psf, 1e-6)
    inner = slice(2 * half, -2 * half)
    error_blurred = np.abs(blurred - signal)[inner].mean()
    error_restored = np.abs(restored - signal)[inner].mean()
    assert error_restored < 0.05 * error_blurred
    assert restored.mean() == pytest.approx(blurred.mean(), abs=1e-4)  # the mean is kept


def test_wiener_with_a_delta_profile_is_the_identity() -> None:
    case = load_case(QDESS, 2, 32)
    lr, grid, _ = simulate(case.hr, Acquisition(2.0, 1.0, "none"))
    assert slice_profile_psf("none", 1.0).tolist() == [1.0]
    assert slice_profile_psf("gaussian", 1.0).tolist() == [1.0]  # no thinner than a voxel
    thin = bspline_interpolate(lr, grid)
    np.testing.assert_allclose(wiener_deconvolve(thin, np.ones(1), 0.01, axis=1), thin, atol=1e-5)
    np.testing.assert_allclose(bspline_wiener(lr, grid, "none", 0.5), thin, atol=1e-5)


def test_slice_profile_psf_is_the_acquisition_models_centred_slice() -> None:
    psf = slice_profile_psf("box", 4.0)  # even width: half-weight end taps
    np.testing.assert_allclose(psf, [0.125, 0.25, 0.25, 0.25, 0.125])
    gauss = slice_profile_psf("gaussian", 6.0)
    assert len(gauss) % 2 == 1 and gauss.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(gauss, gauss[::-1], atol=1e-12)
    x = np.arange(len(gauss)) - len(gauss) // 2
    fwhm_sigma = 6.0 / (2 * math.sqrt(2 * math.log(2)))
    assert math.sqrt((gauss * x**2).sum()) == pytest.approx(fwhm_sigma, rel=0.05)


def test_foreground_psnr_takes_the_error_over_the_mask_only() -> None:
    truth = np.clip(load_case(FAIR, 1, None).hr, 0, None)  # psnr clips predictions at 0
    mask = foreground_mask(truth)
    assert 0.05 < mask.mean() < 0.95  # a real knee crop has air around it
    rng = np.random.default_rng(1)
    noise = rng.normal(0.0, 0.02, truth.shape).astype(np.float32)
    in_air = np.clip(truth + np.where(mask, 0.0, np.abs(noise)), 0, None)
    in_tissue = np.where(mask, 0.98 * truth, truth)  # inside [0, MAX]: nothing clipped
    assert psnr(in_air, truth, mask) == math.inf and psnr(in_air, truth) < math.inf
    whole, fg = psnr(in_tissue, truth), psnr(in_tissue, truth, mask)
    assert fg == pytest.approx(whole + 10 * math.log10(mask.mean()), abs=1e-3)
    with pytest.raises(ValueError, match="shape"):
        psnr(truth, truth, mask[1:])


def _blob(reference: sitk.Image, centre: np.ndarray, sigma_mm: float) -> sitk.Image:
    """A Gaussian blob at physical ``centre`` on ``reference``'s grid (any direction)."""
    size = reference.GetSize()
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), -1).reshape(-1, 3)
    direction = np.asarray(reference.GetDirection()).reshape(3, 3)
    points = np.asarray(reference.GetOrigin()) + (idx * reference.GetSpacing()) @ direction.T
    values = np.exp(-np.sum((points - centre) ** 2, axis=1) / (2 * sigma_mm**2))
    image = sitk.GetImageFromArray(values.reshape(size).transpose(2, 1, 0).astype(np.float32))
    image.CopyInformation(reference)
    return image


@pytest.mark.parametrize("profile", ["box", "gaussian"])
def test_imaging_like_an_oblique_stack_puts_a_point_where_it_lies(profile: str) -> None:
    # target: the real oblique coronal grid, 3 mm thick slices; source: a fine volume on the
    # real oblique axial grid holding a blob at the centre of one target voxel
    target = sitk.Image([24, 20, 7], sitk.sitkFloat32)
    target.SetSpacing((0.6, 0.6, 3.0))
    target.SetDirection(CORONAL)
    target.SetOrigin((-57.26, 31.17, 66.13))
    voxel = (11, 8, 3)
    centre = np.asarray(target.TransformIndexToPhysicalPoint(voxel))
    source = sitk.Image([48, 48, 48], sitk.sitkFloat32)
    source.SetSpacing((0.4, 0.4, 0.4))
    source.SetDirection(AXIAL)
    source.SetOrigin(tuple(centre - np.asarray(AXIAL).reshape(3, 3) @ np.full(3, 24 * 0.4)))
    sigma = 0.8
    values, covered = image_like(_blob(source, centre, sigma), target, 3.0, profile)
    assert values.shape == (7, 20, 24) and covered[3, 8, 11]
    k, j, i = np.unravel_index(np.argmax(values), values.shape)
    assert (i, j, k) == voxel
    np.testing.assert_allclose(values[2, j, i], values[4, j, i], rtol=0.05, atol=1e-4)
    plane = values[k]
    jj, ii = np.nonzero(plane > 0.2 * plane.max())
    weights = plane[jj, ii]
    assert np.average(ii, weights=weights) == pytest.approx(11, abs=0.05)
    assert np.average(jj, weights=weights) == pytest.approx(8, abs=0.05)
    if profile == "box":  # the blob averaged across a 3 mm slab through its centre
        half = 3.0 / (2 * sigma * math.sqrt(2))
        expected = sigma * math.sqrt(2 * math.pi) / 3.0 * math.erf(half)
        assert values[k, j, i] == pytest.approx(expected, rel=0.03)
    assert not covered[0].any() and not covered[-1].any()  # the slab leaves the 19 mm cube


def test_rigid_alignment_finds_a_known_patient_shift_and_image_like_applies_it() -> None:
    volume = sitk.Cast(sitk.ReadImage(str(FAIR)), sitk.sitkFloat32)  # real knee, 1 mm
    volume.SetDirection(AXIAL)
    shift = np.array([1.5, -1.0, 0.8])  # mm: the patient moved between the acquisitions
    target = sitk.Image(volume)
    target.SetOrigin(tuple(np.asarray(volume.GetOrigin()) + shift))
    found = register_rigid(target, volume)
    np.testing.assert_allclose(found.GetTranslation(), -shift, atol=0.2)
    assert np.abs(found.GetAngleX()) + np.abs(found.GetAngleY()) + np.abs(found.GetAngleZ()) < 0.01
    # imaged like the moved grid with the transform, the volume matches itself again
    grid = sitk.RegionOfInterest(target, [40, 40, 9], [12, 12, 20])
    values, covered = image_like(volume, grid, 1.0, "box", transform=found)
    acquired = sitk.GetArrayFromImage(grid)
    assert covered.all()
    assert compare(values, acquired, covered).correlation > 0.99
    plain, _ = image_like(volume, grid, 1.0, "box")
    assert compare(plain, acquired, covered).correlation < 0.97


def test_overlap_crop_and_intensity_fit_keep_geometry_and_ignore_scaling() -> None:
    big = sitk.Image([64, 64, 10], sitk.sitkFloat32)
    big.SetSpacing((0.6, 0.6, 3.0))
    big.SetDirection(CORONAL)
    small = sitk.Image([8, 8, 8], sitk.sitkFloat32)
    small.SetSpacing((1.0, 1.0, 1.0))
    small.SetDirection(AXIAL)
    small.SetOrigin(big.TransformIndexToPhysicalPoint((30, 30, 5)))
    cut = cropped_to_overlap(big, small)
    assert cut.GetSize()[0] < 64 and cut.GetDirection() == big.GetDirection()
    point = cut.TransformIndexToPhysicalPoint((0, 0, 0))
    assert np.allclose(
        big.TransformPhysicalPointToContinuousIndex(point),
        np.round(big.TransformPhysicalPointToContinuousIndex(point)),
    )
    rng = np.random.default_rng(2)
    imaged = rng.random((5, 6, 7))
    region = np.ones(imaged.shape, bool)
    score = compare(imaged, 3.0 * imaged + 7.0, region)
    assert score.correlation == pytest.approx(1.0) and score.psnr > 200
    assert score.gain == pytest.approx(3.0) and score.voxels == imaged.size


def test_the_shading_fit_absorbs_a_smooth_gain_field_that_one_gain_cannot() -> None:
    rng = np.random.default_rng(4)
    imaged = rng.random((6, 20, 20))
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in imaged.shape], indexing="ij")
    shading = 1.0 + 0.5 * j + 0.3 * i * k + 0.2 * k**2  # a coil's smooth sensitivity
    acquired = 2.0 * shading * imaged + 1.0 + 0.1 * i
    region = np.ones(imaged.shape, bool)
    flat, fitted = compare(imaged, acquired, region, 0), compare(imaged, acquired, region, 2)
    assert flat.correlation < 0.9
    assert fitted.correlation == pytest.approx(1.0, abs=1e-9) and fitted.psnr > 100
    with pytest.raises(ValueError, match="order"):
        compare(imaged, acquired, region, 3)


def test_thick_stack_keeps_the_thin_volumes_geometry() -> None:
    thin = sitk.ReadImage(str(QDESS))  # real oblique-free sagittal knee, 1.5 mm along k
    stack = thick_stack(sitk.Cast(thin, sitk.sitkFloat32), 0, 0.3125 * 3, 0.3125 * 3, "box")
    assert stack.GetOrigin() == thin.GetOrigin() and stack.GetDirection() == thin.GetDirection()
    assert stack.GetSpacing()[0] == pytest.approx(0.9375) and stack.GetSize()[0] == 22
    # slice n is centred on thin voxel 3n: a box of 3 voxels around it
    a = sitk.GetArrayFromImage(thin).astype(np.float32)
    np.testing.assert_allclose(
        sitk.GetArrayFromImage(stack)[:, :, 5], a[:, :, 14:17].mean(axis=2), rtol=1e-5, atol=1e-3
    )


def _prepare_test():
    spec = importlib.util.spec_from_file_location("prepare_test", SCRIPTS / "prepare_test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("axis", [0, 1])
def test_prepare_test_moves_an_in_plane_axis_to_k_keeping_every_voxel_in_place(
    axis: int, tmp_path: Path
) -> None:
    image = sitk.ReadImage(str(QDESS))
    image.SetDirection(AXIAL)  # a real oblique direction
    out = _prepare_test().reorient_slice_axis(image, axis)
    path = tmp_path / "reoriented.nii.gz"
    sitk.WriteImage(out, str(path), True)
    back = sitk.ReadImage(str(path))  # geometry survives the NIfTI round trip
    assert back.GetSpacing()[2] == pytest.approx(image.GetSpacing()[axis])
    assert back.GetSpacing()[1] == pytest.approx(1.5, rel=1e-5)  # the thick axis in-plane
    rng = np.random.default_rng(3)
    for index in rng.integers(0, [64, 64, 40], size=(20, 3)):
        point = image.TransformIndexToPhysicalPoint([int(v) for v in index])
        new = back.TransformPhysicalPointToIndex(point)
        assert back[new] == image[[int(v) for v in index]]
        np.testing.assert_allclose(back.TransformIndexToPhysicalPoint(new), point, atol=1e-3)
