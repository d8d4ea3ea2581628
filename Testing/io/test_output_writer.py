"""Outputs that cannot clobber, names written as asked, reruns that notice stale results
(issue 26: outputs, reruns, names, batch and the smaller items).

Every input is cut from the repository's real knee (Testing/Data) and every run uses a tiny
random model, so each case takes milliseconds. Each test asserts what a user sees: the input
hashed unchanged, the old result byte for byte after a failure, no 0-byte, mixed or temp file,
the exact names, and results kept only when they are what the command would write now.
docs/reliability.md ("Round 3") lists each case with its message.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from cli_runs import _tiny_checkpoint, _tree, assert_cli_refuses, run_cli

import sainr
import sainr.runtime.weights
from conftest import KNEE_QDESS, TINY
from sainr.errors import OutputPathError, WeightsError
from sainr.io import outputs
from sainr.io.outputs import is_complete, write_volume, write_volumes
from sainr.model import SAINR, ModelConfig
from sainr.runtime.weights import load_model, save_checkpoint

FACTOR2 = ["--factor", "2", "--progress", "none"]


@pytest.fixture(scope="module")
def knee() -> sitk.Image:
    """12 x 12 x 4 voxels of the real knee at 0.3125 x 0.3125 x 3 mm (int16)."""
    return sitk.ReadImage(str(KNEE_QDESS))[24:36, 24:36, 10:18:2]


@pytest.fixture
def weights(tmp_path) -> list[str]:
    return ["--weights", str(_tiny_checkpoint(tmp_path / "tiny.pt"))]


def _write(image: sitk.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _voxels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _reduce(src: Path, out: Path, weights: list[str], capfd, *extra: str) -> list[str]:
    """Run ``sainr reduce`` and require success; its stderr lines."""
    code, err = run_cli(["reduce", str(src), str(out), *FACTOR2, *weights, *extra], capfd)
    assert code == 0, err
    return err


def _no_temps(folder: Path) -> bool:
    return not list(folder.rglob(".sainr-*"))


# --- destinations: links are followed, an input is never written ----------------------------


def test_a_link_output_writes_its_target_and_never_the_input_of_that_name(
    tmp_path, knee, weights, capfd, monkeypatch
):
    """Issue 26's first case: work/out.nii.gz -> ../res/real.nii.gz, input ../res/out.nii.gz;
    the result was moved into res/ under the link's name, over the input."""
    src = _write(knee, tmp_path / "res" / "out.nii.gz")
    old = _write(knee[:, :, :2], tmp_path / "res" / "real.nii.gz")
    work = tmp_path / "work"
    work.mkdir()
    (work / "out.nii.gz").symlink_to("../res/real.nii.gz")
    before = _sha(src)
    monkeypatch.chdir(work)
    _reduce(Path("../res/out.nii.gz"), Path("out.nii.gz"), weights, capfd)
    assert _sha(src) == before  # the input is untouched
    assert os.readlink(work / "out.nii.gz") == "../res/real.nii.gz"  # still the same link
    assert sitk.ReadImage(str(old)).GetSize() == (12, 12, 7)  # its target holds the result
    assert sitk.ReadImage(str(work / "out.nii.gz")).GetSize() == (12, 12, 7)
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == [
        "out.nii.gz",
        "real.nii.gz",
        "real.nii.gz.sainr.json",
    ]


def test_a_link_to_a_header_and_data_output_lands_beside_its_target(tmp_path, knee):
    (tmp_path / "res").mkdir()
    (tmp_path / "out.mhd").symlink_to(tmp_path / "res" / "real.mhd")  # dangling: created
    assert write_volume(knee, tmp_path / "out.mhd") == tmp_path / "res" / "real.mhd"
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == ["real.mhd", "real.zraw"]
    real = tmp_path / "res" / "real.mhd"  # (ITK looks for the data file beside a link)
    np.testing.assert_array_equal(_voxels(real), sitk.GetArrayFromImage(knee))
    assert (tmp_path / "out.mhd").resolve() == real


