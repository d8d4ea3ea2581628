"""Per-volume adaptation on the real thick knee crop with a tiny model: budgets, cancel,
determinism, weights round trip, the loss it lowers, and the command line."""

from __future__ import annotations

import time

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from conftest import TINY
from sainr.api import slice_first
from sainr.cli import main
from sainr.errors import Cancelled, InputImageError
from sainr.geometry import slice_grid
from sainr.intensity import robust_scale
from sainr.model import SAINR
from sainr.protocol import ADAPT_TAG
from sainr.runtime.device import cpu_features
from sainr.runtime.inference import Plan, super_resolve
from sainr.runtime.weights import load_model, save_checkpoint
from sainr.train.adapt import (
    AdaptConfig,
    adapt,
    adaptation_data,
    pair_volumes,
    patch_slices,
    resample_axis0,
)
from sainr.train.data import collate

TARGET = 1.0
#: Whether this CPU trains bf16 at all (sainr.runtime.precision.training_precision).
BF16_UNITS = bool(cpu_features()["amx"] or cpu_features()["avx512_bf16"])


@pytest.fixture(scope="module")
def thick(knee_thick):
    """(normalised volume (S, H, W), spacing (c_S, c_H, c_W)) of the 3 mm knee crop."""
    volume, spacing = slice_first(knee_thick, 2)
    return robust_scale(volume).normalize(volume), spacing


def _steps(model: SAINR, thick, config: AdaptConfig, **kwargs) -> tuple[SAINR, list, int]:
    """Adapt and return (model, progress calls, optimizer steps counted by torch itself)."""
    calls, steps = [], [0]
    hook = register_optimizer_step_post_hook(lambda *_: steps.__setitem__(0, steps[0] + 1))
    try:
        adapted = adapt(
            model, *thick, TARGET, config, progress=lambda d, n: calls.append((d, n)), **kwargs
        )
    finally:
        hook.remove()
    return adapted, calls, steps[0]


def _state(model: SAINR) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_pairs_use_each_in_plane_axis_resampled_to_the_target_spacing(thick):
    volume, spacing = thick
    pairs = pair_volumes(volume, spacing, TARGET)
    # 64 px at 0.3125 mm = 20 mm -> 20 slices at 1 mm; then the other in-plane axis, the 20 slices
    assert [(v.name, v.array.shape, v.axes) for v in pairs] == [
        ("H", (20, 64, 20), (2,)),
        ("W", (20, 64, 20), (2,)),
    ]
    data = adaptation_data(volume, spacing, TARGET, AdaptConfig(steps=1))
    assert data.spec.factors == (pytest.approx(3.0, abs=1e-4),)
    assert data.spec.size == 20  # only 20 thick slices: patches fit the shortest side
    lr, _, _ = collate([data[0], data[1]])
    assert lr.shape == (2, 1, 7, 20, 20)  # 20 HR slices at factor 3 -> 7 LR slices


def test_resampling_along_an_axis_keeps_a_ramp_and_its_positions():
    ramp = np.arange(64, dtype=np.float32)[:, None, None] * np.ones((1, 3, 3), np.float32)
    coarse = resample_axis0(ramp * 0.25, 0.25, 1.0)  # value = position in mm
    assert coarse.shape == (16, 3, 3)
    np.testing.assert_allclose(coarse[2:-2, 0, 0], np.arange(2, 14), atol=1e-4)
    assert resample_axis0(ramp, 1.0, 0.5) is ramp  # finer target: no resampling


def test_too_small_in_plane_refuses_with_a_reason():
    with pytest.raises(InputImageError, match="too small in-plane"):
        pair_volumes(np.random.rand(4, 3, 3).astype(np.float32), (3.0, 1.0, 1.0), 1.0)


@pytest.mark.parametrize("thickness, blurred", [(1 / 3, False), (1.0, True)])
def test_slice_thickness_decides_whether_the_training_lr_is_blurred(thick, thickness, blurred):
    """Thin slices with gaps (thickness = c_T): the acquired LR slices are the HR slices
    themselves; contiguous thick slices (the default): they are the HR blurred across slices."""
    data = adaptation_data(*thick, TARGET, AdaptConfig(steps=4, thickness=thickness))
    for item in (data[i] for i in range(4)):
        on_slice = item["t"] == 0
        lr = item["lr"][0, item["s"][on_slice], item["y"][on_slice], item["x"][on_slice]]
        gap = (lr - item["target"][on_slice]).abs().max().item()
        assert (gap > 1e-3) == blurred


def test_step_budget_is_exact_and_progress_reaches_n_of_n(tiny_model, thick):
    adapted, calls, steps = _steps(tiny_model, thick, AdaptConfig(steps=4, size=16, queries=512))
    assert steps == 4
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert not adapted.training


