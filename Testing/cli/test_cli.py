"""The ``sainr`` command line on real files: round trip, batch mode, clear failures."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from sainr.cli import main


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def thick_file(tmp_path, knee_thick) -> Path:
    path = tmp_path / "knee_3mm.nrrd"
    sitk.WriteImage(knee_thick, str(path))
    return path


def test_reduce_round_trip_keeps_input_and_geometry(tmp_path, thick_file, knee_thick, capsys):
    before = _sha(thick_file)
    out, mask = tmp_path / "knee_1mm.nii.gz", tmp_path / "mask.nrrd"
    code = main(
        [
            "reduce",
            str(thick_file),
            str(out),
            "--spacing",
            "1.0",
            "--mask",
            str(mask),
            "--progress",
            "lines",
        ]
    )
    assert code == 0
    assert _sha(thick_file) == before
    result = sitk.ReadImage(str(out))
    assert result.GetSize() == (64, 64, 58)
    np.testing.assert_allclose(result.GetSpacing(), (0.3125, 0.3125, 1.0), atol=1e-5)
    np.testing.assert_allclose(result.GetOrigin(), knee_thick.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(result.GetDirection(), knee_thick.GetDirection(), atol=1e-6)
    gate = sitk.GetArrayFromImage(sitk.ReadImage(str(mask)))
    assert gate.dtype == np.uint8 and set(np.unique(gate)) <= {0, 1}
    lines = capsys.readouterr().out.splitlines()
    progress = [tuple(map(int, ln.split()[1:])) for ln in lines if ln.startswith("PROGRESS")]
    assert progress and progress[-1][0] == progress[-1][1] == 64 * 64 * 58
    assert not list(tmp_path.glob(".sainr-*"))  # no temp files left behind


@pytest.mark.parametrize(
    "args, message",
    [
        (["--spacing", "3.5"], "not smaller than the current slice spacing"),
        (["--factor", "0.5"], "factor must be a finite number > 1"),
        (["--spacing", "0.1"], "limit 20x"),
        (["--spacing", "1", "--weights", "missing.pt"], "weights file not found"),
        (["--spacing", "1", "--device", "cuda"], "CUDA was requested"),
    ],
)
def test_user_errors_exit_2_with_one_line_and_write_nothing(
    tmp_path, thick_file, capsys, args, message
):
    import torch

    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    out = tmp_path / "out.nii.gz"
    assert main(["reduce", str(thick_file), str(out), *args, "--progress", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sainr: error:") and message in err[0]
    assert not out.exists() and not list(tmp_path.glob(".sainr-*"))


def test_missing_input_and_bad_output_folder(tmp_path, thick_file, capsys):
    assert (
        main(
            ["reduce", str(tmp_path / "nope.nii.gz"), str(tmp_path / "o.nii.gz"), "--spacing", "1"]
        )
        == 2
    )
    assert "input not found" in capsys.readouterr().err
    bad = tmp_path / "no" / "such" / "dir" / "o.nii.gz"
    assert main(["reduce", str(thick_file), str(bad), "--spacing", "1"]) == 2
    assert "output folder does not exist" in capsys.readouterr().err


def test_batch_mode_processes_every_volume_in_a_folder(tmp_path, knee_thick, monkeypatch):
    """Every volume is reduced and recorded; the weights are read (and hashed) once for the
    whole batch, not once per volume or once more to plan."""
    import sainr.runtime.weights

    reads = []
    read = sainr.runtime.weights.read_checkpoint
    monkeypatch.setattr(
        sainr.runtime.weights, "read_checkpoint", lambda path: reads.append(path.name) or read(path)
    )
    src = tmp_path / "in"
    src.mkdir()
    sitk.WriteImage(knee_thick, str(src / "a.nii.gz"))
    sitk.WriteImage(knee_thick[:32, :, :], str(src / "b.nrrd"))
    dst = tmp_path / "out"
    assert main(["reduce", str(src), str(dst), "--factor", "2", "--progress", "none"]) == 0
    assert sorted(p.name for p in dst.iterdir()) == [
        "a.nii.gz",
        "a.nii.gz.sainr.json",  # each result's record (how it was made, for reruns)
        "b.nrrd",
        "b.nrrd.sainr.json",
    ]
    assert sitk.ReadImage(str(dst / "b.nrrd")).GetSize() == (32, 64, 39)
    assert reads == ["sainr_default.pt"]


def test_module_entry_point_exit_code_without_traceback(tmp_path, thick_file):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sainr",
            "reduce",
            str(thick_file),
            str(tmp_path / "o.nrrd"),
            "--spacing",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("sainr: error:")


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_preview_width_is_the_physical_width_of_the_cut_it_shows(slice_axis):
    """Non-square in-plane grid with different spacings: the picture's mm scale must follow
    the in-plane axis the reformatted cut actually displays."""
    from sainr.evaluation.preview import _cut, cut_extent

    size, spacing = [30, 20, 10], [0.5, 0.8, 1.1]
    size[slice_axis], spacing[slice_axis] = 7, 3.0
    image = sitk.Image(size, sitk.sitkFloat32)
    image.SetSpacing(spacing)
    columns = _cut(sitk.GetArrayFromImage(image), slice_axis).shape[1]
    shown = [a for a in range(3) if a != slice_axis and size[a] == columns]
    assert len(shown) == 1
    assert cut_extent(image, slice_axis)[1] == pytest.approx(columns * spacing[shown[0]])
    assert cut_extent(image, slice_axis)[2] == pytest.approx(7 * 3.0)
