"""One plan per run: ``sainr reduce`` plans each input once, scans its voxels once, and the
API and adaptation run that plan as made; the written result has the plan's grid."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import sainr.cli.reduce  # noqa: F401 - every module of a reduce run is loaded before wrapping
from conftest import KNEE_QDESS
from sainr import ReduceOptions, Target, reduce_spacing
from sainr.cli import main
from sainr.planning import ReductionPlan, plan_grid, plan_reduction
from sainr.runtime.weights import save_checkpoint

#: The functions that plan a run and the ones that scan its voxels for NaN/Inf.
PLANNERS = ("plan_reduction", "plan_grid")
SCANNERS = ("check_values", "scan_values")


def _wrap_everywhere(monkeypatch, name: str, wrapper_of) -> None:
    """Replace every binding of the core's function ``name`` (in the module that defines it
    and in every module that imported it) by ``wrapper_of(original)``."""
    modules = [m for n, m in list(sys.modules.items()) if n.startswith("sainr") and m]
    originals = {getattr(m, name) for m in modules if callable(getattr(m, name, None))}
    for original in originals:
        wrapped = wrapper_of(original)
        for module in modules:
            if getattr(module, name, None) is original:
                monkeypatch.setattr(module, name, wrapped)


def _count_calls(monkeypatch, names: tuple[str, ...]) -> tuple[Counter, list]:
    """Count the calls of ``names`` (and keep what they returned) from now on."""
    calls, returned = Counter(), []

    def wrapper_of(original):
        def counted(*args, **kwargs):
            calls[original.__name__] += 1
            value = original(*args, **kwargs)
            returned.append(value)
            return value

        return counted

    for name in names:
        _wrap_everywhere(monkeypatch, name, wrapper_of)
    return calls, returned


@pytest.fixture
def small_knee(tmp_path: Path) -> Path:
    """A real knee crop, 40 x 40 x 20 at 0.3125 x 0.3125 x 3 mm (every second 1.5 mm slice)."""
    path = tmp_path / "knee_3mm.nrrd"
    sitk.WriteImage(sitk.ReadImage(str(KNEE_QDESS))[12:52, 12:52, ::2], str(path))
    return path


@pytest.fixture
def tiny_weights(tmp_path: Path, tiny_model) -> Path:
    path = tmp_path / "tiny.pt"
    save_checkpoint(tiny_model, path)
    return path


def _reduce(src: Path, out: Path, weights: Path, *options: str) -> int:
    argv = ["reduce", str(src), str(out), "--factor", "2", "--weights", str(weights)]
    return main([*argv, "--device", "cpu", "--progress", "none", *options])


@pytest.mark.parametrize("options", [(), ("--adapt-steps", "1")], ids=["reduce", "adapt first"])
def test_a_reduce_run_plans_once_and_scans_the_voxels_once(
    monkeypatch, tmp_path, small_knee, tiny_weights, options
):
    plans, _ = _count_calls(monkeypatch, PLANNERS)
    scans, _ = _count_calls(monkeypatch, SCANNERS)
    assert _reduce(small_knee, tmp_path / "out.nrrd", tiny_weights, *options) == 0
    assert plans == Counter(plan_reduction=1, plan_grid=1)  # the grid, within the one plan
    assert sum(scans.values()) == 1


def test_a_batch_plans_each_input_once(monkeypatch, tmp_path, small_knee, tiny_weights):
    """Every input is planned before the first result is written, and run with that plan."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    for name in ("a.nrrd", "b.nrrd"):
        (folder / name).write_bytes(small_knee.read_bytes())
    plans, _ = _count_calls(monkeypatch, PLANNERS)
    scans, _ = _count_calls(monkeypatch, SCANNERS)
    assert _reduce(folder, tmp_path / "outputs", tiny_weights) == 0
    assert plans == Counter(plan_reduction=2, plan_grid=2)
    assert sum(scans.values()) == 2


def test_nan_voxels_replaced_by_zero_are_scanned_once(monkeypatch, tmp_path, tiny_weights):
    image = sitk.Cast(sitk.ReadImage(str(KNEE_QDESS))[12:52, 12:52, ::2], sitk.sitkFloat32)
    image[3, 4, 5] = float("nan")
    src = tmp_path / "with_nan.nrrd"
    sitk.WriteImage(image, str(src))
    scans, returned = _count_calls(monkeypatch, ("scan_values",))
    assert _reduce(src, tmp_path / "out.nrrd", tiny_weights, "--nan-to-zero") == 0
    assert scans["scan_values"] == 1 and returned == [1]
    out = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out.nrrd")))
    assert np.isfinite(out).all()


