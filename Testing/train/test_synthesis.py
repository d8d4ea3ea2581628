"""Stage I of self-supervised training: the slice VAE learns, interpolation keeps its ends,
synthetic volumes sit on the right grid, training resumes, bad inputs are refused."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import KNEE_QDESS, slice_points
from sainr.cli.synthesize import add_arguments as add_arguments_synthesize
from sainr.cli.synthesize import run as run_synthesize
from sainr.cli.train_vae import add_arguments as add_arguments_train
from sainr.cli.train_vae import run as run_train
from sainr.errors import SainrError, SpacingError, WeightsError
from sainr.intensity import robust_scale
from sainr.model.vae import SliceVAE, VAEConfig
from sainr.train.selfsup.slices import slice_stack
from sainr.train.selfsup.synthesis import (
    interpolate_slices,
    prepare_thick,
    synthesize,
    synthesize_volume,
)
from sainr.train.selfsup.vae_training import VAETrainConfig, load_vae, train_vae

TINY = {"widths": [8, 16, 16], "latent": 4}
QUIET = {"log": lambda *_: None, "device": "cpu"}
#: After TRAIN_STEPS the reconstruction of the test slice beats the mean image by 3.5 dB (2.4 dB
#: without the VAE's zero-initialised residual branches); untrained: -4 dB.
MARGIN_DB = 1.5
TRAIN_STEPS = 150


def _config(steps: int) -> VAETrainConfig:
    return VAETrainConfig(
        model=TINY,
        steps=steps,
        batch=4,
        crop=64,
        lr=3e-3,
        warmup=20,
        checkpoint_minutes=100,
        log_every=1000,
    )


def _untrained() -> SliceVAE:
    torch.manual_seed(0)
    return SliceVAE(VAEConfig.from_dict(TINY)).eval()


@pytest.fixture(scope="module")
def thick_file(tmp_path_factory, knee_thick):
    path = tmp_path_factory.mktemp("thick") / "knee_3mm.nii.gz"
    sitk.WriteImage(knee_thick, str(path))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, thick_file):
    """A tiny VAE trained briefly on the real 3 mm knee crop (about 4 s on one thread)."""
    out = tmp_path_factory.mktemp("vae")
    train_vae([thick_file], out, _config(TRAIN_STEPS), **QUIET)
    return out / "vae.pt"


def test_vae_is_fully_convolutional_and_samples_only_in_training():
    vae = _untrained()
    x = torch.rand(2, 1, 37, 50)
    with torch.no_grad():
        out = vae(x)
        assert out.recon.shape == x.shape
        assert out.mu.shape == out.logvar.shape == (2, 4, 5, 7)  # ceil(37 / 8), ceil(50 / 8)
        torch.testing.assert_close(out.recon, vae.decode(vae.encode(x)[0], (37, 50)))
        vae.train()
        assert not torch.equal(vae(x).recon, vae(x).recon)


def _gain_over_mean(vae: SliceVAE, plane: np.ndarray) -> float:
    """dB by which the VAE's reconstruction of ``plane`` beats the constant mean image."""
    with torch.no_grad():
        recon = vae(torch.from_numpy(plane[None, None])).recon[0, 0].numpy()
    return float(10 * np.log10(plane.var() / np.mean((recon - plane) ** 2)))


def test_a_few_steps_reconstruct_a_real_slice_better_than_its_mean(trained, knee_thick):
    plane = slice_stack(knee_thick, "knee").slices[10]
    assert (
        _gain_over_mean(_untrained(), plane) < MARGIN_DB < _gain_over_mean(load_vae(trained), plane)
    )


