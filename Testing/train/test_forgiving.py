"""The forgiving recipe (issue 23): a ringing slice profile, width jitter, thickness label noise,
MRI augmentations, per-volume slice axes and weights, the native slices' own thickness."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import KNEE_FAIR, KNEE_QDESS
from sainr.acquisition import Acquisition, acquire, margin, weights
from sainr.train import data as data_module
from sainr.train.data import (
    PatchDataset,
    PatchSpec,
    bias_field,
    contrast_map,
    elastic,
    load_volume,
    resolve_axes,
    rician_noise,
    sample_patch,
)
from sainr.train.degradation import AcquisitionSampler, slice_scales
from sainr.train.training import TrainConfig, _val_profile, validate


@pytest.fixture(scope="module")
def knee() -> np.ndarray:
    """The real qDESS crop, normalised, slice axis first (k, j, i)."""
    return load_volume(KNEE_QDESS).array


@pytest.mark.parametrize("width", [1.5, 2.4, 3.0, 4.8, 9.0])
@pytest.mark.parametrize("centre", [0.0, 0.3, 0.5, 7.25])
def test_sinc_weights_sum_to_one_are_centred_and_ring(width: float, centre: float) -> None:
    first, w = weights("sinc", width, centre)
    assert w.sum() == pytest.approx(1.0)
    pos = np.arange(first, first + len(w)) - centre
    assert float((w * pos).sum()) == pytest.approx(0.0, abs=0.01)
    if width >= 3:  # side lobes: tissue beyond the slice enters with negative weight
        assert w.min() < -0.01 * w.max()


@pytest.mark.parametrize("width", [9.0, 15.0, 21.0])
def test_sinc_width_is_its_full_width_at_half_maximum(width: float) -> None:
    first, w = weights("sinc", width, 0.0)
    peak, half = w[-first], int(width // 2)  # half maximum between half and half + 1 voxels out
    assert w[-first + half] > peak / 2 > w[-first + half + 1]
    assert w[-first - half] > peak / 2 > w[-first - half - 1]


def test_width_jitter_varies_each_slice_within_its_bound_and_widens_the_margin(knee) -> None:
    acq = Acquisition(3.0, 1.0, "gaussian", jitter=0.2)
    scales = slice_scales(acq, 50, np.random.default_rng(0))
    assert scales.min() >= 0.8 and scales.max() <= 1.2 and scales.std() > 0.05
    assert slice_scales(Acquisition(3.0, 1.0, "none", jitter=0.2), 5, None) is None
    assert margin(acq) > margin(Acquisition(3.0, 1.0, "gaussian"))
    plain = acquire(knee, acq, 10, start=4)
    jittered = acquire(knee, acq, 10, start=4, scales=scales[:10])
    assert not np.allclose(plain, jittered)
    np.testing.assert_allclose(
        acquire(knee, acq, 10, start=4, scales=np.ones(10)), plain, rtol=1e-6
    )
    with pytest.raises(ValueError, match="jitter"):
        Acquisition(3.0, 1.0, "gaussian", jitter=1.0)


def test_label_noise_stays_in_its_bound_and_leaves_the_lr_as_acquired() -> None:
    sampler = AcquisitionSampler(label_noise=0.2)
    rng = np.random.default_rng(1)
    told = np.array([sampler.told(0.8, rng) for _ in range(500)])
    assert told.min() >= 0.8 * 0.8 and told.max() <= 0.8 * 1.2
    assert told.min() < 0.8 * 0.85 and told.max() > 0.8 * 1.15  # it does use the range
    vol = load_volume(KNEE_FAIR)
    acq = Acquisition(3.0, 1.0, "gaussian")
    base = {"lr_slices": 5, "size": 24, "queries": 256, "factors": (3,)}
    exact = sample_patch([vol], PatchSpec(**base), acq, np.random.default_rng(7))
    noisy = sample_patch([vol], PatchSpec(**base, label_noise=0.2), acq, np.random.default_rng(7))
    torch.testing.assert_close(noisy["lr"], exact["lr"], rtol=0, atol=0)
    torch.testing.assert_close(noisy["target"], exact["target"], rtol=0, atol=0)
    true = exact["acquisition"][1].item()
    assert true == pytest.approx(acq.relative_thickness)
    assert noisy["acquisition"][1].item() != true
    assert 0.8 * true <= noisy["acquisition"][1].item() <= 1.2 * true


def test_a_misread_label_is_shown_to_the_student_and_the_teacher_keeps_the_told_one() -> None:
    sampler = AcquisitionSampler(misread_share=0.5, misread=(0.25, 2.5))
    rng = np.random.default_rng(2)
    shown = np.array([sampler.shown(0.8, rng) for _ in range(2000)]) / 0.8
    assert shown.min() >= 0.25 and shown.max() <= 2.5
    assert shown.min() < 0.3 and shown.max() > 2.2  # both ways, as the estimate errs
    assert 0.4 < np.mean(shown == 1.0) < 0.6  # the rest is shown as told
    off = AcquisitionSampler()
    state = np.random.default_rng(5)
    assert off.shown(0.8, state) == 0.8
    assert state.random() == np.random.default_rng(5).random()  # no draw when off
    with pytest.raises(ValueError, match="misread"):
        AcquisitionSampler(misread_share=0.5, misread=(2.5, 1.5))
    vol = load_volume(KNEE_FAIR)
    acq = Acquisition(3.0, 1.0, "box")
    base = {"lr_slices": 5, "size": 24, "queries": 256, "factors": (3,), "label_noise": 0.2}
    told = sample_patch([vol], PatchSpec(**base), acq, np.random.default_rng(7))
    misread = sample_patch(
        [vol],
        PatchSpec(**base, misread_share=1.0, misread=(0.2, 0.3)),
        acq,
        np.random.default_rng(7),
    )
    torch.testing.assert_close(misread["lr"], told["lr"], rtol=0, atol=0)
    assert misread["taught"].tolist() == told["acquisition"].tolist() == told["taught"].tolist()
    ratio = misread["acquisition"][1].item() / misread["taught"][1].item()
    assert 0.2 <= ratio <= 0.3
    assert misread["acquisition"][0].item() == misread["taught"][0].item()


def test_the_native_slices_thickness_is_added_in_quadrature_on_the_native_axis() -> None:
    vol = load_volume(KNEE_QDESS)  # 0.31 x 0.31 x 1.5 mm: native axis k, contiguous slices
    assert vol.axes == (2,) and vol.native_width_along(2) == 1.0
    assert vol.native_width_along(0) == 0.0
    acq = Acquisition(2.0, 1.0, "gaussian")
    item = sample_patch([vol], PatchSpec(lr_slices=5, size=24), acq, np.random.default_rng(0))
    assert item["acquisition"][1].item() == pytest.approx(math.hypot(2.0, 1.0) / 2.0)
    assert Acquisition(2.0, 1.0, "none").told(1.0) == pytest.approx(0.5)  # as before
    thick = load_volume(KNEE_QDESS, axes="in-plane", slice_thickness=3.0)
    assert thick.native_width == pytest.approx(2.0, rel=1e-4)
    assert load_volume(KNEE_FAIR).native_width_along(2) == 0.0  # near-isotropic: no native axis


def test_in_plane_axes_never_sample_the_native_axis(monkeypatch) -> None:
    assert resolve_axes((0.3, 0.3, 1.5), "in-plane") == (0, 1)
    assert resolve_axes((0.3, 1.5, 0.3), "in-plane") == (0, 2)
    assert resolve_axes((1.0, 1.0, 1.0), "all") == (0, 1, 2)
    assert resolve_axes((0.3, 0.3, 1.5), [2]) == (2,)
    with pytest.raises(ValueError, match="anisotropic"):
        resolve_axes((1.0, 1.0, 1.0), "in-plane")
    with pytest.raises(ValueError, match="axes"):
        resolve_axes((0.3, 0.3, 1.5), [3])
    vol = load_volume(KNEE_QDESS, axes="in-plane")
    seen = []
    crop = data_module._crop

    def spy(v, axis, *args):
        seen.append(axis)
        return crop(v, axis, *args)

    monkeypatch.setattr(data_module, "_crop", spy)
    spec = PatchSpec(lr_slices=5, size=24, queries=64, factors=(2,))
    for seed in range(40):
        sample_patch([vol], spec, Acquisition(2.0, 1.0, "box"), np.random.default_rng(seed))
    assert set(seen) == {0, 1}


def test_a_plane_smaller_than_the_patch_is_padded_and_never_queried() -> None:
    vol = load_volume(KNEE_QDESS, axes="in-plane")  # planes 40 x 64 voxels
    spec = PatchSpec(lr_slices=5, size=48, queries=2048, factors=(2,))
    for seed in range(5):
        item = sample_patch([vol], spec, Acquisition(2.0, 1.0, "none"), np.random.default_rng(seed))
        lr = item["lr"][0].numpy()
        assert lr.shape[1:] == (48, 48)
        padding = (lr == 0).all(axis=0)
        assert padding.any()  # 8 of the 48 rows or columns are padding
        assert not padding[item["y"].numpy(), item["x"].numpy()].any()


def test_volumes_are_drawn_by_their_weight() -> None:
    knee = load_volume(KNEE_QDESS, weight=3.0)
    fair = load_volume(KNEE_FAIR)
    rng = np.random.default_rng(0)
    drawn = [data_module._choose_volume([knee, fair], rng).name for _ in range(2000)]
    assert drawn.count(knee.name) / 2000 == pytest.approx(0.75, abs=0.03)
    with pytest.raises(ValueError, match="weight"):
        load_volume(KNEE_FAIR, weight=0.0)
    with pytest.raises(ValueError, match="unknown keys"):
        TrainConfig.load(None, ['data=[{"path": "x.nii.gz", "axis": 2}]'])


def test_bias_field_is_smooth_positive_and_bounded(knee) -> None:
    hr = knee[:20]
    out = bias_field(hr, 0.3, np.random.default_rng(3))
    assert out.shape == hr.shape and out.dtype == np.float32
    inside = np.abs(hr) > 0.05
    ratio = out[inside] / hr[inside]
    assert ratio.min() >= math.exp(-0.3) - 1e-5 and ratio.max() <= math.exp(0.3) + 1e-5
    assert ratio.std() > 0.005  # it does shade
    field = np.log(bias_field(np.ones_like(hr), 0.3, np.random.default_rng(3)))
    assert np.abs(np.diff(field, axis=2)).max() < 0.05  # smooth: small change per voxel
    np.testing.assert_array_equal(out, bias_field(hr, 0.3, np.random.default_rng(3)))


def test_contrast_map_is_increasing_keeps_the_maximum_and_changes_contrast(knee) -> None:
    hr = knee[:10]
    out = contrast_map(hr, np.random.default_rng(4))
    assert out.shape == hr.shape
    positive = hr > 0
    order = np.argsort(hr[positive], kind="stable")
    assert (np.diff(out[positive][order]) >= -1e-6).all()  # monotone: tissue order kept
    assert out.max() == pytest.approx(hr.max(), rel=1e-5)
    assert np.abs(out - hr).mean() > 0.005
    np.testing.assert_array_equal(out, contrast_map(hr, np.random.default_rng(4)))


def test_rician_noise_lifts_a_dark_background(knee) -> None:
    background = np.zeros((4, 32, 32), np.float32)
    noisy = rician_noise(background, 0.05, np.random.default_rng(5))
    assert noisy.shape == background.shape and (noisy >= 0).all()
    assert noisy.mean() == pytest.approx(0.05 * math.sqrt(math.pi / 2), rel=0.05)
    bright = rician_noise(knee[:4], 0.02, np.random.default_rng(5))
    assert np.abs(bright - knee[:4]).mean() > 0.005
    np.testing.assert_array_equal(bright, rician_noise(knee[:4], 0.02, np.random.default_rng(5)))


def test_elastic_deformation_moves_image_and_masks_together(knee) -> None:
    hr = np.ascontiguousarray(knee[:16, :32, :32])
    mask = hr > np.median(hr)
    warped, warped_mask = elastic((hr, mask), 3.0, np.random.default_rng(6))
    assert warped.shape == hr.shape and warped_mask.dtype == bool
    assert np.abs(warped - hr).mean() > 0.01
    assert warped.mean() == pytest.approx(hr.mean(), rel=0.1)
    follows = (warped_mask == (warped > np.median(hr))).mean()
    stays = (mask == (warped > np.median(hr))).mean()
    assert follows > stays + 0.05  # the mask moved with the image
    again = elastic((hr, mask), 3.0, np.random.default_rng(6))
    np.testing.assert_array_equal(warped, again[0])
    still, _ = elastic((hr, mask), 0.0, np.random.default_rng(6))
    np.testing.assert_allclose(still, hr, atol=1e-5)


def test_augmented_items_are_deterministic_and_differ_from_plain_ones() -> None:
    vols = [load_volume(KNEE_QDESS), load_volume(KNEE_FAIR)]
    base = {
        "lr_slices": 5,
        "size": 24,
        "queries": 256,
        "factors": (2, 3),
        "profiles": ("gaussian", "sinc"),
        "profile_weights": (0.5, 0.5),
        "thickness": (0.3, 2.0),
    }
    extra = {
        "jitter": 0.1,
        "label_noise": 0.2,
        "contrast": 1.0,
        "bias": 0.3,
        "elastic": 2.0,
        "rician": 0.03,
    }
    aug = PatchDataset(vols, PatchSpec(**base, **extra), 20, batch_size=2, seed=3)
    plain = PatchDataset(vols, PatchSpec(**base), 20, batch_size=2, seed=3)
    for i in (0, 5, 11):
        a, b = aug[i], aug[i]
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
        assert a["lr"].shape == plain[i]["lr"].shape
        assert not torch.equal(a["lr"], plain[i]["lr"])


def test_validation_tracks_a_mis_told_thickness(tiny_model) -> None:
    assert _val_profile("gaussian@1.25") == ("gaussian", 1.25)
    assert _val_profile("sinc") == ("sinc", 1.0)
    with pytest.raises(ValueError):
        _val_profile("gaussian@-1")
    scores = validate(
        tiny_model, [load_volume(KNEE_FAIR)], (2,), 32, profiles=("gaussian", "gaussian@1.25")
    )
    assert {"psnr_x2_gaussian", "psnr_x2_gaussian@1.25", "gain_gaussian@1.25"} <= set(scores)


def test_the_gate_stays_on_its_voxels_under_elastic_deformation() -> None:
    """HR = slice index, gate = odd slices: after a (near-identity) deformation each query's
    gate still belongs to its own target voxel, margin slices included."""
    n, size = 120, 24
    ramp = np.ascontiguousarray(
        np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None], (n, size, size))
    )
    odd = np.ascontiguousarray(
        np.broadcast_to((np.arange(n) % 2 == 1)[:, None, None], (n, size, size))
    )
    vol = data_module.Volume("ramp", ramp, (1.0, 1.0, 1.0), odd, (2,))
    spec = PatchSpec(lr_slices=8, size=16, queries=512, min_foreground=0.0, elastic=0.01)
    acq = Acquisition(2.5, 1.0, "gaussian")
    assert margin(acq) % 2 == 1  # an odd margin: a gate shifted by it flips every parity
    for seed in range(3):
        item = sample_patch([vol], spec, acq, np.random.default_rng(seed))
        parity = np.round(item["target"].numpy()) % 2 == 1
        np.testing.assert_array_equal(item["gate"].numpy() > 0.5, parity)
