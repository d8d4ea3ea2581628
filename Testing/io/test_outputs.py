"""Outputs are self-contained and every option is checked before any work (issue 13).

Every output format opens from its final name, also after being moved (a .mhd/.nhdr names its
data file by its final name, next to it); an overwrite leaves no orphan; temp files a killed run
left are ignored as inputs and removed; batch mode checks every output first, processes DICOM
series subfolders and says the truth when interrupted; every refused option leaves the folder
byte-for-byte as it was (``assert_cli_refuses`` hashes it before and after).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from cli_runs import (
    _array,
    _image,
    _tiny_checkpoint,
    _volume,
    assert_cli_refuses,
    run_cli,
)
from dicom_write import write_series

import sainr.cli.reduce
from conftest import KNEE_QDESS
from sainr.io.files import STALE_DEAD_S
from sainr.io.outputs import write_volume, write_volumes
from sainr.io.read import VOLUME_SUFFIXES

FACTOR2 = ["--factor", "2", "--progress", "none"]
DATA_FILE = {".mhd": "out.zraw", ".nhdr": "out.raw.gz"}


@pytest.fixture
def weights(tmp_path) -> list[str]:
    return ["--weights", str(_tiny_checkpoint(tmp_path / "tiny.pt"))]


@pytest.mark.parametrize("suffix", VOLUME_SUFFIXES)
def test_every_output_opens_from_its_final_name_after_being_moved(tmp_path, suffix, weights, capfd):
    src = _volume(tmp_path)
    out, mask = tmp_path / f"out{suffix}", tmp_path / f"mask{suffix}"
    code, err = run_cli(
        ["reduce", str(src), str(out), "--mask", str(mask), *FACTOR2, *weights], capfd
    )
    assert code == 0, err
    records = {f"{out.name}.sainr.json", f"{mask.name}.sainr.json"}
    expected = {"in.nrrd", "tiny.pt", out.name, mask.name} | records
    if suffix in DATA_FILE:  # the data files under their final names, next to the headers
        expected |= {DATA_FILE[suffix], DATA_FILE[suffix].replace("out", "mask")}
        assert f"{DATA_FILE[suffix]}\n" in out.read_text(errors="replace")
    assert {p.name for p in tmp_path.iterdir()} == expected  # nothing hidden, no temp folder
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in expected - {"in.nrrd", "tiny.pt"} - records:
        (tmp_path / name).rename(moved / name)
    image = sitk.ReadImage(str(moved / out.name))
    assert image.GetSize() == (12, 12, 7)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), written)
    assert sitk.ReadImage(str(moved / mask.name)).GetSize() == (12, 12, 7)


@pytest.mark.parametrize("suffix", [".mhd", ".nhdr"])
def test_overwriting_a_header_and_data_output_leaves_no_orphan(tmp_path, suffix):
    image = _image(_array())
    out = tmp_path / f"out{suffix}"
    listings = []
    for compress in (True, False, True):
        write_volume(image, out, compress)
        listings.append(sorted(p.name for p in tmp_path.iterdir()))
        np.testing.assert_array_equal(
            sitk.GetArrayFromImage(sitk.ReadImage(str(out))), sitk.GetArrayFromImage(image)
        )
    # the new data file never takes the name the old header still names: the plain name
    # when it is free, else a new one; the old data file goes once the new header is in place
    assert listings[0] == sorted([out.name, DATA_FILE[suffix]])
    assert listings[1] == sorted([out.name, "out.raw"])
    assert listings[2] == sorted([out.name, DATA_FILE[suffix]])


def _dead_pid() -> int:
    """The id of a process that has finished."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _leftover(folder: Path, pid: int, name: str, age_s: float, is_dir: bool = False) -> Path:
    """A temp file or staging folder as a run killed ``age_s`` ago would have left it."""
    path = folder / f".sainr-{pid}-{name}"
    if is_dir:
        path.mkdir()
        (path / "out.nii.gz").write_bytes(b"partial")
    else:
        path.write_bytes(b"partial")
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_temp_files_of_a_killed_run_are_ignored_and_removed(tmp_path, weights, capfd):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    _volume(src, "a.nrrd")
    _leftover(src, _dead_pid(), "0a1b2c.nii.gz", 10)  # not an input: batch mode ignores it
    old = 2 * STALE_DEAD_S
    stale = [
        _leftover(out, _dead_pid(), "0a1b2c.nii.gz", old),
        _leftover(out, _dead_pid(), "3d4e5f", old, is_dir=True),
    ]
    live = _leftover(out, os.getpid(), "6a7b8c.nrrd", old)  # a running process's: kept
    recent = _leftover(out, _dead_pid(), "9d0e1f.nrrd", 10)  # maybe still in use elsewhere
    code, err = run_cli(["reduce", str(src), str(out), *FACTOR2, *weights], capfd)
    assert code == 0, err
    assert (out / "a.nrrd").is_file()
    assert not any(p.exists() for p in stale) and live.exists() and recent.exists()