def test_the_written_result_has_the_plans_grid(
    monkeypatch, tmp_path, small_knee, tiny_weights, capsys
):
    _, returned = _count_calls(monkeypatch, ("plan_reduction",))
    out, mask = tmp_path / "out.nrrd", tmp_path / "mask.nrrd"
    assert _reduce(small_knee, out, tiny_weights, "--mask", str(mask)) == 0
    (plan,) = returned
    assert isinstance(plan, ReductionPlan) and plan.axis == 2 and plan.factor == 2
    for written in (sitk.ReadImage(str(out)), sitk.ReadImage(str(mask))):
        assert written.GetSize() == plan.output.size == (40, 40, 39)
        np.testing.assert_allclose(written.GetSpacing(), plan.output.spacing, rtol=1e-12)
        np.testing.assert_allclose(written.GetOrigin(), plan.output.origin, atol=1e-9)
        np.testing.assert_allclose(written.GetDirection(), plan.output.direction, atol=1e-12)
    summary = capsys.readouterr().err
    assert f"{plan.input.size[2]} slices at {plan.spacing_in:.4g} mm" in summary
    assert f"-> {plan.output.size[2]} at {plan.spacing_out:.4g} mm" in summary


def test_the_api_runs_a_given_plan_without_planning_again(monkeypatch, knee_thick, tiny_model):
    plan = plan_reduction(knee_thick, Target(factor=3), ReduceOptions(slice_thickness_mm=2.0))

    def refused(original):
        def again(*args, **kwargs):
            raise AssertionError(f"{original.__name__} called with a plan given")

        return again

    for name in PLANNERS + SCANNERS + ("resolve_slice_thickness",):
        _wrap_everywhere(monkeypatch, name, refused)
    result = reduce_spacing(knee_thick, plan=plan, model=tiny_model)
    assert result.image.GetSize() == plan.output.size
    assert result.image.GetSpacing() == plan.output.spacing
    assert result.info["slice_thickness"] == plan.thickness.mm == pytest.approx(2.0)
    assert result.info["slice_thickness_source"] == "given"


def test_the_api_plans_as_the_cli_does(knee_thick, tiny_model):
    """Without a plan the API makes the same one; a plan of the grid alone, of another image
    or made without the model's trained thickness range is refused rather than run."""
    options = ReduceOptions(slice_thickness_mm=1.5)
    plan = plan_reduction(knee_thick, Target(factor=2), options)
    made = reduce_spacing(knee_thick, Target(factor=2), options, model=tiny_model)
    given = reduce_spacing(knee_thick, plan=plan, model=tiny_model)
    same = sitk.GetArrayViewFromImage(made.image) == sitk.GetArrayViewFromImage(given.image)
    assert same.all()
    with pytest.raises(ValueError, match="grid alone"):
        reduce_spacing(knee_thick, plan=plan_grid(knee_thick, Target(factor=2)), model=tiny_model)
    with pytest.raises(ValueError, match="another grid"):
        reduce_spacing(knee_thick[:, :, 1:], plan=plan, model=tiny_model)
    with pytest.raises(TypeError):
        reduce_spacing(knee_thick, 1.0, plan=plan, model=tiny_model)
    tiny_model.trained_thickness = (0.2, 1.2)  # a model told the thickness, trained for these
    thin = plan_reduction(knee_thick, Target(factor=2), ReduceOptions(slice_thickness_mm=0.3))
    with pytest.raises(ValueError, match="outside the 0.2-1.2x this model was trained for"):
        reduce_spacing(knee_thick, plan=thin, model=tiny_model)


def test_a_plan_of_the_grid_reads_no_voxels(knee_thick):
    """The same grid as the full plan, without thickness or voxel scan (the Slicer Logic's)."""
    grid = plan_grid(knee_thick, 1.0)
    full = plan_reduction(knee_thick, 1.0)
    assert grid.thickness is None and grid.nonfinite is None
    assert (full.nonfinite, full.thickness.source) == (0, "estimated from the image")
    assert (grid.axis, grid.input, grid.output) == (full.axis, full.input, full.output)
    assert grid.result_bytes == np.prod(grid.output.size) * (2 + 13)