def test_time_budget_stops_before_the_step_budget(tiny_model, thick):
    config = AdaptConfig(steps=100_000, minutes=1.5 / 60, size=16, queries=512)
    started = time.monotonic()
    _, calls, steps = _steps(tiny_model, thick, config)
    elapsed = time.monotonic() - started
    assert 1.5 <= elapsed < 10
    assert 1 <= steps == calls[-1][0] < 100_000 and calls[-1][1] == 100_000


def test_cancel_raises_and_leaves_the_input_model_unchanged(tiny_model, thick):
    before = _state(tiny_model)
    calls = []
    with pytest.raises(Cancelled):
        adapt(
            tiny_model,
            *thick,
            TARGET,
            AdaptConfig(steps=50, size=16, queries=512),
            progress=lambda d, n: calls.append(d),
            cancel=lambda: len(calls) >= 2,
        )
    assert calls == [1, 2]
    assert _same(before, _state(tiny_model)) and not tiny_model.training


def test_same_seed_same_weights_other_seed_other_weights(tiny_model, thick):
    config = AdaptConfig(steps=3, size=16, queries=512, lr=1e-3)
    a = _state(adapt(tiny_model, *thick, TARGET, config))
    b = _state(adapt(tiny_model, *thick, TARGET, config))
    c = _state(adapt(tiny_model, *thick, TARGET, AdaptConfig(**{**config.__dict__, "seed": 1})))
    assert _same(a, b) and not _same(a, c)
    assert not _same(a, _state(tiny_model))


def test_adapted_weights_round_trip_with_identical_outputs(tiny_model, thick, tmp_path):
    adapted = adapt(tiny_model, *thick, TARGET, AdaptConfig(steps=2, size=16, queries=512))
    save_checkpoint(adapted, tmp_path / "adapted.pt")
    loaded = load_model(tmp_path / "adapted.pt")
    volume, spacing = thick
    grid = slice_grid(volume.shape[0], spacing[0], TARGET)
    plan = Plan(64, 0, 1 << 14)
    cpu = torch.device("cpu")
    ours = super_resolve(adapted, volume, grid, cpu, precision="fp32", tile_plan=plan)
    theirs = super_resolve(loaded, volume, grid, cpu, precision="fp32", tile_plan=plan)
    for x, y in zip(ours, theirs):
        np.testing.assert_array_equal(x, y)


def test_a_few_steps_lower_the_adaptation_loss_on_the_real_thick_crop(tiny_model, thick):
    """Held-out patches (another seed) of the volume's own pairs: L1 falls after adapting."""
    volume, spacing = thick
    config = AdaptConfig(steps=30, size=16, queries=1024, lr=2e-3)
    held_out = adaptation_data(volume, spacing, TARGET, AdaptConfig(steps=4, size=16, seed=7))
    lr, q, tgt = collate([held_out[i] for i in range(8)])

    def l1(model: SAINR) -> float:
        with torch.no_grad():
            return float((model.eval()(lr, q).value - tgt["target"]).abs().mean())

    before = l1(tiny_model)
    assert l1(adapt(tiny_model, volume, spacing, TARGET, config)) < 0.8 * before


@pytest.mark.parametrize(("side", "slices", "fp32"), [(16, 2, True), (24, 3, False)])
def test_bf16_adaptation_of_two_slice_patches_runs_fp32_and_stays_finite(
    tiny_model, thick, side, slices, fp32
):
    """A volume only a few slices deep makes two-slice training patches; bf16 weight
    gradients of those come out NaN on AVX-512 BF16 CPUs without AMX, so they train in fp32
    (said in the log) and the adapted weights stay finite. Deeper patches keep bf16."""
    volume, spacing = thick
    small = np.ascontiguousarray(volume[:, :side, :side])
    config = AdaptConfig(steps=3, size=16, queries=256, precision="bf16")
    assert patch_slices(adaptation_data(small, spacing, TARGET, config)) == slices
    lines: list[str] = []
    tuned = adapt(tiny_model, small, spacing, TARGET, config, log=lines.append)
    fp32 = fp32 or not BF16_UNITS  # without bf16 units every patch adapts in fp32
    assert any("adapting in fp32, not bf16" in line for line in lines) == fp32
    assert any("fp32)" in line for line in lines) == fp32  # the start line names the precision
    for name, value in tuned.state_dict().items():
        assert torch.isfinite(value).all(), name
    assert not _same(_state(tuned), _state(tiny_model))


# --- command line ----------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path, knee_thick, tiny_model):
    """The 3 mm knee crop as NRRD and a tiny base checkpoint."""
    thick_file, base = tmp_path / "knee_3mm.nrrd", tmp_path / "tiny.pt"
    sitk.WriteImage(knee_thick, str(thick_file))
    save_checkpoint(tiny_model, base)
    return thick_file, base