def test_batch_mode_processes_dicom_subfolders_and_names_what_it_skips(tmp_path, weights, capfd):
    src = tmp_path / "in"
    _volume(src.parent, "x.nrrd")
    src.mkdir()
    _volume(src, "a.nrrd")
    knee = sitk.ReadImage(str(KNEE_QDESS))
    write_series(src / "series1", knee[24:40, 24:40, 10:14])
    (src / "notes").mkdir()
    (src / "notes" / "readme.txt").write_text("not a volume")
    code, err = run_cli(["reduce", str(src), str(tmp_path / "out"), *FACTOR2, *weights], capfd)
    assert code == 0, err
    results = sorted(p.name for p in (tmp_path / "out").glob("*") if "sainr" not in p.name)
    assert results == ["a.nrrd", "series1.nii.gz"]
    assert sitk.ReadImage(str(tmp_path / "out" / "series1.nii.gz")).GetSize() == (16, 16, 7)
    assert "note: skipped subfolders without a DICOM series: notes" in err


def _batch(tmp_path: Path, names=("a.nrrd", "b.nrrd")) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    for name in names:
        _volume(src, name)
    return src


def test_batch_mode_checks_every_output_before_writing_anything(tmp_path, weights, capfd):
    src = _batch(tmp_path)
    out = tmp_path / "out"
    (out / "b.nrrd").mkdir(parents=True)  # the second output cannot be written
    argv = ["reduce", str(src), str(out), *FACTOR2, *weights]
    assert_cli_refuses(tmp_path, argv, "the output .*out/b.nrrd is a folder", capfd)
    argv = [
        "reduce",
        str(src),
        str(tmp_path / "o"),
        "--mask",
        str(tmp_path / "o"),
        *FACTOR2,
        *weights,
    ]
    assert_cli_refuses(tmp_path, argv, "--mask .* is the output path", capfd)
    (out / "b.nrrd").rmdir()
    _volume(src, "s.nii.gz")
    knee = sitk.ReadImage(str(KNEE_QDESS))
    write_series(src / "s", knee[24:40, 24:40, 10:14])  # would also be written as s.nii.gz
    argv = ["reduce", str(src), str(out), *FACTOR2, *weights]
    assert_cli_refuses(
        tmp_path, argv, "the result of s and the result of s.nii.gz would both be written", capfd
    )


def test_interrupting_a_batch_says_which_results_were_written(
    tmp_path, weights, monkeypatch, capfd
):
    src = _batch(tmp_path)
    out = tmp_path / "out"

    def printer(mode, label):
        def update(done, total):
            if label == "b.nrrd":
                os.kill(os.getpid(), signal.SIGINT)

        return update, lambda: None

    monkeypatch.setattr(sainr.cli.reduce, "progress_printer", printer)
    code, err = run_cli(["reduce", str(src), str(out), *FACTOR2, *weights], capfd)
    assert code == 130
    assert err[-1] == (
        f"sainr: cancelled; 1 of 2 results were written (the last: {out / 'a.nrrd'}); "
        "the other 1 were not"
    )
    assert sorted(p.name for p in out.iterdir()) == ["a.nrrd", "a.nrrd.sainr.json"]