def _symlink_to_input(folder: Path, src: Path) -> Path:
    (folder / "link.nrrd").symlink_to(src)
    return folder / "link.nrrd"


def _hard_link_to_input(folder: Path, src: Path) -> Path:
    os.link(src, folder / "twin.nrrd")
    return folder / "twin.nrrd"


DESTINATIONS = {  # how the output is made from the input, the message
    "link to the input": (_symlink_to_input, "link.nrrd is the input file"),
    "hard link to the input": (_hard_link_to_input, "twin.nrrd is the input file"),
    "link to another format": (
        lambda d, s: _symlink(d / "out.nii.gz", d / "real.nrrd"),
        "out.nii.gz is a link to .*real.nrrd, a name of another format",
    ),
    "link loop": (
        lambda d, s: _symlink(d / "loop.nii.gz", d / "loop.nii.gz"),
        "loop.nii.gz is a loop of symbolic links",
    ),
}


def _no_model(ckpt: dict, name: str) -> None:
    """Stands in for building a model in runs that must stop before one is built."""
    pytest.fail(f"model {name} built")


def _symlink(link: Path, target: Path) -> Path:
    link.symlink_to(target)
    return link


@pytest.mark.parametrize("name", DESTINATIONS)
def test_outputs_that_are_an_input_or_odd_links_are_refused_before_any_work(
    tmp_path, knee, weights, capfd, monkeypatch, name
):
    make, pattern = DESTINATIONS[name]
    src = _write(knee, tmp_path / "in.nrrd")
    out = make(tmp_path, src)
    monkeypatch.setattr(sainr.runtime.weights, "build_model", _no_model)
    assert_cli_refuses(tmp_path, ["reduce", str(src), str(out), *FACTOR2, *weights], pattern, capfd)


def _mhd_input(folder: Path, knee: sitk.Image, data: str) -> Path:
    """in.mhd whose data file is called ``data``, and an old out.mhd naming the same file."""
    sitk.WriteImage(knee, str(folder / "in.mhd"), False)  # in.mhd + in.raw
    (folder / "in.raw").rename(folder / data)
    header = (folder / "in.mhd").read_text().replace("in.raw", data)
    (folder / "in.mhd").write_text(header)
    (folder / "out.mhd").write_text(header)
    return folder / "in.mhd"


def test_the_old_data_file_is_removed_only_when_it_is_the_outputs_own(
    tmp_path, knee, weights, capfd
):
    """A rewrite removes the data file the old header named, never an input's: one named as
    this output's would be is refused, one of another name is left alone."""
    src = _mhd_input(tmp_path, knee, "out.raw")
    argv = ["reduce", str(src), str(tmp_path / "out.mhd"), *FACTOR2, *weights]
    assert_cli_refuses(tmp_path, argv, "out.mhd would replace .*out.raw", capfd)
    (tmp_path / "out.raw").rename(tmp_path / "mine.raw")
    src = _mhd_input(tmp_path, knee, "mine.raw")
    before = {name: _sha(tmp_path / name) for name in ("in.mhd", "mine.raw")}
    _reduce(src, tmp_path / "out.mhd", weights, capfd)
    assert {name: _sha(tmp_path / name) for name in before} == before
    assert _voxels(tmp_path / "out.mhd").shape == (7, 12, 12)


# --- a full disk never destroys a good result --------------------------------------------------


def _disk_full_after(nbytes: int) -> Callable[..., None]:
    """The writer's file write on a disk that fills after ``nbytes``: that much is written,
    then ENOSPC, as the OS reports it."""

    def write(image: sitk.Image, path: Path, compress: bool) -> None:
        sitk.WriteImage(image, str(path), compress)
        data = path.read_bytes()
        path.write_bytes(data[:nbytes])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    return write


def _short_write(image: sitk.Image, path: Path, compress: bool) -> None:
    """A write the library reports as done but that left a cut file (or 0 bytes)."""
    sitk.WriteImage(image, str(path), compress)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def _full_at_fsync(fd: int) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".nhdr"])
