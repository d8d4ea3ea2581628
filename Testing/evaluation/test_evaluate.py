"""``sainr evaluate`` end to end on real crops, with a tiny model trained inside the test."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import sainr.train.adapt
from conftest import DATA
from sainr.acquisition import Acquisition, acquire, lr_count
from sainr.cli import main
from sainr.errors import SainrError
from sainr.evaluation.baselines import linear_interpolate
from sainr.evaluation.cases import load_case, simulate
from sainr.evaluation.eclare import (
    eclare_thickness,
    same_fov_onto_grid,
    same_fov_positions,
    write_lr_nifti,
)
from sainr.evaluation.methods import lr_spacing
from sainr.evaluation.metrics import foreground_mask, psnr
from sainr.geometry import slice_grid
from sainr.intensity import robust_scale
from sainr.model import gating_disabled
from sainr.runtime.consistency import enforce_consistency
from sainr.runtime.inference import super_resolve
from sainr.runtime.weights import load_model
from sainr.train.training import TrainConfig, train

QDESS = DATA / "knee_qdess_crop_1p5mm.nii.gz"  # 1.5 mm slices along k
FAIR = DATA / "knee_fair_crop_1mm.nii.gz"  # near-isotropic 1 mm
CROP = 32
ESTIMATED = {"tiny (estimated thickness)"}
METHODS = {"ground truth", "linear", "B-spline", "B-spline + Wiener", "tiny", "tiny (ungated)"}
METHODS |= {"tiny (network only)"}
METHODS |= ESTIMATED


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
    rc = main(
        [
            "evaluate",
            str(QDESS),
            str(FAIR),
            "--axis",
            "auto",
            "1",
            "--factors",
            "2",
            "2.5",
            "--profiles",
            "none",
            "gaussian",
            "--model",
            f"tiny={checkpoint}",
            "--crop",
            str(CROP),
            "--max-slices",
            "2",
            "--device",
            "cpu",
            "--network-only",
            "--note",
            "TEST volumes: reported only",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    return out


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _normalised_crop(path: Path, axis: int, crop: int = CROP) -> np.ndarray:
    """What the evaluation should score against, computed independently here."""
    a = np.moveaxis(
        sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32), 2 - axis, 0
    )
    y0, x0 = (a.shape[1] - crop) // 2, (a.shape[2] - crop) // 2
    a = a[:, y0 : y0 + crop, x0 : x0 + crop]
    return robust_scale(a).normalize(a)


def test_csv_has_every_volume_profile_factor_and_method(evaluated: Path) -> None:
    rows = _rows(evaluated)
    cases = {(r["volume"], r["axis"], r["profile"], r["factor"]) for r in rows}
    expected = {("none", "2"), ("gaussian", "2"), ("gaussian", "2.5")}  # decimation: integer r
    assert cases == {("knee_qdess_crop_1p5mm", "2", *c) for c in expected} | {
        ("knee_fair_crop_1mm", "1", *c) for c in expected
    }
    for case in cases:
        assert {
            r["method"] for r in rows if (r["volume"], r["axis"], r["profile"], r["factor"]) == case
        } == METHODS
    for r in rows:
        assert 0.0 < float(r["s3"]) < 1.0
        if r["method"] != "ground truth":
            assert 5.0 < float(r["psnr"]) < 80.0 and 0.0 < float(r["ssim"]) <= 1.0
            assert 5.0 < float(r["psnr_fg"]) < 80.0
            assert float(r["seconds"]) >= 0.0
        else:
            assert 0.0 < float(r["foreground"]) <= 1.0
    attended = {r["method"]: float(r["attended"]) for r in rows if r["attended"]}
    assert attended["tiny (ungated)"] == 1.0 and 0.0 <= attended["tiny"] <= 1.0
    assert not any(r["attended"] for r in rows if r["method"] in ("linear", "B-spline"))
    assert not any(r["thickness"] for r in rows if r["method"] in ("linear", "B-spline"))


def test_wiener_row_deconvolves_thick_slices_and_leaves_decimation_alone(evaluated: Path) -> None:
    rows = _rows(evaluated)
    index = {(r["volume"], r["profile"], r["factor"], r["method"]): r for r in rows}
    for (volume, profile, factor, method), r in index.items():
        if method != "B-spline + Wiener":
            continue
        plain = float(index[(volume, profile, factor, "B-spline")]["psnr"])
        truth = index[(volume, profile, factor, "ground truth")]
        assert float(r["thickness"]) == pytest.approx(float(truth["thickness"]))
        if profile == "none":  # a delta profile: nothing to undo
            assert float(r["psnr"]) == pytest.approx(plain, abs=1e-3)
        else:
            assert float(r["psnr"]) > plain


def test_foreground_psnr_is_scored_on_the_truths_tissue(evaluated: Path) -> None:
    path, axis, factor = FAIR, 1, 2.0
    hr = _normalised_crop(path, axis)
    acq = Acquisition(factor, 1.0, "gaussian")
    n_lr = int((hr.shape[0] - 1) // factor) + 1
    lr, grid = acquire(hr, acq, n_lr), slice_grid(n_lr, factor, 1.0)
    truth = hr[: grid.n_hr]
    mask = foreground_mask(truth)
    row = next(
        r
        for r in _rows(evaluated)
        if r["volume"] == "knee_fair_crop_1mm"
        and r["profile"] == "gaussian"
        and float(r["factor"]) == factor
        and r["method"] == "linear"
    )
    pred = linear_interpolate(lr, grid)
    assert float(row["psnr_fg"]) == pytest.approx(psnr(pred, truth, mask), abs=1e-3)
    assert float(row["psnr_fg"]) != pytest.approx(psnr(pred, truth), abs=0.05)


@pytest.mark.parametrize(
    ("path", "axis", "profile", "factor"),
    [(QDESS, 2, "gaussian", 2.5), (FAIR, 1, "none", 2.0), (FAIR, 1, "gaussian", 2.0)],
)
def test_scores_match_an_independent_computation(
    evaluated: Path, checkpoint: Path, path: Path, axis: int, profile: str, factor: float
) -> None:
    hr = _normalised_crop(path, axis)
    n_lr = int((hr.shape[0] - 1) // factor) + 1
    acq = Acquisition(factor, 1.0, profile)
    lr, grid = acquire(hr, acq, n_lr), slice_grid(n_lr, factor, 1.0)
    truth = hr[: grid.n_hr]
    net = load_model(checkpoint)
    network, _ = super_resolve(net, lr, grid, torch.device("cpu"), thickness=acq.relative_thickness)
    model = network.copy()
    enforce_consistency(model, lr, grid, acq.relative_thickness)  # as users get it
    scores = {
        r["method"]: float(r["psnr"])
        for r in _rows(evaluated)
        if r["volume"] == path.name[:-7]
        and float(r["factor"]) == factor
        and r["profile"] == profile
        and r["method"] != "ground truth"
    }
    assert scores["linear"] == pytest.approx(psnr(linear_interpolate(lr, grid), truth), abs=1e-4)
    assert scores["tiny"] == pytest.approx(psnr(model, truth), abs=1e-3)
    assert scores["tiny (network only)"] == pytest.approx(psnr(network, truth), abs=1e-3)


def test_named_precision_runs_every_model_row_and_is_reported(
    checkpoint: Path, tmp_path: Path
) -> None:
    """``auto`` differs between CPUs (bf16, int8, fp32): a run that names fp32 scores the
    fp32 output on any machine and says so."""
    out = tmp_path / "fp32"
    argv = ["evaluate", str(FAIR), "--axis", "1", "--factors", "2", "--profiles", "none"]
    argv += ["--model", f"tiny={checkpoint}", "--crop", str(CROP), "--max-slices", "2"]
    argv += ["--no-estimated", "--no-ungated", "--device", "cpu", "--precision", "fp32"]
    assert main([*argv, "--out", str(out)]) == 0
    hr = _normalised_crop(FAIR, 1)
    n_lr = int((hr.shape[0] - 1) // 2) + 1
    lr, grid = acquire(hr, Acquisition(2.0, 1.0, "none"), n_lr), slice_grid(n_lr, 2.0, 1.0)
    pred, _ = super_resolve(load_model(checkpoint), lr, grid, torch.device("cpu"), precision="fp32")
    enforce_consistency(pred, lr, grid, 0.5)  # decimated x2: one thin slice thick
    row = next(r for r in _rows(out) if r["method"] == "tiny")
    assert float(row["psnr"]) == pytest.approx(psnr(pred, hr[: grid.n_hr]), abs=1e-4)
    assert "precision: fp32 (fp32)" in (out / "results.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("profile", ["gaussian", "box"])
def test_simulated_truth_lies_on_the_thin_slice_grid(profile: str) -> None:
    # a ramp: a symmetric profile averages it to its centre, so slices sit at 0, r, 2r, ...
    hr = np.arange(61, dtype=np.float32)[:, None, None] * np.ones((1, 8, 8), np.float32)
    lr, grid, truth = simulate(hr[10:51], Acquisition(2.5, 1.0, profile))
    interior = lr[2:-2, 0, 0]  # the ends of the volume truncate the profile
    np.testing.assert_allclose(interior, 10 + 2.5 * np.arange(2, 15), atol=1e-4)
    assert grid.n_hr == truth.shape[0] == 41
    np.testing.assert_allclose(linear_interpolate(lr, grid)[5:-5], truth[5:-5], atol=1e-4)


def test_markdown_report_states_tables_and_configuration(evaluated: Path) -> None:
    md = (evaluated / "results.md").read_text(encoding="utf-8")
    for heading in (
        "## Configuration",
        "## PSNR (dB)",
        "## SSIM",
        "## S3 sharpness",
        "## Wall time (s)",
        "## Gating: `tiny` gated vs ungated",
        "## GMACs",
    ):
        assert heading in md
    assert "every SA-INR row ends with the data consistency step" in md
    estimated = " tiny (estimated thickness) |" if ESTIMATED else ""
    assert (
        "| volume | profile | factor | linear | B-spline | B-spline + Wiener | tiny |"
        f"{estimated} tiny (ungated) | tiny (network only) | tiny − best interp. | min |" in md
    )
    for heading in ("## Foreground PSNR (dB)", "## Margins of each SA-INR row"):
        assert heading in md
    assert "| tiny | gaussian | ×2 | 2 |" in md  # margins over both baselines, 2 volumes
    assert "noise-to-signal ratio K = 0.01" in md and "foreground PSNR" in md
    assert "- note: TEST volumes: reported only" in md
    assert "| knee_fair_crop_1mm | gaussian | ×2.5 |" in md
    assert (
        "| **mean** | **gaussian** | **×2** |" in md and "| **mean** | **none** | **all** |" in md
    )
    assert "profiles none, gaussian" in md
    assert f"torch {torch.__version__}" in md and "device: cpu" in md
    assert f"{CROP}×{CROP} in-plane centre crop" in md and "channels=8" in md
    assert "| encoder + MLP, no LASA | 288.6 | 302.6 | 316.5 |" in md


def test_figures_are_written_per_volume_and_factor(evaluated: Path) -> None:
    for name in ("knee_qdess_crop_1p5mm", "knee_fair_crop_1mm"):
        for case in ("none_x2", "gaussian_x2", "gaussian_x2.5"):
            png = evaluated / f"figure_{name}_{case}.png"
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
        (
            ["evaluate", str(QDESS), "--factors", "2.5", "--profiles", "none", "--out", "x"],
            "integer factor",
        ),
        (["evaluate", str(QDESS), "--thickness", "0", "--out", "x"], "--thickness"),
        (["evaluate", str(QDESS), "--model", "=w.pt", "--out", "x"], "NAME=WEIGHTS"),
        (
            ["evaluate", str(QDESS), "--adapt-steps", "5", "--adapt-models", "nope", "--out", "x"],
            "no SA-INR model ['nope']",
        ),
        (
            ["evaluate", str(QDESS), "--eclare", "--eclare-patches", "0", "--out", "x"],
            "--eclare-patches",
        ),
    ],
)
def test_user_errors_exit_2_with_a_message(argv: list[str], message: str, capsys) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


# --- external tools (ECLARE) and per-case adaptation -------------------------------------------

HAS_ECLARE = importlib.util.find_spec("eclare") is not None


def test_eclare_refuses_clearly_when_the_package_is_missing(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setitem(sys.modules, "eclare", None)  # what importing reports when it is absent
    out = tmp_path / "out"
    assert main(["evaluate", str(QDESS), "--eclare", "--crop", "16", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "ECLARE package, which is not installed" in err and "compare_eclare.sh" in err
    assert not out.exists()  # refused before any case ran


def test_lr_for_external_tools_carries_the_lr_spacing(tmp_path: Path) -> None:
    hr = _normalised_crop(QDESS, 2)  # 1.5 mm slices, 0.3125 mm in-plane
    spacing = (1.4999974966049194, 0.3125, 0.3125)
    lr, grid, _ = simulate(hr, Acquisition(3.0, 1.0, "gaussian"))
    path = write_lr_nifti(lr, lr_spacing(grid, spacing), tmp_path / "lr.nii.gz")
    image = sitk.ReadImage(str(path))
    assert image.GetSpacing() == pytest.approx((0.3125, 0.3125, 3 * 1.4999974966049194), rel=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), lr)
    nib = pytest.importorskip("nibabel")  # what ECLARE reads: the last (k) axis is the coarsest
    assert nib.load(path).header.get_zooms() == pytest.approx(
        (0.3125, 0.3125, 3 * spacing[0]), rel=1e-6
    )
    assert eclare_thickness(spacing, grid, 1.0) == pytest.approx(14.4, rel=1e-5)  # 4.5 mm / 0.3125
    assert eclare_thickness(spacing, grid, 1 / 3) == pytest.approx(4.8, rel=1e-5)
    with pytest.raises(SainrError, match="coarsest"):
        write_lr_nifti(lr, (0.3, 0.3125, 0.3125), tmp_path / "flat.nii.gz")


def test_same_fov_positions_tile_the_input_field_of_view() -> None:
    # 4 input cells [i - 1/2, i + 1/2] cut into 12 cells of width 1/3: input sample i is
    # output sample 3 i + 1, the first output lies a third of an input cell before input 0
    np.testing.assert_allclose(same_fov_positions(4, 12, 3.0), -0.5 + (np.arange(12) + 0.5) / 3)
    np.testing.assert_allclose(same_fov_positions(4, 12, 3.0)[1::3], [0, 1, 2, 3], atol=1e-12)
    # non-integer ratio with a rounded output count: evenly spaced, centred on the input
    pos = same_fov_positions(22, 64, 2.906)
    np.testing.assert_allclose(np.diff(pos), 1 / 2.906)
    assert pos.mean() == pytest.approx(10.5)


@pytest.mark.parametrize(
    ("factor", "ratio"),
    [(3.0, 3.0), (4.0, 4.0), (3.0, 3 / 0.96875), (2.5, 2.5 / 0.96875), (3.0, 14.4)],
)
def test_same_fov_output_is_mapped_onto_the_thin_slice_grid(factor: float, ratio: float) -> None:
    """A known smooth volume, sampled where a same-FOV upsampler puts its slices, comes back
    on the thin grid: thin slice j (acquired position j / r) gets the volume's value there."""
    n_lr = 12
    grid = slice_grid(n_lr, factor, 1.0)
    yy, xx = np.mgrid[0:5, 0:6]

    def volume(p: np.ndarray) -> np.ndarray:  # p in acquired-slice units
        return (np.cos(0.35 * p)[:, None, None] * (1 + 0.1 * yy) + 0.05 * xx).astype(np.float32)

    n_out = round(n_lr * ratio)
    upsampled = volume(same_fov_positions(n_lr, n_out, ratio))
    mapped = same_fov_onto_grid(upsampled, ratio, grid)
    assert mapped.shape == (grid.n_hr, 5, 6)
    expected = volume(np.arange(grid.n_hr) / factor)
    # cubic B-spline: exact up to float error inside, its mirror boundary costs a little at the
    # outermost thin slices
    np.testing.assert_allclose(mapped[3:-3], expected[3:-3], atol=2e-4)
    np.testing.assert_allclose(mapped, expected, atol=1e-2)
    if ratio == factor == 3.0:  # output samples 1, 4, 7, ... are the acquired slices: exact
        np.testing.assert_allclose(mapped, upsampled[1 : 1 + grid.n_hr], atol=1e-5)


