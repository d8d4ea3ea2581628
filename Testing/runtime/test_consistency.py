"""The data consistency step on a real knee crop: it restores what a blurred result misses of the
acquired slices, leaves a consistent result alone, and does not add the noise back."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from sainr.acquisition import Acquisition, acquire
from sainr.evaluation.baselines import linear_interpolate
from sainr.geometry import slice_grid
from sainr.intensity import robust_scale
from sainr.runtime.consistency import enforce_consistency, noise_level, reacquire

FACTOR = 3


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a - b) ** 2)))


@pytest.fixture(scope="module")
def truth(knee_image: sitk.Image) -> np.ndarray:
    """The knee crop, normalised, slice axis first; as many slices as a x3 grid covers."""
    hr = sitk.GetArrayFromImage(knee_image).astype(np.float32)
    n = (hr.shape[0] - 1) // FACTOR * FACTOR + 1
    return robust_scale(hr).normalize(hr[:n])


def thick(truth: np.ndarray) -> tuple[np.ndarray, object]:
    """Box slices every FACTOR thin slices, as thick as the step re-acquires contiguous
    slices, and the thin-slice grid back."""
    grid = slice_grid((len(truth) - 1) // FACTOR + 1, float(FACTOR), 1.0)
    return reacquire(truth, grid, 1.0), grid


def test_restores_what_a_blurred_result_misses(truth: np.ndarray) -> None:
    lr, grid = thick(truth)
    thin = linear_interpolate(
        lr, grid
    )  # keeps the slice profile's blur: re-acquired, it is blurrier still
    before_data = np.abs(reacquire(thin, grid, 1.0) - lr).mean()
    before = psnr(thin, truth)
    weight = enforce_consistency(thin, lr, grid, 1.0)
    assert weight > 0.5  # a clean crop: the residual is structure, not noise
    assert np.abs(reacquire(thin, grid, 1.0) - lr).mean() < 0.7 * before_data
    assert psnr(thin, truth) > before + 0.15


def test_leaves_a_consistent_result_unchanged(truth: np.ndarray) -> None:
    lr, grid = thick(truth)
    thin = truth.copy()  # the truth re-acquires to exactly the acquired slices
    assert enforce_consistency(thin, lr, grid, 1.0) == 0.0
    np.testing.assert_array_equal(thin, truth)


def test_keeps_the_denoising(truth: np.ndarray) -> None:
    """Noisy thick slices and a result that removed the noise exactly (the truth): the
    residual is the noise, which the step must not put back."""
    lr, grid = thick(truth)
    rng = np.random.default_rng(0)
    noisy = (lr + rng.normal(0, 0.03, lr.shape)).astype(np.float32)
    assert noise_level(noisy - lr) == pytest.approx(0.03, rel=0.15)
    thin = truth.copy()
    assert enforce_consistency(thin, noisy, grid, 1.0) == 0.0
    np.testing.assert_array_equal(thin, truth)


def test_thickness_changes_the_reacquisition(truth: np.ndarray) -> None:
    """Thinner slices with gaps re-acquire sharper than contiguous ones; the box is
    ``width`` times the told thickness."""
    _, grid = thick(truth)
    thin = reacquire(truth, grid, 1 / FACTOR, width=1.0)
    np.testing.assert_allclose(thin, truth[::FACTOR], atol=1e-6)  # one thin voxel per slice
    np.testing.assert_allclose(
        reacquire(truth, grid, 0.5, width=2.0),
        acquire(truth, Acquisition(FACTOR, 1.0, "box"), grid.n_lr),
        atol=1e-6,
    )
    thick_slices = reacquire(truth, grid, 1.0)
    assert np.abs(thick_slices - truth[::FACTOR]).mean() > 0.005