@pytest.mark.parametrize(
    "failure", ["ENOSPC at 0 bytes", "ENOSPC midway", "short write", "ENOSPC at fsync"], ids=str
)
def test_a_full_disk_leaves_the_previous_result_byte_for_byte(
    tmp_path, knee, weights, capfd, monkeypatch, suffix, failure
):
    src = _write(knee, tmp_path / "in.nrrd")
    out = tmp_path / f"out{suffix}"
    _reduce(src, out, weights, capfd)
    before = _tree(tmp_path)
    if failure == "ENOSPC at fsync":  # late allocation: the writes and the read-back worked
        monkeypatch.setattr(os, "fsync", _full_at_fsync)
    else:
        write = {
            "ENOSPC at 0 bytes": _disk_full_after(0),
            "ENOSPC midway": _disk_full_after(200),
            "short write": _short_write,
        }[failure]
        monkeypatch.setattr(outputs, "_write_image", write)
    pattern = "could not write .*out.* any earlier result there is unchanged"
    argv = ["reduce", str(src), str(out), "--factor", "3", "--progress", "none", *weights]
    assert_cli_refuses(tmp_path, argv, pattern, capfd)
    assert _tree(tmp_path) == before  # old result and record unchanged, no temp file
    assert _voxels(out).shape == (7, 12, 12)


def test_a_full_disk_while_the_record_is_written_changes_nothing(tmp_path, knee, monkeypatch):
    out = tmp_path / "out.nii.gz"
    write_volumes([(knee, out)], made={"run": 1})
    before = _tree(tmp_path)

    def full(path, mode="r", **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(outputs, "open", full, raising=False)
    with pytest.raises(OutputPathError, match="No space left on device.*unchanged"):
        write_volumes([(knee[:, :, :2], out)], made={"run": 2})
    assert _tree(tmp_path) == before


def test_a_real_write_limit_of_the_os_leaves_the_previous_result(tmp_path, knee, weights, capfd):
    """No mock: the CLI runs in a process whose files the OS stops at 1 KB (RLIMIT_FSIZE,
    what a full disk does to a write: EFBIG instead of ENOSPC), over a good 1 KB+ result."""
    pytest.importorskip("resource", reason="a POSIX file size limit")
    src = _write(knee, tmp_path / "in.nrrd")
    out = tmp_path / "out.nii"
    _reduce(src, out, weights, capfd)
    assert out.stat().st_size > 1024
    before = _tree(tmp_path)
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))\n"
        "from sainr.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(sainr.__file__).parents[1]), OMP_NUM_THREADS="1")
    run = subprocess.run(
        [sys.executable, "-c", script, "reduce", str(src), str(out), "--factor", "3"]
        + ["--progress", "none", *weights],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert "could not write" in run.stderr and "unchanged" in run.stderr
    assert _tree(tmp_path) == before


# --- header + data results are replaced as one unit ---------------------------------------------


class Killed(BaseException):
    """Stands for SIGKILL between two steps of the landing (nothing after it runs)."""


def _kill_at(monkeypatch, step: int, snapshot: Path, folder: Path) -> None:
    """Make the ``step``-th landing step (data move, header replace, record replace, old data
    removal) copy ``folder`` to ``snapshot`` as a kill there would leave it, then stop."""
    count = [0]

    def wrap(real):
        def step_once(*args):
            if count[0] == step:
                shutil.copytree(folder, snapshot, symlinks=True)
                raise Killed
            count[0] += 1
            return real(*args)

        return step_once

    for name in ("_move_new", "_replace", "_remove"):
        monkeypatch.setattr(outputs, name, wrap(getattr(outputs, name)))


@pytest.mark.parametrize("suffix", [".mhd", ".nhdr", ".nii.gz", ".mha"])
@pytest.mark.parametrize("step", [0, 1, 2, 3])
def test_a_kill_at_any_step_of_a_replace_leaves_the_old_or_the_new_result_whole(
    tmp_path, knee, monkeypatch, suffix, step
):
    """Issue 26: killed between the data and header moves while overwriting out.mhd, the old
    header sat with new data (unreadable, old result lost, counted complete)."""
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / f"out{suffix}"
    old, new = knee, knee[:, :, :3] * 2
    write_volumes([(old, out)], made={"made": "old"})
    snapshot = tmp_path / "snapshot"
    _kill_at(monkeypatch, step, snapshot, folder)
    try:
        write_volumes([(new, out)], made={"made": "new"})
    except Killed:
        pass
    monkeypatch.undo()
    states = [snapshot / out.name] if snapshot.exists() else []
    for result in [*states, out]:
        voxels = _voxels(result)
        is_old = np.array_equal(voxels, sitk.GetArrayFromImage(old))
        is_new = np.array_equal(voxels, sitk.GetArrayFromImage(new))
        assert is_old or is_new, f"{result}: neither the old nor the new result"
        assert not is_complete([result], {"made": "new"}) or is_new  # complete only if new
        assert not is_complete([result], {"made": "old"}) or is_old
        assert not [p for p in result.parent.iterdir() if p.stat().st_size == 0]
    assert _no_temps(folder)


def test_a_failed_move_of_the_mask_says_the_result_was_written(tmp_path, knee, monkeypatch):
    """A rename refused between the result and its mask (a permission changed meanwhile):
    the message names what was written, and the pair is not complete."""
    out, mask = tmp_path / "out.nrrd", tmp_path / "mask.nrrd"
    write_volumes([(knee, out), (knee, mask)], made={"run": 1})
    old_mask = _sha(mask)
    real = outputs._replace

    def refuse_mask(src: Path, dst: Path) -> None:
        if dst == mask:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dst))
        real(src, dst)

    monkeypatch.setattr(outputs, "_replace", refuse_mask)
    pattern = f"could not write {mask} \\(Permission denied\\); {out} was written; any earlier"
    with pytest.raises(OutputPathError, match=pattern):
        write_volumes([(knee[:, :, :2], out), (knee[:, :, :2], mask)], made={"run": 2})
    assert _voxels(out).shape == (2, 12, 12) and _sha(mask) == old_mask
    assert not is_complete([out, mask], {"run": 2}) and _no_temps(tmp_path)