@pytest.mark.parametrize("factor", [2, 4])
def test_latent_interpolation_decodes_the_lerp_and_keeps_the_reconstructions(
    trained, knee_thick, factor
):
    vae = load_vae(trained)
    real = sitk.GetArrayFromImage(knee_thick)[:5].astype(np.float32)  # slice axis k is first
    thin, recon = interpolate_slices(vae, real, factor, "latent")
    assert thin.shape == ((5 - 1) * factor + 1, 64, 64)
    np.testing.assert_array_equal(thin[::factor], recon)  # t = 0 and t = 1
    scale = robust_scale(real)
    with torch.no_grad():
        mu = vae.encode(torch.from_numpy(scale.normalize(real)[:, None]))[0]
        decoded = scale.denormalize(vae.decode(mu, (64, 64))[:, 0].numpy())
        half = scale.denormalize(vae.decode((mu[1:2] + mu[2:3]) / 2, (64, 64))[0, 0].numpy())
    tol = 1e-4 * (scale.high - scale.low)
    np.testing.assert_allclose(recon, decoded, rtol=0, atol=tol)  # one slice at a time
    np.testing.assert_allclose(thin[factor + factor // 2], half, rtol=0, atol=tol)  # t = 1/2


def test_residual_mode_returns_the_real_slices_exactly(trained, knee_thick):
    vae = load_vae(trained)
    real = sitk.GetArrayFromImage(knee_thick).astype(np.float32)  # slice axis k is first
    thin, recon = interpolate_slices(vae, real, 4, "residual")
    np.testing.assert_array_equal(thin[::4], real)
    t = 0.25  # thin slice 1: a quarter of the way from slice 0 to slice 1
    latent, _ = interpolate_slices(vae, real, 4, "latent")
    expected = (1 - t) * real[0] + t * real[1] + latent[1] - ((1 - t) * recon[0] + t * recon[1])
    np.testing.assert_allclose(thin[1], expected, rtol=0, atol=1e-3 * np.ptp(real))
    assert not np.allclose(thin[1], (1 - t) * real[0] + t * real[1])  # the VAE did contribute


def _oblique_slice_axis_first(image: sitk.Image) -> sitk.Image:
    """The knee with its slice axis moved to index axis i and an oblique direction."""
    moved = sitk.PermuteAxes(image, [2, 0, 1])
    angle = np.deg2rad(20)
    rot = np.array(
        [[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]
    )
    moved.SetDirection(tuple((rot @ np.asarray(moved.GetDirection()).reshape(3, 3)).ravel()))
    moved.SetOrigin((12.5, -30.0, 7.25))
    return moved


@pytest.mark.parametrize("mode", ["residual", "latent"])
def test_synthetic_geometry_puts_every_input_slice_in_place(trained, knee_thick, mode):
    image = _oblique_slice_axis_first(knee_thick)
    assert image.GetSize() == (20, 64, 64)
    syn = synthesize_volume(image, load_vae(trained), factor=3, mode=mode)
    out = syn.image
    assert out.GetSize() == ((20 - 1) * 3 + 1, 64, 64)
    np.testing.assert_allclose(
        out.GetSpacing(), (image.GetSpacing()[0] / 3, *image.GetSpacing()[1:])
    )
    assert out.GetOrigin() == image.GetOrigin() and out.GetDirection() == image.GetDirection()
    np.testing.assert_allclose(
        slice_points(out, 0, np.arange(20) * 3), slice_points(image, 0, np.arange(20)), atol=1e-6
    )
    if mode == "residual":
        np.testing.assert_array_equal(
            sitk.GetArrayFromImage(out)[:, :, ::3], sitk.GetArrayFromImage(image).astype(np.float32)
        )
        assert syn.checks["decimated_psnr"] == float("inf")
    assert syn.checks["slices_out"] == 58 and syn.checks["axis"] == 0


def test_cli_functions_train_resume_and_synthesize(tmp_path, thick_file, capsys):
    train = argparse.ArgumentParser()
    add_arguments_train(train)
    argv = [
        str(thick_file),
        "--out",
        str(tmp_path / "run"),
        "--steps",
        "3",
        "--batch",
        "2",
        "--crop",
        "32",
        "--widths",
        "8",
        "16",
        "--latent",
        "2",
        "--device",
        "cpu",
    ]
    assert run_train(train.parse_args(argv)) == 0
    assert run_train(train.parse_args(argv[:4] + ["5"] + argv[5:])) == 0
    assert "resumed from" in capsys.readouterr().out
    assert torch.load(tmp_path / "run" / "vae.pt", weights_only=True)["step"] == 5
    synth = argparse.ArgumentParser()
    add_arguments_synthesize(synth)
    args = synth.parse_args(
        [
            str(thick_file),
            "--vae",
            str(tmp_path / "run" / "vae.pt"),
            "--out",
            str(tmp_path / "syn"),
            "--device",
            "cpu",
        ]
    )
    assert run_synthesize(args) == 0
    assert "(b) decimated PSNR inf dB" in capsys.readouterr().out
    out = sitk.ReadImage(str(tmp_path / "syn" / "knee_3mm.nii.gz"))
    assert out.GetSize() == (64, 64, 77) and out.GetPixelID() == sitk.sitkFloat32
    checks = json.loads((tmp_path / "syn" / "knee_3mm_checks.json").read_text(encoding="utf-8"))
    assert checks["decimated_psnr"] == "inf" and checks["recon_psnr"] > 0
    assert (tmp_path / "syn" / "knee_3mm_reformat.png").read_bytes()[:4] == b"\x89PNG"
    assert not list((tmp_path / "syn").glob(".sainr-*"))  # no temp file left


def test_resume_after_interruption_reproduces_the_uninterrupted_run(tmp_path, thick_file):
    train_vae([thick_file], tmp_path / "a", _config(5), **QUIET)
    train_vae(
        [thick_file], tmp_path / "b", _config(5), max_minutes=0, **QUIET
    )  # stops after 1 step
    assert torch.load(tmp_path / "b" / "vae.pt", weights_only=True)["step"] == 1
    train_vae([thick_file], tmp_path / "b", _config(5), **QUIET)
    a = torch.load(tmp_path / "a" / "vae.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "vae.pt", weights_only=True)
    assert a["step"] == b["step"] == 5
    for key in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], rtol=0, atol=0)
    other = VAETrainConfig(**{**vars(_config(6)), "model": {"widths": [8, 16], "latent": 4}})
    with pytest.raises(SainrError, match="another --out"):
        train_vae([thick_file], tmp_path / "b", other, **QUIET)


def test_prepare_thick_crops_and_keeps_every_kth_slice_in_place(tmp_path, knee_image):
    thick = prepare_thick(
        KNEE_QDESS, tmp_path / "thick.nii.gz", keep_every=4, crop=[[], [0, 40], []]
    )
    assert thick.GetSize() == (64, 40, 10)
    np.testing.assert_allclose(thick.GetSpacing()[2], 4 * knee_image.GetSpacing()[2])
    np.testing.assert_allclose(
        slice_points(thick, 2, range(10)), slice_points(knee_image, 2, range(0, 40, 4)), atol=1e-6
    )
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "thick.nii.gz")))
    np.testing.assert_array_equal(written, sitk.GetArrayFromImage(knee_image)[::4, :40])


def _bad_inputs(tmp_path, knee_image):
    flat = tmp_path / "flat.nii.gz"
    sitk.WriteImage(knee_image[:, :, 3], str(flat))  # a 2D image
    single = tmp_path / "single.nii.gz"
    sitk.WriteImage(knee_image[:, :, 3:4], str(single))  # one slice
    return {"2D image": flat, "one slice": single, "missing file": tmp_path / "missing.nii.gz"}


@pytest.mark.parametrize("case", ["2D image", "one slice", "missing file"])
def test_bad_inputs_are_refused_before_anything_is_written(tmp_path, knee_image, case):
    path = _bad_inputs(tmp_path, knee_image)[case]
    with pytest.raises(SainrError):
        train_vae([path], tmp_path / "run", _config(2), **QUIET)
    assert not (tmp_path / "run" / "vae.pt").exists()
    with pytest.raises(SainrError):
        synthesize(path, tmp_path / "out.nii.gz", _untrained())
    assert not (tmp_path / "out.nii.gz").exists()


def test_bad_options_are_refused(tmp_path, thick_file):
    with pytest.raises(WeightsError, match="not found"):
        load_vae(tmp_path / "vae.pt")
    with pytest.raises(SpacingError, match="integer >= 2"):
        synthesize(thick_file, tmp_path / "out.nii.gz", _untrained(), factor=1)
    with pytest.raises(SainrError, match="NIfTI"):
        synthesize(thick_file, tmp_path / "out.nrrd", _untrained())
    with pytest.raises(SainrError, match="no input volumes"):
        train_vae([], tmp_path / "run", _config(2), **QUIET)