def _lines(text: str, tag: str) -> list[tuple[int, int]]:
    return [tuple(map(int, ln.split()[1:])) for ln in text.splitlines() if ln.startswith(tag + " ")]


def test_cli_adapt_writes_weights_that_reduce_loads(tmp_path, files, capsys):
    thick_file, base = files
    weights, out = tmp_path / "adapted.pt", tmp_path / "adapted_1mm.nii.gz"
    code = main(
        [
            "adapt",
            str(thick_file),
            "--spacing",
            "1",
            "--out",
            str(weights),
            "--steps",
            "2",
            "--weights",
            str(base),
            "--reduce",
            str(out),
            "--progress",
            "lines",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert _lines(printed, "PROGRESS")[:2] == [(1, 2), (2, 2)]
    meta = torch.load(weights, weights_only=True)["meta"]["adapted"]
    assert (meta["steps_done"], meta["base"], meta["input"]) == (2, str(base), thick_file.name)
    again = tmp_path / "again.nii.gz"
    assert (
        main(
            [
                "reduce",
                str(thick_file),
                str(again),
                "--spacing",
                "1",
                "--weights",
                str(weights),
                "--progress",
                "none",
            ]
        )
        == 0
    )
    assert sitk.ReadImage(str(out)).GetSize() == (64, 64, 58)
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(sitk.ReadImage(str(out))),
        sitk.GetArrayFromImage(sitk.ReadImage(str(again))),
    )
    assert not list(tmp_path.glob(".sainr-*"))


def test_cli_reduce_adapts_first_with_tagged_progress_and_saves(tmp_path, files, capsys):
    thick_file, base = files
    out, weights = tmp_path / "out.nii.gz", tmp_path / "adapted.pt"
    code = main(
        [
            "reduce",
            str(thick_file),
            str(out),
            "--spacing",
            "1",
            "--weights",
            str(base),
            "--adapt-steps",
            "3",
            "--save-adapted",
            str(weights),
            "--progress",
            "lines",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert _lines(printed, ADAPT_TAG) == [(1, 3), (2, 3), (3, 3)]
    assert printed.index(f"{ADAPT_TAG} 3 3") < printed.index("PROGRESS ")
    assert _lines(printed, "PROGRESS")[-1] == (64 * 64 * 58,) * 2
    assert load_model(weights).config == TINY


@pytest.mark.parametrize(
    "make, args, out, message",
    [
        ("flat", ["--spacing", "1"], "a.pt", "2D image"),
        ("missing", ["--spacing", "1"], "a.pt", "input not found"),
        ("thick", ["--spacing", "4"], "a.pt", "not smaller than the current slice spacing"),
        ("thick", ["--spacing", "1", "--steps", "0"], "a.pt", "at least 1"),
        ("thick", ["--spacing", "1"], "a.txt", "need a .pt file name"),
        ("thick", ["--spacing", "1", "--weights", "missing.pt"], "a.pt", "weights file not found"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(
    tmp_path, files, knee_thick, capsys, make, args, out, message
):
    thick_file, _ = files
    src = {"thick": thick_file, "missing": tmp_path / "nope.nii.gz", "flat": tmp_path / "flat.nrrd"}
    sitk.WriteImage(knee_thick[:, :, 0], str(src["flat"]))
    code = main(
        ["adapt", str(src[make]), *args, "--out", str(tmp_path / out), "--progress", "none"]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sainr: error:") and message in err[0], err
    assert not (tmp_path / out).exists() and not list(tmp_path.glob(".sainr-*"))


def test_cli_reduce_refuses_save_adapted_without_adapt_steps(tmp_path, files, capsys):
    thick_file, base = files
    out = tmp_path / "out.nii.gz"
    assert (
        main(
            [
                "reduce",
                str(thick_file),
                str(out),
                "--spacing",
                "1",
                "--weights",
                str(base),
                "--save-adapted",
                str(tmp_path / "w.pt"),
                "--progress",
                "none",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--save-adapted needs --adapt-steps" in err[0]
    assert not out.exists()


def test_the_shipped_model_adapts_told_the_thickness(thick):
    """The shipped default is told the acquisition: adaptation feeds it the pairs' factor and
    slice thickness, changes its weights and leaves the loaded model as it was."""
    shipped = load_model()
    assert shipped.config.conditioning
    before = _state(shipped)
    adapted, calls, steps = _steps(shipped, thick, AdaptConfig(steps=2, size=16, queries=256))
    assert steps == 2 and calls[-1] == (2, 2)
    assert _same(_state(shipped), before) and not _same(_state(adapted), before)