def test_adapted_models_get_the_case_lr_its_spacing_and_a_copy(
    checkpoint: Path, tmp_path: Path, monkeypatch
) -> None:
    """The hook's contract with sainr.train.adapt: the normalised LR that SA-INR sees, its spacing,
    the HR slice spacing as target, N steps, the simulation's slice thickness; the adapted
    model is the one that runs, the plain model's scores are unchanged. The real adapt runs
    (7 steps of the tiny model); the spy only records what it was given."""
    calls, adapted = [], []
    real_adapt = sainr.train.adapt.adapt

    def spy(model, volume, spacing, target_spacing, config, progress=None, cancel=None, log=None):
        calls.append((volume.copy(), spacing, target_spacing, config))
        adapted.append(
            real_adapt(model, volume, spacing, target_spacing, config, progress, cancel, log)
        )
        return adapted[-1]

    monkeypatch.setattr(sainr.train.adapt, "adapt", spy)
    out = tmp_path / "out"
    assert (
        main(
            [
                "evaluate",
                str(QDESS),
                "--factors",
                "3",
                "4",
                "--model",
                f"tiny={checkpoint}",
                "--profiles",
                "gaussian",
                "--thickness",
                "0.8",
                "--figures",
                "--no-ungated",
                "--crop",
                "32",
                "--max-slices",
                "1",
                "--device",
                "cpu",
                "--adapt-steps",
                "7",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    hr = _normalised_crop(QDESS, 2, crop=32)
    assert len(calls) == 2
    for (volume, spacing, target, config), factor in zip(calls, (3, 4), strict=True):
        acq = Acquisition(factor, 0.8, "gaussian")
        np.testing.assert_allclose(volume, acquire(hr, acq, lr_count(len(hr), factor)), atol=1e-6)
        assert spacing == pytest.approx((factor * 1.4999975, 0.3125, 0.3125), rel=1e-6)
        assert target == pytest.approx(1.4999975, rel=1e-6) and config.steps == 7
        assert config.thickness == pytest.approx(0.8)  # the simulated slice thickness
    rows = {(r["factor"], r["method"]): float(r["psnr"]) for r in _rows(out) if r["psnr"]}
    model = load_model(checkpoint)
    for i, factor in enumerate((3.0, 4.0)):
        lr, grid, truth = simulate(hr, Acquisition(factor, 0.8, "gaussian"))
        plain, _ = super_resolve(model, lr, grid, torch.device("cpu"), thickness=0.8)
        tuned, _ = super_resolve(adapted[i], lr, grid, torch.device("cpu"), thickness=0.8)
        assert np.abs(tuned - plain).max() > 1e-3  # the adaptation changed the network
        for name, thin in (("tiny", plain), ("tiny adapted (7 steps)", tuned)):
            enforce_consistency(thin, lr, grid, 0.8)
            assert rows[(f"{factor:g}", name)] == pytest.approx(psnr(thin, truth), abs=1e-3)
    assert not list(out.glob("*.png"))  # --figures without a profile: tables only
    assert not any("ungated" in r["method"] for r in _rows(out))  # --no-ungated
    md = (out / "results.md").read_text(encoding="utf-8")
    assert "steps=7, minutes=None" in md and "thickness=the case's" in md


@pytest.mark.skipif(
    not HAS_ECLARE,
    reason="ECLARE is not installed here (benchmark env only: "
    "scripts/compare_eclare.sh sets up .venv-bench)",
)
def test_eclare_end_to_end_tiny_budget(checkpoint: Path, tmp_path: Path) -> None:
    import eclare  # noqa: F401
    import torch as _torch
    from radifox.utils.resize.pytorch import resize

    # ECLARE's upsampler samples where same_fov_positions says (its own coordinates)
    _, coords = resize(_torch.zeros(1, 1, 22, 4), (1 / 2.906, 1), order=3, return_coords=True)
    index = (coords[0, :, 0, 1].double().numpy() + 1) / 2 * 21
    np.testing.assert_allclose(index, same_fov_positions(22, 64, 2.906), atol=1e-5)
    out = tmp_path / "out"
    assert (
        main(
            [
                "evaluate",
                str(FAIR),
                "--axis",
                "1",
                "--factors",
                "3",
                "--crop",
                "16",
                "--profiles",
                "gaussian",
                "--model",
                f"tiny={checkpoint}",
                "--max-slices",
                "1",
                "--device",
                "cpu",
                "--eclare",
                "--eclare-patches",
                "16",
                "--eclare-batch-size",
                "8",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    row = next(r for r in _rows(out) if r["method"] == "ECLARE")
    assert 5.0 < float(row["psnr"]) < 80.0 and float(row["seconds"]) > 0
    md = (out / "results.md").read_text(encoding="utf-8")
    assert "- ECLARE 1." in md and "16 patches in batches of 8 (2 steps" in md
    assert (
        "| volume | profile | factor | linear | B-spline | tiny | tiny (ungated) | ECLARE |" in md
    )


@pytest.mark.skipif(not ESTIMATED, reason="sainr.thickness is not in this checkout")
def test_estimated_rows_are_told_the_image_estimate_not_the_truth(evaluated: Path) -> None:
    """The estimate reads the whole volume's LR, as a user's run would, not the crop."""
    from sainr.thickness import estimate_relative_thickness

    whole = sitk.GetArrayFromImage(sitk.ReadImage(str(QDESS))).astype(np.float32)  # k first
    acq = Acquisition(2.5, 1.0, "gaussian")
    lr, grid, _ = simulate(whole, acq)
    assert lr.shape[1:] != (CROP, CROP)
    s = lr_spacing(grid, (1.5, 0.3125, 0.3125))
    expected = estimate_relative_thickness(lr, (s[2], s[1], s[0]), 2)
    on_crop = estimate_relative_thickness(simulate(_normalised_crop(QDESS, 2), acq)[0], s[::-1], 2)
    assert abs(on_crop / expected - 1) > 1e-2  # the crop alone reads another thickness
    rows = {
        r["method"]: r
        for r in _rows(evaluated)
        if r["volume"] == "knee_qdess_crop_1p5mm"
        and r["profile"] == "gaussian"
        and float(r["factor"]) == 2.5
    }
    assert float(rows["tiny (estimated thickness)"]["thickness"]) == pytest.approx(
        expected, rel=1e-4
    )
    assert float(rows["tiny"]["thickness"]) == pytest.approx(1.0)
    md = (evaluated / "results.md").read_text(encoding="utf-8")
    assert "## Slice thickness: true vs estimated" in md


def test_a_crop_keeps_the_whole_volume_for_the_estimate_unless_asked_not_to() -> None:
    """--crop only saves time: the LR the estimate reads spans the whole volume, with the
    crop's slices; --estimate-on-crop (and no crop) read the evaluated LR itself."""
    acq = Acquisition(2.0, 1.0, "box")
    cropped = load_case(QDESS, 2, CROP)
    lr, _, _ = simulate(cropped.hr, acq)
    seen = cropped.seen(acq, lr)
    full = sitk.GetArrayFromImage(sitk.ReadImage(str(QDESS))).astype(np.float32)
    assert seen.shape == (lr.shape[0], *full.shape[1:])
    np.testing.assert_allclose(seen, simulate(full, acq)[0], rtol=1e-6)
    for case in (load_case(QDESS, 2, CROP, keep_whole=False), load_case(QDESS, 2, None)):
        lr, _, _ = simulate(case.hr, acq)
        assert case.seen(acq, lr) is lr
