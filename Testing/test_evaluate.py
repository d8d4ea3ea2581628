"""``sainr evaluate`` end to end on real crops, with a tiny model trained inside the test."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from sainr.baselines import linear_interpolate
from sainr.cli import main
from sainr.data import decimate
from sainr.evaluate import simulate
from sainr.geometry import slice_grid
from sainr.inference import super_resolve
from sainr.intensity import robust_scale
from sainr.metrics import psnr
from sainr.model import gating_disabled
from sainr.training import TrainConfig, train
from sainr.weights import load_model

DATA = Path(__file__).parent / "Data"
QDESS = DATA / "knee_qdess_crop_1p5mm.nii.gz"  # 1.5 mm slices along k
FAIR = DATA / "knee_fair_crop_1mm.nii.gz"  # near-isotropic 1 mm
CROP = 32
METHODS = {"ground truth", "linear", "B-spline", "tiny", "tiny (ungated)"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A gated SA-INR checkpoint after a few real training steps on the knee crop."""
    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(
        data=[{"path": str(QDESS)}],
        model={"channels": 8, "blocks": 1, "hidden": 16, "decoder_layers": 3, "window": 3},
        patch={"lr_slices": 6, "size": 24, "queries": 256, "factors": [2, 3]},
        steps=3,
        batch=1,
        log_every=100,
    )
    train(cfg, run, run, log=lambda *_: None)
    return run / "last.pt"


@pytest.fixture(scope="module")
def evaluated(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval")
    rc = main([
        "evaluate", str(QDESS), str(FAIR), "--axis", "auto", "1", "--factors", "2", "2.5",
        "--model", f"tiny={checkpoint}", "--crop", str(CROP), "--max-slices", "2",
        "--device", "cpu", "--out", str(out),
    ])  # fmt: skip
    assert rc == 0
    return out


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv") as fh:
        return list(csv.DictReader(fh))


def _normalised_crop(path: Path, axis: int) -> np.ndarray:
    """What the evaluation should score against, computed independently here."""
    a = np.moveaxis(
        sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32), 2 - axis, 0
    )
    y0, x0 = (a.shape[1] - CROP) // 2, (a.shape[2] - CROP) // 2
    a = a[:, y0 : y0 + CROP, x0 : x0 + CROP]
    return robust_scale(a).normalize(a)


def test_csv_has_every_volume_factor_and_method(evaluated: Path) -> None:
    rows = _rows(evaluated)
    cases = {(r["volume"], r["axis"], r["factor"]) for r in rows}
    assert cases == {
        ("knee_qdess_crop_1p5mm", "2", "2"), ("knee_qdess_crop_1p5mm", "2", "2.5"),
        ("knee_fair_crop_1mm", "1", "2"), ("knee_fair_crop_1mm", "1", "2.5"),
    }  # fmt: skip
    for case in cases:
        assert {
            r["method"] for r in rows if (r["volume"], r["axis"], r["factor"]) == case
        } == METHODS
    for r in rows:
        assert 0.0 < float(r["s3"]) < 1.0
        if r["method"] != "ground truth":
            assert 5.0 < float(r["psnr"]) < 80.0 and 0.0 < float(r["ssim"]) <= 1.0
            assert float(r["seconds"]) >= 0.0
    attended = {r["method"]: float(r["attended"]) for r in rows if r["attended"]}
    assert attended["tiny (ungated)"] == 1.0 and 0.0 <= attended["tiny"] <= 1.0
    assert not any(r["attended"] for r in rows if r["method"] in ("linear", "B-spline"))


