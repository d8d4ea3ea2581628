"""The acquisition model: slice profiles, thick slices from thin ones, training patches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from sainr.acquisition import Acquisition, acquire, lr_count, margin, weights
from sainr.train.data import PatchSpec, Volume, sample_patch
from sainr.train.degradation import AcquisitionSampler


def _moments(first: int, w: np.ndarray, centre: float) -> tuple[float, float]:
    pos = np.arange(first, first + len(w)) - centre
    mean = float((w * pos).sum())
    return mean, float((w * (pos - mean) ** 2).sum())


@pytest.mark.parametrize("width", [1, 2, 3, 4, 5, 6])
def test_a_box_of_t_voxels_has_t_equal_taps_and_half_ends_when_t_is_even(width: int) -> None:
    first, w = weights("box", float(width), 0.0)
    if width % 2:
        assert len(w) == width and first == -(width // 2)
        np.testing.assert_allclose(w, np.full(width, 1 / width))
    else:
        assert len(w) == width + 1 and first == -(width // 2)
        np.testing.assert_allclose(w[1:-1], np.full(width - 1, 1 / width))
        np.testing.assert_allclose(w[[0, -1]], [0.5 / width, 0.5 / width])


@pytest.mark.parametrize("profile", ["gaussian", "box"])
@pytest.mark.parametrize("width", [1.5, 2.4, 3.0, 4.8])
@pytest.mark.parametrize("centre", [0.0, 0.3, 0.5, 7.25])
def test_weights_sum_to_one_and_are_centred_at_any_position(
    profile: str, width: float, centre: float
) -> None:
    first, w = weights(profile, width, centre)
    assert w.sum() == pytest.approx(1.0) and (w >= 0).all()
    mean, _ = _moments(first, w, centre)
    # voxels are boxes: the centre of mass is within 0.01 voxel (Gaussian), 0.1 (box edges)
    assert mean == pytest.approx(0.0, abs=0.01 if profile == "gaussian" else 0.1)


@pytest.mark.parametrize("centre", [0.0, 0.25, 0.5])
def test_a_gaussian_between_voxels_is_no_wider_than_on_a_voxel(centre: float) -> None:
    # each weight integrates the profile over one voxel: variance = sigma^2 + 1/12 at any
    # centre; blending two voxel-centred slices linearly (the old way) adds t(1 - t) more
    fwhm = 3.0
    sigma2 = (fwhm / (2 * math.sqrt(2 * math.log(2)))) ** 2
    first, w = weights("gaussian", fwhm, centre)
    _, var = _moments(first, w, centre)
    assert var == pytest.approx(sigma2 + 1 / 12, abs=0.05)  # blending: + 0.19 (t = 0.25)


def test_gaussian_width_is_its_full_width_at_half_maximum() -> None:
    first, w = weights("gaussian", 9.0, 0.0)
    peak = w[-first]
    assert w[-first + 4] > peak / 2 > w[-first + 5]  # half maximum between 4 and 5 voxels out


def test_pure_decimation_keeps_hr_slices_and_needs_integer_factors(knee_image) -> None:
    hr = sitk.GetArrayFromImage(knee_image).astype(np.float32)
    np.testing.assert_array_equal(acquire(hr, Acquisition(3.0, 1.0, "none"), 10), hr[0:30:3])
    assert Acquisition(3.0, 1.0, "none").relative_thickness == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="integer factor"):
        Acquisition(2.5, 1.0, "none")


@pytest.mark.parametrize("profile", ["gaussian", "box"])
def test_blur_preserves_the_mean_and_removes_through_plane_detail(knee_image, profile) -> None:
    hr = sitk.GetArrayFromImage(knee_image).astype(np.float32)
    thick = acquire(hr, Acquisition(1.0, 3.0, profile), len(hr))  # 3-voxel slices, every voxel
    assert thick.mean() == pytest.approx(hr.mean(), rel=2e-3)
    assert np.abs(np.diff(thick, axis=0)).mean() < 0.7 * np.abs(np.diff(hr, axis=0)).mean()


@pytest.mark.parametrize("acq", [Acquisition(3.0, 1.0, "gaussian"), Acquisition(2.5, 1.2, "box")])
def test_a_crop_with_its_margin_gives_the_slices_of_the_whole_volume(knee_image, acq) -> None:
    hr = sitk.GetArrayFromImage(knee_image).astype(np.float32)
    pad, start, n_lr = margin(acq), 12, 5
    whole = acquire(hr, acq, n_lr, start=start)
    crop = hr[start - pad : start + int((n_lr - 1) * acq.factor) + 1 + pad]
    np.testing.assert_allclose(acquire(crop, acq, n_lr, start=pad), whole, rtol=1e-5, atol=1e-3)
    tight = acquire(hr[start:], acq, n_lr)  # no margin: the first slice misses its neighbours
    assert np.abs(tight[0] - whole[0]).max() > 1.0
    inner = math.ceil(pad / acq.factor)  # slices whose reach stays inside the crop
    np.testing.assert_allclose(tight[inner:], whole[inner:], rtol=1e-5, atol=1e-3)


def _ramp_volume(n: int = 120, size: int = 24) -> Volume:
    """Intensity = slice index along k (array axis 0): a symmetric profile averages it to the
    slice's centre exactly, unless the slice sees invented (replicated) neighbours."""
    ramp = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None], (n, size, size))
    ramp = np.ascontiguousarray(ramp)
    return Volume("ramp", ramp, (1.0, 1.0, 1.0), np.zeros(ramp.shape, bool), (2,))


@pytest.mark.parametrize(
    "acq",
    [
        Acquisition(3.0, 1.2, "gaussian"),
        Acquisition(2.5, 1.0, "box"),
        Acquisition(4.0, 1.0, "none"),
    ],
)
def test_patches_have_no_invented_edge_slices(acq: Acquisition) -> None:
    spec = PatchSpec(lr_slices=8, size=16, queries=512, min_foreground=0.0)
    for seed in range(5):
        item = sample_patch([_ramp_volume()], spec, acq, np.random.default_rng(seed))
        lr = item["lr"][0].numpy()
        np.testing.assert_allclose(np.diff(lr[:, 0, 0]), acq.factor, atol=1e-3)  # every slice
        on_slice = item["t"].numpy() == 0  # queries on acquired slices: their HR voxel
        s, y, x = (item[k].numpy()[on_slice] for k in ("s", "y", "x"))
        np.testing.assert_allclose(lr[s, y, x], item["target"].numpy()[on_slice], atol=1e-3)
        assert item["acquisition"].tolist() == pytest.approx(
            [1 / acq.factor, acq.relative_thickness]
        )


def test_sampler_draws_integer_factors_for_decimation_and_thickness_in_range() -> None:
    sampler = AcquisitionSampler(factors=(2, 2.5, 3.3, 4), thickness=(0.5, 1.2))
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(300):
        profile = sampler.profile(rng)
        acq = sampler.acquisition(profile, sampler.factor(profile, rng), rng)
        seen.add(profile)
        if profile == "none":
            assert acq.factor in (2.0, 4.0)
        else:
            assert 0.5 <= acq.thickness <= 1.2
    assert seen == {"none", "gaussian", "box"}
    with pytest.raises(ValueError, match="integer factor"):
        AcquisitionSampler(factors=(2.5,), profiles=("none",), profile_weights=(1.0,))


def test_lr_count_keeps_every_slice_that_fits() -> None:
    assert lr_count(41, 2.5) == 17 and lr_count(40, 3.0) == 14 and lr_count(1, 2.0) == 1