def _mhd_input(folder: Path) -> Path:
    path = folder / "in.mhd"
    sitk.WriteImage(_image(_array()), str(path), False)  # in.mhd + in.raw
    return path


OPTIONS = {  # extra arguments (DIR = the test folder, IN = the input), message
    "preview onto the input": (
        ["--preview", "IN"],
        "--preview writes a PNG picture; give a .png file name, not in.mhd",
    ),
    "preview onto the input's data file": (
        ["--preview", "DIR/in.raw"],
        "give a .png file name, not in.raw",
    ),
    "preview is a folder": (["--preview", "DIR/pic.png/"], "--preview .*pic.png is a folder"),
    "preview folder missing": (["--preview", "DIR/no/pic.png"], "--preview folder does not exist"),
    "memory -1": (["--memory-mb", "-1"], "--memory-mb must be a positive number of MB, got -1.0"),
    "memory nan": (["--memory-mb", "nan"], "--memory-mb must be a positive number of MB, got nan"),
    "memory inf": (["--memory-mb", "inf"], "--memory-mb must be a positive number of MB, got inf"),
    "series of a file": (
        ["--series", "1.2.3"],
        "--series picks a series of a DICOM folder; the input is not one",
    ),
    "output is a folder": (
        ["--output", "DIR/sub.nii.gz/"],
        "the output .*sub.nii.gz is a folder; give a file name",
    ),
    "output would replace the input's data file": (
        ["--output", "DIR/in.nhdr"],
        "output .*in.nhdr would replace .*in.raw; choose another name",
    ),
}


@pytest.mark.parametrize("name", OPTIONS)
def test_options_are_checked_before_any_work(tmp_path, name, weights, capfd):
    extra, pattern = OPTIONS[name]
    src = _mhd_input(tmp_path)
    (tmp_path / "pic.png").mkdir()
    (tmp_path / "sub.nii.gz").mkdir()
    args = [a.replace("DIR", str(tmp_path)).replace("IN", str(src)) for a in extra]
    output = str(tmp_path / "out.nrrd")
    if "--output" in args:
        output = args.pop(args.index("--output") + 1)
        args.remove("--output")
    argv = ["reduce", str(src), output, *FACTOR2, *weights, *args]
    assert_cli_refuses(tmp_path, argv, pattern, capfd)


def test_preview_is_written_with_the_result(tmp_path, weights, capfd):
    pytest.importorskip("matplotlib")
    src = _volume(tmp_path)
    pic = tmp_path / "pic.png"
    code, err = run_cli(
        ["reduce", str(src), str(tmp_path / "o.nrrd"), "--preview", str(pic), *FACTOR2, *weights],
        capfd,
    )
    assert code == 0, err
    assert pic.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    argv = [
        "reduce",
        str(tmp_path),
        str(tmp_path / "out"),
        "--preview",
        str(pic),
        *FACTOR2,
        *weights,
    ]
    assert_cli_refuses(tmp_path, argv, "--preview needs a single input volume, not a folder", capfd)


def test_nothing_is_left_when_a_write_is_interrupted_midway(tmp_path, monkeypatch):
    """The staging folder goes with the interrupted write: Ctrl+C after the first of two
    header + data outputs is complete leaves the folder empty."""
    image, real, calls = _image(_array()), sitk.WriteImage, []

    def write(img, path, *args):
        calls.append(path)
        real(img, path, *args)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(sitk, "WriteImage", write)
    with pytest.raises(KeyboardInterrupt):
        write_volumes([(image, tmp_path / "a.mhd"), (image, tmp_path / "b.mhd")])
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []
