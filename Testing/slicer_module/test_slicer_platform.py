"""What the Slicer module runs works on every platform Slicer runs on.

Slicer on Windows has no ``resource`` module (Unix-only), and no Slicer ships tqdm, matplotlib or
psutil. Here those modules are made unimportable (a ``sitecustomize`` that refuses them, put on
PYTHONPATH) and the panel's path is run: the ``sainr reduce`` subprocess as the Logic starts it,
and the Logic itself (plan, run, read back) in a process of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import SimpleITK as sitk

import slicer_scene

#: Modules Slicer's Python may lack: Unix-only on Windows, or never bundled.
MISSING = ("resource", "tqdm", "matplotlib", "psutil")

BLOCKER = f"""
import sys

MISSING = {MISSING!r}
already = [name for name in MISSING if name in sys.modules]
if already:
    raise SystemExit(f"imported before the blocker: {{already}}")

import importlib.machinery

_find_spec = importlib.machinery.PathFinder.find_spec


def find_spec(cls, name, path=None, target=None):
    # the path finder does not see these modules, as in a Python that lacks them:
    # import fails, importlib.util.find_spec returns None
    if name.partition(".")[0] in MISSING:
        return None
    return _find_spec(name, path, target)


importlib.machinery.PathFinder.find_spec = classmethod(find_spec)
"""


@pytest.fixture
def without_optional_modules(tmp_path) -> dict[str, str]:
    """Environment whose Python cannot import MISSING (checked before it is used)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(site), str(slicer_scene.MODULE_DIR), env.get("PYTHONPATH", "")]
    )
    for name in MISSING:
        probe = subprocess.run(
            [sys.executable, "-c", f"import {name}"], env=env, capture_output=True, text=True
        )
        assert probe.returncode != 0 and "No module named" in probe.stderr, name
    return env


@pytest.fixture
def thick_file(tmp_path) -> Path:
    """Small real knee crop: 32 x 32 x 8 slices at 0.3125 x 0.3125 x 3 mm."""
    image = sitk.ReadImage(
        str(slicer_scene.REPO / "Testing" / "Data" / "knee_qdess_crop_1p5mm.nii.gz")
    )
    path = tmp_path / "knee_3mm.nrrd"
    sitk.WriteImage(image[16:48, 16:48, ::2][:, :, :8], str(path))
    return path


def test_cli_reduce_as_the_panel_runs_it_needs_none_of_them(
    without_optional_modules, thick_file, tmp_path
):
    out, mask = tmp_path / "out.nrrd", tmp_path / "mask.nrrd"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sainr",
            "reduce",
            str(thick_file),
            str(out),
            "--spacing",
            "1.5",
            "--mask",
            str(mask),
            "--device",
            "cpu",
            "--progress",
            "lines",
        ],
        env=without_optional_modules,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "PROGRESS" in result.stdout
    assert sitk.ReadImage(str(out)).GetSize() == (32, 32, 15)
    assert sitk.ReadImage(str(mask)).GetSize() == (32, 32, 15)


def test_the_logic_plans_runs_and_reads_back_without_them(without_optional_modules):
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(slicer_scene.REPO / "Testing")!r})
        import numpy as np
        import slicer_scene
        scene = slicer_scene.newScene().scene
        array = slicer_scene.readArray(slicer_scene.REPO / "Testing" / "Data" / "knee_qdess_crop_1p5mm.nii.gz")
        matrix = slicer_scene.ijkToRAS(np.eye(3), (0.5, 0.5, 3.0), (0, 0, 0))
        volume = slicer_scene.addVolume(scene, array[::2][:6, 24:40, 24:40], matrix, "v")
        output = slicer_scene.SAINRSlicer.SAINRSlicerLogic().process(volume, 1.5, device="cpu")
        print(output.GetName(), output.GetImageData().GetDimensions())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=without_optional_modules,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "v_SAINR_1.5mm (16, 16, 11)"


def test_cli_parses_a_command_without_importing_the_others():
    """``sainr reduce`` must not import the benchmark (Unix-only ``resource``), the evaluation
    or the slice VAE: on Windows one of them failing to import broke every run."""
    code = (
        "import sys; from sainr.cli import build_parser; "
        "build_parser(['reduce', 'a.nrrd', 'b.nrrd', '--spacing', '1']); "
        "print(sorted(m for m in ('sainr.evaluation.bench', 'sainr.evaluation.run', 'sainr.train.selfsup', "
        "'resource') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_cli_with_its_default_progress_runs_without_tqdm(
    without_optional_modules, thick_file, tmp_path
):
    """``PythonSlicer -m sainr reduce ...`` as a user types it (progress defaults to a bar):
    Slicer has no tqdm, so progress falls back to lines instead of an internal error."""
    out = tmp_path / "out.nrrd"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sainr",
            "reduce",
            str(thick_file),
            str(out),
            "--spacing",
            "1.5",
            "--device",
            "cpu",
        ],
        env=without_optional_modules,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "PROGRESS" in result.stdout
    assert sitk.ReadImage(str(out)).GetSize() == (32, 32, 15)