def test_a_result_with_a_mask_of_another_run_is_not_complete(tmp_path, knee):
    out, mask = tmp_path / "out.nrrd", tmp_path / "mask.nrrd"
    write_volumes([(knee, out), (knee, mask)], made={"same": 1})
    assert is_complete([out, mask], {"same": 1})
    write_volumes([(knee, out)], made={"same": 1})  # the result again, without its mask
    assert is_complete([out], {"same": 1}) and not is_complete([out, mask], {"same": 1})


# --- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, single",
    [
        ("OUT.NII.GZ", True),
        ("OUT.MHA", True),
        ("out.Nii", True),
        ("OUT.NRRD", True),
        ("Out.Mhd", False),
        ("OUT.NHDR", False),
    ],
)
def test_extensions_are_matched_in_any_case_and_the_names_are_exactly_the_requested_ones(
    tmp_path, knee, weights, capfd, name, single
):
    src = _write(knee, tmp_path / "in.nrrd")
    err = _reduce(src, tmp_path / name, weights, capfd)
    assert err[-1].endswith(f"-> {tmp_path / name}")
    written = sorted(p.name for p in tmp_path.iterdir())
    data = [] if single else [p.name for p in tmp_path.iterdir() if "raw" in p.name]
    assert written == sorted(["in.nrrd", "tiny.pt", name, f"{name}.sainr.json", *data])
    if name == "OUT.MHA":  # one MetaImage file, its data inside (not OUT.mhd + OUT.zraw)
        assert b"ElementDataFile = LOCAL" in (tmp_path / name).read_bytes()[:1024]
    lower = tmp_path / "check" / name.lower()  # ITK reads .Nii only in lower case
    lower.parent.mkdir()
    for f in [name, *data]:
        shutil.copy(tmp_path / f, lower.parent / (f.lower() if f == name else f))
    assert sitk.ReadImage(str(lower)).GetSize() == (12, 12, 7)


