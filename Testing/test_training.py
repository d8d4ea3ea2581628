"""Training on a small real crop: it learns, it resumes exactly, degradations behave."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import KNEE_QDESS
from sainr.data import (
    PatchSpec,
    blur_slices,
    collate,
    decimate,
    load_volume,
    sample_patch,
    slice_profile,
)
from sainr.training import TrainConfig, train
from sainr.weights import load_model


def _config(steps: int, **extra) -> TrainConfig:
    return TrainConfig(
        data=[{"path": KNEE_QDESS.name}],
        val=[],
        model={"channels": 8, "blocks": 1, "hidden": 16},
        patch={"lr_slices": 5, "size": 24, "queries": 512, "factors": [2, 3]},
        steps=steps, batch=2, lr=2e-3, checkpoint_minutes=100, log_every=1000, **extra,
    )  # fmt: skip


def _l1(model, batch) -> float:
    lr, q, tgt = batch
    model.eval()
    with torch.no_grad():
        return float((model(lr, q).value - tgt["target"]).abs().mean())


def test_a_few_steps_reduce_the_loss_on_a_real_crop(tmp_path):
    vol = load_volume(KNEE_QDESS)
    rng = np.random.default_rng(5)
    spec = PatchSpec(lr_slices=5, size=24, queries=2048, factors=(2,))
    batch = collate([sample_patch([vol], spec, 2.0, rng) for _ in range(4)])
    train(_config(40), tmp_path, KNEE_QDESS.parent, log=lambda *_: None)
    torch.manual_seed(0)
    from sainr.model import SAINR, ModelConfig

    untrained = SAINR(ModelConfig(channels=8, blocks=1, hidden=16))
    trained = load_model(tmp_path / "last.pt")
    assert _l1(trained, batch) < 0.8 * _l1(untrained, batch)


def test_resume_after_interruption_reproduces_the_uninterrupted_run(tmp_path):
    quiet = {"log": lambda *_: None}
    train(_config(6), tmp_path / "a", KNEE_QDESS.parent, **quiet)
    train(_config(6), tmp_path / "b", KNEE_QDESS.parent, max_minutes=0, **quiet)  # stops after 1 step
    stopped = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert stopped["step"] == 1
    train(_config(6), tmp_path / "b", KNEE_QDESS.parent, **quiet)
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for key in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], rtol=0, atol=0)
    assert a["optimizer"]["state"][0]["step"] == b["optimizer"]["state"][0]["step"]
    torch.testing.assert_close(a["optimizer"]["state"][0]["exp_avg"], b["optimizer"]["state"][0]["exp_avg"])


@pytest.mark.parametrize("kind, thickness", [("gaussian", 3.0), ("boxcar", 3.0), ("boxcar", 2.4)])
def test_slice_profile_preserves_mean_intensity(knee_image, kind, thickness):
    hr = sitk.GetArrayFromImage(knee_image).astype(np.float32)
    kernel = slice_profile(thickness, kind)
    assert kernel.sum() == pytest.approx(1.0) and np.allclose(kernel, kernel[::-1])
    blurred = blur_slices(hr, thickness, kind)
    assert blurred.mean() == pytest.approx(hr.mean(), rel=2e-3)
    assert np.abs(np.diff(blurred, axis=0)).mean() < np.abs(np.diff(hr, axis=0)).mean()


def test_decimation_keeps_every_kth_slice_and_interpolates_between(knee_image):
    hr = sitk.GetArrayFromImage(knee_image).astype(np.float32)
    np.testing.assert_array_equal(decimate(hr, 3.0, 10), hr[0:30:3])
    half = decimate(hr, 2.5, 4)
    np.testing.assert_allclose(half[1], (hr[2] + hr[3]) / 2)


def test_torchrun_ddp_on_cpu(tmp_path):
    """Two processes with gloo through PyTorch's own launcher; rank 0 writes the checkpoint."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "sainr", "train", "--data-root", str(KNEE_QDESS.parent), "--out", str(tmp_path),
           "--set", "steps=3", "--set", f'data=[{{"path": "{KNEE_QDESS.name}"}}]',
           "--set", 'model={"channels": 8, "blocks": 1, "hidden": 16}',
           "--set", 'patch={"lr_slices": 5, "size": 24, "queries": 256, "factors": [2]}']  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert torch.load(Path(tmp_path) / "last.pt", weights_only=True)["step"] == 3
