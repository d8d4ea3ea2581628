"""Metrics against known values and on real MRI; interpolation baselines' slice positions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.ndimage import gaussian_filter

from conftest import KNEE_QDESS
from sainr.evaluation.baselines import (
    bspline_interpolate,
    linear_interpolate,
    resample_slices,
    sitk_interpolate,
)
from sainr.evaluation.metrics import (
    block_starts,
    psnr,
    s3_sharpness,
    s3_volume,
    slice_subset,
    spectral_slope,
    ssim,
)
from sainr.geometry import slice_grid


@pytest.fixture(scope="module")
def knee_image() -> sitk.Image:
    """Real knee crop, 64 x 64 in-plane x 40 slices of 1.5 mm (slice axis k)."""
    return sitk.ReadImage(str(KNEE_QDESS))


@pytest.fixture(scope="module")
def knee(knee_image: sitk.Image) -> np.ndarray:
    """The crop as (slices, H, W), min-max scaled to [0, 1]."""
    a = sitk.GetArrayFromImage(knee_image).astype(np.float32)
    return (a - a.min()) / (a.max() - a.min())


def test_psnr_of_a_known_mse() -> None:
    truth = np.random.default_rng(0).uniform(1, 9, (8, 8, 8))
    truth[0, 0, 0] = 10.0
    sign = np.where(np.indices(truth.shape).sum(0) % 2 == 0, 1.0, -1.0)
    sign[0, 0, 0] = -1.0  # stay below MAX, so clipping plays no part
    assert psnr(truth + 0.5 * sign, truth) == pytest.approx(10 * math.log10(10.0**2 / 0.25))


def test_psnr_clips_the_prediction_to_zero_and_max() -> None:
    truth = np.array([0.0, 5.0, 10.0])
    assert psnr(np.array([-3.0, 5.0, 40.0]), truth) == math.inf
    assert psnr(np.array([-3.0, 6.0, 40.0]), truth) == pytest.approx(10 * math.log10(100 / (1 / 3)))


def test_ssim_is_one_for_identical_volumes_and_drops_with_noise(knee: np.ndarray) -> None:
    noise = np.random.default_rng(1).standard_normal(knee.shape).astype(np.float32)
    assert ssim(knee, knee) == pytest.approx(1.0, abs=1e-9)
    slight, strong = ssim(knee + 0.02 * noise, knee), ssim(knee + 0.1 * noise, knee)
    assert 1.0 > slight > strong > 0.0


def test_ssim_is_invariant_to_a_common_rescale(knee: np.ndarray) -> None:
    """L = max - min of the truth scales with the data, so only the contrast matters."""
    pred = gaussian_filter(knee, 1.0)
    assert ssim(3.0 * pred, 3.0 * knee) == pytest.approx(ssim(pred, knee), abs=1e-9)
    assert ssim(pred, knee) < 0.99


def test_s3_is_higher_for_a_sharp_than_a_blurred_real_slice(knee: np.ndarray) -> None:
    sharp = knee[20]
    mild, strong = gaussian_filter(sharp, 1.0), gaussian_filter(sharp, 2.0)
    assert s3_sharpness(sharp) > s3_sharpness(mild) + 0.05
    assert s3_sharpness(mild) > s3_sharpness(strong)


def test_s3_of_a_flat_slice_is_zero() -> None:
    assert s3_sharpness(np.full((40, 64), 0.5)) == 0.0


@pytest.mark.parametrize("alpha", [1.0, 2.0, 3.0])
def test_spectral_slope_recovers_power_law_fields(alpha: float) -> None:
    """A random-phase field with |F| ~ f^-alpha has spectral slope alpha."""
    n, rng = 64, np.random.default_rng(int(alpha))
    f = np.hypot(np.fft.fftfreq(n)[:, None], np.fft.fftfreq(n)[None, :])
    f[0, 0] = 1.0
    spectrum = f**-alpha * np.exp(2j * np.pi * rng.random((n, n)))
    spectrum[0, 0] = 0.0
    field = np.real(np.fft.ifft2(spectrum))
    field = 0.3 + 0.4 * (field - field.min()) / np.ptp(field)
    assert spectral_slope(field) == pytest.approx(alpha, abs=0.25)


def test_blocks_follow_the_official_layout() -> None:
    assert block_starts(272, 64, 48).tolist() == [0, 48, 96, 144, 192, 208]  # 256 + 2 x 8 pad
    assert block_starts(80, 64, 48).tolist() == [0, 16]
    assert block_starts(64, 64, 48).tolist() == [0]
    assert block_starts(16, 8, 4).tolist() == [0, 4, 8]


def test_s3_volume_averages_an_even_subset_of_slices(knee: np.ndarray) -> None:
    idx = slice_subset(knee.shape[2], 3)
    assert idx.tolist() == [0, 32, 63]
    expected = np.mean([s3_sharpness(knee[:, :, i]) for i in idx])
    assert s3_volume(knee, axis=2, max_slices=3) == pytest.approx(expected)
    assert slice_subset(5, None).tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("factor", [2.0, 2.5, 3.3])
def test_simpleitk_linear_on_the_image_equals_linear_interpolate(
    knee_image: sitk.Image, factor: float
) -> None:
    """Same thin-slice positions on a real image with its own origin and direction."""
    spacing = knee_image.GetSpacing()[2]
    out = resample_slices(knee_image, 2, spacing / factor, "linear")
    array = sitk.GetArrayFromImage(knee_image).astype(np.float32)
    grid = slice_grid(array.shape[0], spacing, spacing / factor)
    assert out.GetSize() == (64, 64, grid.n_hr)
    assert out.GetOrigin() == knee_image.GetOrigin()
    assert out.GetDirection() == knee_image.GetDirection()
    assert out.GetSpacing()[2] == pytest.approx(spacing / factor)
    expected = linear_interpolate(array, grid)
    np.testing.assert_allclose(sitk.GetArrayFromImage(out), expected, rtol=1e-5, atol=0.05)


@pytest.mark.parametrize("factor", [2.0, 2.5, 4.0])
def test_bspline_reproduces_acquired_slices(knee: np.ndarray, factor: float) -> None:
    grid = slice_grid(knee.shape[0], factor, 1.0)
    out = bspline_interpolate(knee, grid)
    assert out.shape == (grid.n_hr, *knee.shape[1:])
    on_slice = grid.frac == 0
    assert on_slice.sum() == sum((i * factor).is_integer() for i in range(knee.shape[0]))
    np.testing.assert_allclose(out[on_slice], knee[grid.lower[on_slice]], atol=1e-5)


def test_bspline_samples_exactly_at_the_thin_slice_positions() -> None:
    """A smooth profile along the slice axis is recovered at p_j far better than linearly;
    a shifted sampling grid would fail by a wide margin."""
    n_lr, period = 40, 12.0
    lr = np.cos(2 * np.pi * np.arange(n_lr) / period).astype(np.float32)
    lr = np.repeat(lr[:, None, None], 8, axis=1).repeat(8, axis=2)
    grid = slice_grid(n_lr, 2.5, 1.0)
    exact = np.cos(2 * np.pi * (grid.lower + grid.frac) / period)[:, None, None]
    interior = slice(10, grid.n_hr - 10)
    spline_err = np.abs(bspline_interpolate(lr, grid) - exact)[interior].max()
    linear_err = np.abs(linear_interpolate(lr, grid) - exact)[interior].max()
    assert spline_err < 2e-3
    assert linear_err > 10 * spline_err


def test_bspline_leaves_the_in_plane_grid_alone(knee: np.ndarray) -> None:
    constant_along_slices = np.repeat(knee[20:21], 10, axis=0)
    out = bspline_interpolate(constant_along_slices, slice_grid(10, 3.0, 1.0))
    np.testing.assert_allclose(out, np.broadcast_to(knee[20], out.shape), atol=1e-5)


def test_sitk_interpolate_rejects_a_mismatched_grid(knee: np.ndarray) -> None:
    with pytest.raises(ValueError, match="slices"):
        sitk_interpolate(knee, slice_grid(10, 2.0, 1.0), "linear")
    with pytest.raises(ValueError, match="interpolation"):
        sitk_interpolate(knee, slice_grid(40, 2.0, 1.0), "nearest")