ODD_NAMES = {
    "unknown format": ("out.png", "unknown output format for out.png"),
    "no name before the extension": (".nii.gz", "has no name before its extension"),
    "space in a .mhd name": ("my out.mhd", "holds a space or '%'.*\\.mhd header"),
    "pattern in a .nhdr name": ("out%03d.nhdr", "holds a space or '%'"),
    "line break": ("out\nx.nii.gz", "control characters"),
    "temp file name": (".sainr-1-ab.nii.gz", "reserved for SAINRSlicer's temp files"),
}


@pytest.mark.parametrize("case", ODD_NAMES)
def test_odd_output_names_are_refused_before_any_work(
    tmp_path, knee, weights, capfd, monkeypatch, case
):
    name, pattern = ODD_NAMES[case]
    src = _write(knee, tmp_path / "in.nrrd")
    monkeypatch.setattr(sainr.runtime.weights, "build_model", _no_model)
    argv = ["reduce", str(src), str(tmp_path / name), *FACTOR2, *weights]
    assert_cli_refuses(tmp_path, argv, pattern, capfd)


def _batch(tmp_path: Path, knee: sitk.Image, names: list[str]) -> Path:
    """A folder of inputs (written under lower-case names, which ITK needs, then renamed)."""
    for name in names:
        _write(knee, tmp_path / "in" / name.lower()).rename(tmp_path / "in" / name)
    return tmp_path / "in"


def test_a_batch_writes_upper_case_names_as_they_are(tmp_path, knee, weights, capfd):
    src = _batch(tmp_path, knee, ["a.nrrd", "b.nrrd", "c.NII.GZ"])
    _reduce(src, tmp_path / "out", weights, capfd)
    results = sorted(p.name for p in (tmp_path / "out").iterdir() if "sainr" not in p.name)
    assert results == ["a.nrrd", "b.nrrd", "c.NII.GZ"]


def test_a_batch_checks_every_output_name_before_the_first_result(tmp_path, knee, weights, capfd):
    src = _batch(tmp_path, knee, ["a.nrrd", "b.nrrd"])
    sitk.WriteImage(knee, str(src / "c d.mhd"), False)  # its output name holds a space
    argv = ["reduce", str(src), str(tmp_path / "out"), *FACTOR2, *weights]
    assert_cli_refuses(tmp_path, argv, "c d.mhd' holds a space", capfd)
    assert not (tmp_path / "out").exists()


def test_a_batch_finds_an_input_too_small_to_adapt_to_before_the_first_result(
    tmp_path, knee, weights, capfd
):
    src = _batch(tmp_path, knee, ["a.nrrd"])
    _write(knee[:4, :4, :], src / "b.nrrd")  # 4 x 4 in-plane: no adaptation pairs
    argv = ["reduce", str(src), str(tmp_path / "out"), *FACTOR2, *weights, "--adapt-steps", "1"]
    assert_cli_refuses(
        tmp_path, argv, "b.nrrd: the volume is too small in-plane .*leave out --adapt-steps", capfd
    )


# --- reruns: a result is kept only when it is what the command would write now --------------


