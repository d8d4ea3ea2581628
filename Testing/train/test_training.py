"""Training on a small real crop: it learns, it resumes exactly, degradations behave."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import KNEE_QDESS
from sainr.acquisition import Acquisition
from sainr.cli import main
from sainr.runtime.weights import load_model
from sainr.train.data import PatchSpec, collate, load_volume, sample_patch, usable_axes
from sainr.train.training import TrainConfig, train


def _config(steps: int, **extra) -> TrainConfig:
    extra.setdefault("patch", {"lr_slices": 5, "size": 24, "queries": 512, "factors": [2, 3]})
    return TrainConfig(
        data=[{"path": KNEE_QDESS.name}],
        val=[],
        model={"channels": 8, "blocks": 1, "hidden": 16},
        steps=steps,
        batch=2,
        lr=2e-3,
        checkpoint_minutes=100,
        log_every=1000,
        **extra,
    )


def _l1(model, batch) -> float:
    lr, q, tgt = batch
    model.eval()
    with torch.no_grad():
        return float((model(lr, q, tgt["acquisition"]).value - tgt["target"]).abs().mean())


def test_a_few_steps_reduce_the_loss_on_a_real_crop(tmp_path):
    vol = load_volume(KNEE_QDESS)
    rng = np.random.default_rng(5)
    spec = PatchSpec(lr_slices=5, size=24, queries=2048, factors=(2,))
    batch = collate(
        [sample_patch([vol], spec, Acquisition(2.0, 1.0, "none"), rng) for _ in range(4)]
    )
    train(_config(40), tmp_path, KNEE_QDESS.parent, log=lambda *_: None)
    torch.manual_seed(0)
    from sainr.model import SAINR, ModelConfig

    untrained = SAINR(ModelConfig(channels=8, blocks=1, hidden=16))
    trained = load_model(tmp_path / "last.pt")
    assert _l1(trained, batch) < 0.8 * _l1(untrained, batch)


@pytest.mark.parametrize(("schedule", "ema"), [("step", 0.0), ("cosine", 0.9)])
def test_resume_after_interruption_reproduces_the_uninterrupted_run(tmp_path, schedule, ema):
    quiet = {"log": lambda *_: None}
    cfg = _config(
        6,
        schedule=schedule,
        ema=ema,
        warmup=2,
        in_plane_axes=True,
        patch={
            "lr_slices": 5,
            "size": 24,
            "queries": 512,
            "factors": [2, 2.5],
            "profiles": ["none", "gaussian", "sinc"],
            "profile_weights": [0.4, 0.3, 0.3],
            "thickness": [0.3, 2.0],
            "jitter": 0.1,
            "label_noise": 0.2,
            "intensity": 0.5,
            "contrast": 0.5,
            "bias": 0.3,
            "elastic": 2.0,
            "noise": 0.01,
            "rician": 0.03,
        },
    )
    train(cfg, tmp_path / "a", KNEE_QDESS.parent, **quiet)
    train(cfg, tmp_path / "b", KNEE_QDESS.parent, max_minutes=0, **quiet)  # stops after 1 step
    stopped = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert stopped["step"] == 1
    train(cfg, tmp_path / "b", KNEE_QDESS.parent, **quiet)
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for key in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], rtol=0, atol=0)
    assert ("ema_state_dict" in a) == ("ema_state_dict" in b) == bool(ema)
    for key in a.get("ema_state_dict", {}):
        torch.testing.assert_close(a["ema_state_dict"][key], b["ema_state_dict"][key])
    assert a["optimizer"]["state"][0]["step"] == b["optimizer"]["state"][0]["step"]
    torch.testing.assert_close(
        a["optimizer"]["state"][0]["exp_avg"], b["optimizer"]["state"][0]["exp_avg"]
    )


def test_the_moving_average_is_what_a_checkpoint_serves(tmp_path):
    """With ``ema``, validation and export use the weights' moving average: it lags the raw
    weights and is what loading the checkpoint returns."""
    train(_config(4, ema=0.5), tmp_path, KNEE_QDESS.parent, log=lambda *_: None)
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["ema_updates"] == 4
    loaded = load_model(tmp_path / "last.pt").state_dict()
    raw, averaged = ckpt["state_dict"], ckpt["ema_state_dict"]
    weight = "decoder.net.0.weight"
    assert not torch.equal(raw[weight], averaged[weight])
    for key, value in averaged.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)


def test_cosine_schedule_is_planned_on_the_total_step_count():
    cfg = TrainConfig(steps=1000, schedule="cosine", warmup=100, lr_floor=0.02)
    lrs = [cfg.lr_factor(n) for n in range(1000)]
    assert lrs[0] == pytest.approx(0.01) and max(lrs) == pytest.approx(1.0) == lrs[100]
    assert all(a >= b for a, b in zip(lrs[100:], lrs[101:]))  # decays monotonically
    assert lrs[550] == pytest.approx(0.51, abs=1e-6) and lrs[-1] == pytest.approx(0.02, abs=1e-3)
    step = TrainConfig(steps=1000, milestones=(0.5, 0.75))
    assert [step.lr_factor(n) for n in (0, 499, 500, 750)] == [1.0, 1.0, 0.5, 0.25]


def test_in_plane_axes_of_anisotropic_volumes_become_slice_axes():
    assert usable_axes((0.3, 0.3, 1.5)) == (2,)
    assert usable_axes((0.3, 0.3, 1.5), in_plane=True) == (2, 0, 1)
    assert usable_axes((1.0, 1.0, 1.1), in_plane=True) == (0, 1, 2)


def _rank_logs(log_dir: Path) -> str:
    """The head of every rank's own stderr, where the cause of a failed rank is written."""
    heads = [
        f"--- {log.relative_to(log_dir)} ---\n{log.read_text(errors='replace')[:1500]}"
        for log in sorted(log_dir.rglob("stderr.log"))
    ]
    return "\n".join(heads) + "\n--- launcher ---\n"


def test_torchrun_ddp_on_cpu(tmp_path):
    """Two processes with gloo through PyTorch's own launcher; rank 0 writes the checkpoint."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "--log-dir",
        str(tmp_path / "logs"),
        "--redirects",
        "3",
        "-m",
        "sainr",
        "train",
        "--data-root",
        str(KNEE_QDESS.parent),
        "--out",
        str(tmp_path),
        "--set",
        "steps=3",
        "--set",
        f'data=[{{"path": "{KNEE_QDESS.name}"}}]',
        "--set",
        'model={"channels": 8, "blocks": 1, "hidden": 16}',
        "--set",
        'patch={"lr_slices": 5, "size": 24, "queries": 256, "factors": [2]}',
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, _rank_logs(tmp_path / "logs") + proc.stderr[-1000:]
    assert torch.load(Path(tmp_path) / "last.pt", weights_only=True)["step"] == 3


def test_train_refuses_missing_volumes_before_it_starts(tmp_path, capsys):
    """A wrong --data-root or a config without volumes is a one-line error, and no run folder
    content is written."""
    volume = f'data=[{{"path": "{KNEE_QDESS.name}"}}]'
    out = tmp_path / "run"
    assert main(["train", "--data-root", str(tmp_path), "--out", str(out), "--set", volume]) == 2
    err = capsys.readouterr().err
    assert "1 training volume(s) not found" in err and KNEE_QDESS.name in err
    assert main(["train", "--data-root", str(KNEE_QDESS.parent), "--out", str(out)]) == 2
    assert "no training volumes" in capsys.readouterr().err
    assert not out.exists()