@pytest.mark.parametrize(("path", "axis", "factor"), [(QDESS, 2, 2.5), (FAIR, 1, 2.0)])
def test_scores_match_an_independent_computation(
    evaluated: Path, checkpoint: Path, path: Path, axis: int, factor: float
) -> None:
    hr = _normalised_crop(path, axis)
    n_lr = int((hr.shape[0] - 1) // factor) + 1
    lr, grid = decimate(hr, factor, n_lr), slice_grid(n_lr, factor, 1.0)
    truth = hr[: grid.n_hr]
    model, _ = super_resolve(load_model(checkpoint), lr, grid, torch.device("cpu"))
    scores = {r["method"]: float(r["psnr"]) for r in _rows(evaluated)
              if r["volume"] == path.name[:-7] and float(r["factor"]) == factor
              and r["method"] != "ground truth"}  # fmt: skip
    assert scores["linear"] == pytest.approx(psnr(linear_interpolate(lr, grid), truth), abs=1e-4)
    assert scores["tiny"] == pytest.approx(psnr(model, truth), abs=1e-3)


def test_simulated_truth_lies_on_the_thin_slice_grid() -> None:
    hr = np.arange(41, dtype=np.float32)[:, None, None] * np.ones((1, 8, 8), np.float32)
    lr, grid, truth = simulate(hr, 2.5)
    assert lr[:, 0, 0].tolist() == pytest.approx([0, 2.5, 5, 7.5, 10, 12.5, 15, 17.5, 20, 22.5,
                                                  25, 27.5, 30, 32.5, 35, 37.5, 40])  # fmt: skip
    assert grid.n_hr == truth.shape[0] == 41
    np.testing.assert_allclose(linear_interpolate(lr, grid), truth, atol=1e-5)


def test_markdown_report_states_tables_and_configuration(evaluated: Path) -> None:
    md = (evaluated / "results.md").read_text()
    for heading in ("## Configuration", "## PSNR (dB)", "## SSIM", "## S3 sharpness",
                    "## Wall time (s)", "## Gating: `tiny` gated vs ungated", "## GMACs"):  # fmt: skip
        assert heading in md
    assert (
        "| volume | factor | linear | B-spline | tiny | tiny (ungated) | tiny − best interp. |"
        in md
    )
    assert "| knee_fair_crop_1mm | ×2.5 |" in md and "| **mean** | **×2** |" in md
    assert "| **mean** | **all** |" in md
    assert f"torch {torch.__version__}" in md and "device: cpu" in md
    assert f"{CROP}×{CROP} in-plane centre crop" in md and "channels=8" in md
    assert "| encoder + MLP, no LASA | 288.6 | 302.6 | 316.5 |" in md


def test_figures_are_written_per_volume_and_factor(evaluated: Path) -> None:
    for name in ("knee_qdess_crop_1p5mm", "knee_fair_crop_1mm"):
        for factor in ("2", "2.5"):
            png = evaluated / f"figure_{name}_x{factor}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gating_disabled_attends_every_query_and_restores_the_gate(checkpoint: Path) -> None:
    model = load_model(checkpoint)
    gate = model.gate
    lr = _normalised_crop(QDESS, 2)[::3]
    grid = slice_grid(lr.shape[0], 3.0, 1.0)
    with pytest.raises(RuntimeError), gating_disabled(model):
        assert model.gate is None
        _, mask = super_resolve(model, lr, grid, torch.device("cpu"))
        assert mask.all()
        raise RuntimeError("the gate comes back even after an error")
    assert model.gate is gate


def test_flops_flag_prints_tables_without_volumes(checkpoint: Path, capsys) -> None:
    assert main(["evaluate", "--flops", "--model", f"tiny={checkpoint}"]) == 0
    out = capsys.readouterr().out
    assert "**tiny**" in out and "| encoder + MLP, no LASA | 288.6 | 302.6 | 316.5 |" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["evaluate", "--out", "x"], "at least one HR volume"),
        (["evaluate", str(QDESS), str(FAIR), "--axis", "0", "1", "2", "--out", "x"], "--axis"),
        (["evaluate", str(QDESS), "--factors", "0.5", "--out", "x"], "factors"),
        (["evaluate", str(QDESS), "--model", "=w.pt", "--out", "x"], "NAME=WEIGHTS"),
    ],
)
def test_user_errors_exit_2_with_a_message(argv: list[str], message: str, capsys) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err