def test_a_batch_rerun_keeps_complete_results_and_redoes_stale_or_broken_ones(
    tmp_path, knee, weights, capfd
):
    src = _batch(tmp_path, knee, ["a.nrrd", "b.nii.gz", "c.mhd", "d.nrrd"])
    out, mask = tmp_path / "out", tmp_path / "mask"
    head = ["reduce", str(src), str(out), "--mask", str(mask), "--progress", "none", *weights]
    argv = [*head, "--factor", "2"]
    assert run_cli(argv, capfd)[0] == 0
    before = _tree(tmp_path)
    code, err = run_cli(argv, capfd)
    assert code == 0 and _tree(tmp_path) == before  # nothing rewritten
    assert [line.split(":")[0] for line in err] == ["a.nrrd", "b.nii.gz", "c.mhd", "d.nrrd"]
    assert all("skipped (already complete)" in line for line in err)

    (out / "a.nrrd").write_bytes((out / "a.nrrd").read_bytes()[:-100])  # truncated
    (out / "b.nii.gz").write_bytes(b"")  # 0 bytes
    data = next(p for p in out.iterdir() if p.suffix == ".zraw")
    data.write_bytes(data.read_bytes()[::-1])  # another data file behind the old header
    (mask / "d.nrrd.sainr.json").unlink()  # a mask without its record
    code, err = run_cli(argv, capfd)
    assert code == 0, err
    assert sorted(line.split(":")[0] for line in err if "skipped" not in line) == [
        "a.nrrd",
        "b.nii.gz",
        "c.mhd",
        "d.nrrd",
    ]
    for name in ("a.nrrd", "b.nii.gz", "c.mhd", "d.nrrd"):
        assert _voxels(out / name).shape == (7, 12, 12)

    code, err = run_cli([*head, "--factor", "3"], capfd)  # another target
    assert code == 0 and not any("skipped" in line for line in err)
    assert _voxels(out / "a.nrrd").shape == (10, 12, 12)


def test_a_changed_input_or_model_makes_a_result_stale(tmp_path, knee, weights, capfd):
    src = _batch(tmp_path, knee, ["a.nrrd"])
    argv = ["reduce", str(src), str(tmp_path / "out"), *FACTOR2, *weights]
    assert run_cli(argv, capfd)[0] == 0
    _write(knee * 2, src / "a.nrrd")  # new voxels in the input
    assert "skipped" not in run_cli(argv, capfd)[1][0]
    assert "skipped" in run_cli(argv, capfd)[1][0]
    torch.manual_seed(1)
    save_checkpoint(SAINR(TINY), tmp_path / "tiny.pt")  # other weights under the same name
    assert "skipped" not in run_cli(argv, capfd)[1][0]


# --- Ctrl+C as a result lands ----------------------------------------------------------------


def _interrupt_while_landing(monkeypatch, target: str) -> None:
    """Ctrl+C arrives while ``target`` is being moved into place."""
    real = outputs._replace

    def replace(src: Path, dst: Path) -> None:
        if dst.name == target:
            os.kill(os.getpid(), signal.SIGINT)
        real(src, dst)

    monkeypatch.setattr(outputs, "_replace", replace)


def test_ctrl_c_as_a_batch_result_lands_says_that_it_was_written(
    tmp_path, knee, weights, capfd, monkeypatch
):
    src = _batch(tmp_path, knee, ["a.nrrd", "b.nrrd", "c.nrrd"])
    out = tmp_path / "out"
    _interrupt_while_landing(monkeypatch, "b.nrrd")
    code, err = run_cli(["reduce", str(src), str(out), *FACTOR2, *weights], capfd)
    assert code == 130
    assert err[-1] == (
        f"sainr: cancelled; 2 of 3 results were written (the last: {out / 'b.nrrd'}); "
        "the other 1 were not"
    )
    assert _voxels(out / "b.nrrd").shape == (7, 12, 12) and not (out / "c.nrrd").exists()
    assert (out / "b.nrrd.sainr.json").is_file() and _no_temps(out)


def test_ctrl_c_as_a_single_result_lands_never_claims_no_output(
    tmp_path, knee, weights, capfd, monkeypatch
):
    src = _write(knee, tmp_path / "in.nrrd")
    _interrupt_while_landing(monkeypatch, "out.mhd")
    code, err = run_cli(["reduce", str(src), str(tmp_path / "out.mhd"), *FACTOR2, *weights], capfd)
    assert code == 130 and "no partial output" not in err[-1]
    assert err[-1] == (
        f"sainr: cancelled; the result was written ({tmp_path / 'out.mhd'}) before the run stopped"
    )
    assert _voxels(tmp_path / "out.mhd").shape == (7, 12, 12) and _no_temps(tmp_path)


def test_ctrl_c_after_a_single_result_landed_says_it_was_written(
    tmp_path, knee, weights, capfd, monkeypatch
):
    """Stopped while --preview is drawn: the result is in place, and the message says so."""
    preview = pytest.importorskip("sainr.evaluation.preview")
    src = _write(knee, tmp_path / "in.nrrd")

    def drawing(*args):
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(preview, "save_comparison", drawing)
    out = tmp_path / "out.nrrd"
    argv = ["reduce", str(src), str(out), "--preview", str(tmp_path / "p.png"), *FACTOR2]
    code, err = run_cli([*argv, *weights], capfd)
    assert code == 130
    assert err[-1] == f"sainr: cancelled; 1 of 1 results were written (the last: {out})"
    assert _voxels(out).shape == (7, 12, 12) and not (tmp_path / "p.png").exists()


# --- the smaller items -----------------------------------------------------------------------


def test_a_catalog_entry_without_sha256_is_a_clear_weights_error(
    tmp_path, knee, capfd, monkeypatch
):
    models = tmp_path / "models"
    models.mkdir()
    _tiny_checkpoint(models / "sainr_default.pt")
    entry = {"file": "sainr_default.pt"}
    (models / "models.json").write_text(json.dumps({"models": {"default": entry}}))
    monkeypatch.setenv("SAINR_MODELS_DIR", str(models))
    pattern = "lists 'default' without its file and SHA-256.*--weights FILE.pt"
    with pytest.raises(WeightsError, match=pattern):
        load_model("default")
    src = _write(knee, tmp_path / "in.nrrd")
    argv = ["reduce", str(src), str(tmp_path / "o.nrrd"), *FACTOR2, "--weights", "default"]
    assert_cli_refuses(tmp_path, argv, pattern, capfd)


@pytest.mark.parametrize("conditioned", [False, True], ids=["unconditioned", "default-like"])
def test_the_thickness_is_reported_only_by_a_model_that_uses_it(tmp_path, knee, capfd, conditioned):
    torch.manual_seed(0)
    config = ModelConfig(**{**TINY.to_dict(), "conditioning": conditioned})
    path = tmp_path / "model.pt"
    save_checkpoint(SAINR(config), path)
    src = _write(knee, tmp_path / "in.nrrd")
    err = _reduce(
        src, tmp_path / "o.nrrd", ["--weights", str(path)], capfd, "--slice-thickness", "1"
    )
    notes = [line for line in err if line.startswith("note:")]
    if conditioned:
        assert notes == [] and "(1 mm thick, given)" in err[-1]
    else:
        assert notes == [
            "note: this model does not use the slice thickness, so --slice-thickness changes "
            "nothing; the default model uses it (--weights default)"
        ]
        assert "mm thick" not in err[-1]


def test_the_fast_preset_runs_by_name_and_an_unknown_name_lists_the_shipped_models(
    tmp_path, knee, capfd
):
    """``--weights fast`` (the smaller shipped preset) runs from the CLI and gives the same
    grid as the default; a name the catalog does not hold is refused naming every shipped
    model, in the API and on the CLI."""
    fast = load_model("fast")
    assert fast.config.channels < load_model().config.channels
    src = _write(knee, tmp_path / "in.nrrd")
    out, default_out = tmp_path / "fast.nrrd", tmp_path / "default.nrrd"
    _reduce(src, out, ["--weights", "fast"], capfd)
    _reduce(src, default_out, [], capfd)
    a, b = sitk.ReadImage(str(out)), sitk.ReadImage(str(default_out))
    assert a.GetSize() == b.GetSize() and a.GetSpacing() == b.GetSpacing()
    assert a.GetOrigin() == b.GetOrigin() and a.GetDirection() == b.GetDirection()
    assert not np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
    pattern = r"no model 'nope'; shipped models: default, fast\b"
    with pytest.raises(WeightsError, match=pattern):
        load_model("nope")
    argv = ["reduce", str(src), str(tmp_path / "o.nrrd"), *FACTOR2, "--weights", "nope"]
    assert_cli_refuses(tmp_path, argv, pattern, capfd)
