"""Every bad input gets a clear, typed error; nothing is lost (issue 7).

Each refusal case runs twice from the same file and options: through the CLI (exit 2, one line
on stderr starting ``sainr: error:``, the folder byte-for-byte as before: no output, no temp
file, the input unchanged) and through the Python API (the typed error). The options are parsed
by the CLI's own parser for both, so the two paths see the same request. A tiny random model
(``--weights tiny.pt``) keeps every run in milliseconds; values do not matter here.
docs/reliability.md lists every case with the message the user sees.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import signal
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from cli_runs import (
    _array,
    _catalog,
    _image,
    _tiny_checkpoint,
    _tree,
    _volume,
    _write,
    assert_cli_refuses,
    run_cli,
)

import sainr.cli.reduce
from conftest import TINY
from sainr import ReduceOptions, Target, reduce_spacing
from sainr.api import cast_like, output_values
from sainr.cli import build_parser
from sainr.errors import (
    AxisError,
    Cancelled,
    DeviceError,
    InputImageError,
    OutputPathError,
    ResourceError,
    SainrError,
    SpacingError,
    WeightsError,
)
from sainr.intensity import IntensityScale
from sainr.io.outputs import write_volume, write_volumes
from sainr.io.read import read_volume
from sainr.model import SAINR, ModelConfig
from sainr.runtime.device import choose_device
from sainr.runtime.inference import super_resolve_with_fallback

# --- inputs ----------------------------------------------------------------------------------


def _nrrd(folder: Path, fields: str, sizes=(12, 12, 4), data: bytes | None = None) -> Path:
    """A hand-written 3D int16 NRRD (SimpleITK refuses to create such headers)."""
    header = (
        f"NRRD0004\ntype: short\ndimension: 3\nsizes: {' '.join(map(str, sizes))}\n"
        f"encoding: raw\nendian: little\n{fields}\n\n"
    )
    body = _array(sizes[::-1], np.int16).tobytes() if data is None else data
    path = folder / "in.nrrd"
    path.write_bytes(header.encode() + body)
    return path


def _nifti_pixdim(folder: Path, slice_spacing: float, slices: int = 4) -> Path:
    """A valid NIfTI whose header then gets pixdim[3] = ``slice_spacing``."""
    path = _volume(folder, "in.nii", shape=(slices, 12, 12))
    raw = bytearray(path.read_bytes())
    struct.pack_into("<f", raw, 76 + 4 * 3, slice_spacing)
    path.write_bytes(bytes(raw))
    return path


def _nifti_sheared(folder: Path) -> Path:
    """A NIfTI whose sform tilts the j column towards i (ITK would silently use the qform)."""
    path = _volume(folder, "in.nii")
    raw = bytearray(path.read_bytes())
    struct.pack_into("<f", raw, 280 + 4 * 1, 0.25)  # srow_x[1]: shear
    path.write_bytes(bytes(raw))
    return path


def _meta(folder: Path, spacing: str) -> Path:
    header = (
        "ObjectType = Image\nNDims = 3\nDimSize = 12 12 4\nElementType = MET_SHORT\n"
        f"ElementSpacing = {spacing}\nElementDataFile = LOCAL\n"
    )
    path = folder / "in.mha"
    path.write_bytes(header.encode() + _array((4, 12, 12), np.int16).tobytes())
    return path


# --- weights ---------------------------------------------------------------------------------


def _other_architecture(path: Path) -> Path:
    """Declares the tiny config but holds the state of a narrower model."""
    other = SAINR(ModelConfig(channels=4, blocks=1, hidden=8, window=3, dilation=2))
    torch.save(
        {
            "format": "sainr-checkpoint-v1",
            "config": TINY.to_dict(),
            "state_dict": other.state_dict(),
            "meta": {},
        },
        path,
    )
    return path


def _flip_byte(path: Path, offset: int = 200) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


# --- refusal cases ---------------------------------------------------------------------------

Make = Callable[[Path, pytest.MonkeyPatch], tuple[Path, list[str]]]


@dataclass(frozen=True)
class Case:
    """An input (written by ``make`` under a folder, with extra CLI options) and the typed
    error and message both the CLI and the API must give for it."""

    make: Make
    error: type[SainrError]
    pattern: str


def _with(opts: list[str], make_path: Callable[[Path], Path]) -> Make:
    return lambda folder, mp: (make_path(folder), opts)


def _no_cuda(folder: Path, mp: pytest.MonkeyPatch) -> tuple[Path, list[str]]:
    mp.setattr(torch.cuda, "is_available", lambda: False)
    return _volume(folder), ["--factor", "2", "--device", "cuda"]


def _small_memory_limit(folder: Path, mp: pytest.MonkeyPatch) -> tuple[Path, list[str]]:
    mp.setattr("sainr.validation.MAX_RESULT_BYTES", 10_000)
    return _volume(folder), ["--factor", "4"]


def _small_hard_limit(folder: Path, mp: pytest.MonkeyPatch) -> tuple[Path, list[str]]:
    mp.setattr("sainr.validation.MAX_FORCED_RESULT_BYTES", 10_000)
    return _volume(folder), ["--factor", "4", "--force"]


def _weights_opts(make_weights: Callable[[Path], Path]) -> Make:
    return lambda folder, mp: (
        _volume(folder),
        ["--factor", "2", "--weights", str(make_weights(folder))],
    )


def _truncated(folder: Path) -> Path:
    path = _tiny_checkpoint(folder / "cut.pt")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _bad_checksum(folder: Path, mp: pytest.MonkeyPatch) -> tuple[Path, list[str]]:
    _flip_byte(_catalog(folder, mp))
    return _volume(folder), ["--factor", "2", "--weights", "default"]


def _catalog_file_missing(folder: Path, mp: pytest.MonkeyPatch) -> tuple[Path, list[str]]:
    _catalog(folder, mp, file="gone.pt")
    return _volume(folder), ["--factor", "2", "--weights", "default"]


FACTOR2 = ["--factor", "2"]
CASES = {
    "missing file": Case(
        _with(FACTOR2, lambda d: d / "nope.nii.gz"), InputImageError, "input not found"
    ),
    "empty file": Case(
        _with(FACTOR2, lambda d: _touch(d / "in.nii.gz")), InputImageError, "empty \\(0 bytes\\)"
    ),
    "not a volume": Case(
        _with(FACTOR2, lambda d: _bytes(d / "in.nii.gz", b"hello " * 200)),
        InputImageError,
        "cannot read in.nii.gz as a volume: corrupt",
    ),
    "corrupt header": Case(
        _with(FACTOR2, lambda d: _bytes(d / "in.nrrd", b"NRRD0004\ntype: banana\n\n")),
        InputImageError,
        "cannot read in.nrrd as a volume: corrupt",
    ),
    "truncated data": Case(
        _with(FACTOR2, lambda d: _nrrd(d, "spacings: 0.5 0.5 2", data=b"\0" * 100)),
        InputImageError,
        "cannot read in.nrrd.*corrupt",
    ),
    "truncated NIfTI": Case(
        _with(FACTOR2, lambda d: _cut(_volume(d, "in.nii"))),
        InputImageError,
        "in.nii: the file is truncated: its header needs 2656 bytes, it holds 1328",
    ),
    "truncated gzip": Case(
        _with(FACTOR2, lambda d: _cut(_volume(d, "in.nii.gz"))),
        InputImageError,
        "in.nii.gz: the compressed data is corrupt or truncated",
    ),
    "truncated MetaImage": Case(
        _with(FACTOR2, lambda d: _cut(_volume(d, "in.mha"))),
        InputImageError,
        "cannot read in.mha.*corrupt.*File cannot be read",
    ),
    "absurd header size": Case(
        _with(
            FACTOR2,
            lambda d: _nrrd(d, "spacings: 0.5 0.5 2", sizes=(2000, 2000, 300), data=b"\0" * 64),
        ),
        InputImageError,
        "header declares 2000 x 2000 x 300 voxels",
    ),
    "2D image": Case(
        _with(FACTOR2, lambda d: _write(d, "in.nrrd", _image(_array((12, 12))))),
        InputImageError,
        "is a 2D image",
    ),
    "4D time series": Case(
        _with(FACTOR2, lambda d: _write(d, "in.nii.gz", sitk.JoinSeries([_image(_array())] * 3))),
        InputImageError,
        "4D \\(3 frames.*extract one 3D frame",
    ),
    "RGB volume": Case(
        _with(FACTOR2, lambda d: _write(d, "in.nrrd", _rgb())),
        InputImageError,
        "RGB colour volume \\(3 components.*extract one scalar component",
    ),
    "vector volume": Case(
        _with(FACTOR2, lambda d: _write(d, "in.nrrd", sitk.Compose([_image(_array())] * 2))),
        InputImageError,
        "a vector volume \\(2 components.*extract one scalar component",
    ),
    "single slice": Case(
        _with(FACTOR2, lambda d: _volume(d, shape=(1, 12, 12))),
        InputImageError,
        "single slice \\(12 x 12 x 1 voxels\\).*needs at least 2 slices",
    ),
    "all-zero volume": Case(
        _with(FACTOR2, lambda d: _write(d, "in.nrrd", _image(np.zeros((4, 12, 12), np.int16)))),
        InputImageError,
        "every voxel of the volume is 0",
    ),
    "constant volume": Case(
        _with(
            FACTOR2, lambda d: _write(d, "in.nrrd", _image(np.full((4, 12, 12), 7.0, np.float32)))
        ),
        InputImageError,
        "every voxel of the volume is 7",
    ),
    "NaN voxels": Case(
        _with(FACTOR2, lambda d: _write(d, "in.nrrd", _image(_nan_array()))),
        InputImageError,
        "2 NaN/Inf voxels.*--nan-to-zero",
    ),
    "zero spacing (NIfTI)": Case(
        _with(FACTOR2, lambda d: _nifti_pixdim(d, 0.0)),
        InputImageError,
        "in.nii: voxel spacing must be positive and finite, got \\(0.5, 0.5, 0.0\\)",
    ),
    "negative spacing (NIfTI)": Case(
        _with(FACTOR2, lambda d: _nifti_pixdim(d, -2.0)),
        InputImageError,
        "spacing must be positive.*-2.0",
    ),
    "single slice, zero spacing (NIfTI)": Case(
        _with(FACTOR2, lambda d: _nifti_pixdim(d, 0.0, slices=1)),
        InputImageError,
        "the input is a single slice",
    ),
    "infinite spacing (NIfTI)": Case(
        _with(FACTOR2, lambda d: _nifti_pixdim(d, float("inf"))),
        InputImageError,
        "spacing must be positive.*inf",
    ),
    "NaN spacing (NRRD)": Case(
        _with(FACTOR2, lambda d: _nrrd(d, "spacings: 0.5 0.5 nan")),
        InputImageError,
        "in.nrrd: voxel spacing must be positive.*nan",
    ),
    "zero spacing (NRRD)": Case(
        _with(FACTOR2, lambda d: _nrrd(d, "spacings: 0.5 0.5 0")),
        InputImageError,
        "spacing must be positive.*0.0",
    ),
    "negative spacing (MHA)": Case(
        _with(FACTOR2, lambda d: _meta(d, "0.5 0.5 -2")),
        InputImageError,
        "in.mha: voxel spacing must be positive.*-2.0",
    ),
    "sheared direction (NRRD)": Case(
        _with(
            FACTOR2,
            lambda d: _nrrd(
                d, "space: left-posterior-superior\nspace directions: (0.5,0,0) (0.2,0.5,0) (0,0,2)"
            ),
        ),
        InputImageError,
        "not orthonormal \\(sheared.*resample",
    ),
    "sheared sform (NIfTI)": Case(
        _with(FACTOR2, _nifti_sheared),
        InputImageError,
        "in.nii: the direction matrix is not orthonormal",
    ),
    "target >= current spacing": Case(
        _with(["--spacing", "2.5"], _volume),
        SpacingError,
        "2.5 mm is not smaller than the current slice spacing 2 mm",
    ),
    "factor > 20": Case(
        _with(["--factor", "25"], _volume), SpacingError, "25.0x reduction.*limit 20x"
    ),
    "output over memory limit": Case(
        _small_memory_limit,
        SpacingError,
        "12 x 12 x 13 voxels and need 31 KiB of memory \\(limit 10 KiB\\).*--force",
    ),
    "ambiguous slice axis": Case(
        _with(FACTOR2, lambda d: _write(d, "in.nrrd", _image(_array(), (1.0, 1.0, 1.1)))),
        AxisError,
        "nearly isotropic.*--axis 0\\|1\\|2",
    ),
    "CUDA unavailable": Case(_no_cuda, DeviceError, "CUDA was requested but no usable GPU"),
    "weights file missing": Case(
        _weights_opts(lambda d: d / "none.pt"), WeightsError, "weights file not found"
    ),
    "weights truncated": Case(
        _weights_opts(_truncated), WeightsError, "cut.pt: not a valid checkpoint, e.g. truncated"
    ),
    "weights of another architecture": Case(
        _weights_opts(lambda d: _other_architecture(d / "other.pt")),
        WeightsError,
        "another architecture.*wrong-shaped",
    ),
    "weights bad checksum": Case(_bad_checksum, WeightsError, "fails its SHA-256 check"),
    "shipped weights file missing": Case(
        _catalog_file_missing, WeightsError, "gone.pt is missing; reinstall"
    ),
    "truncated compressed MetaImage": Case(
        _with(FACTOR2, lambda d: _meta_compressed_cut(d)),
        InputImageError,
        "in.mha: the compressed data is truncated \\(the stream ends early\\)",
    ),
    "MetaImage data file missing": Case(
        _with(FACTOR2, lambda d: _without_data(d, "in.mhd", "in.raw")),
        InputImageError,
        "in.mhd: its data file in.raw is missing \\(the header names it\\); copy it next to in.mhd",
    ),
    "NRRD data file missing": Case(
        _with(FACTOR2, lambda d: _without_data(d, "in.nhdr", "in.raw")),
        InputImageError,
        "in.nhdr: its data file in.raw is missing",
    ),
    "NRRD without spacing": Case(
        _with(FACTOR2, lambda d: _nrrd(d, "")),
        InputImageError,
        "in.nrrd: the header gives no voxel spacing .*ITK would assume 1 mm",
    ),
    "infinite origin (MHA Offset)": Case(
        _with(FACTOR2, lambda d: _meta(d, "0.5 0.5 2\nOffset = inf 0 0")),
        InputImageError,
        "in.mha: the origin \\(inf, 0.0, 0.0\\) is not finite",
    ),
    "NaN origin (NRRD)": Case(
        _with(
            FACTOR2,
            lambda d: _nrrd(
                d,
                "space: left-posterior-superior\nspace directions: (0.5,0,0) (0,0.5,0) (0,0,2)\nspace origin: (nan,0,0)",
            ),
        ),
        InputImageError,
        "in.nrrd: the origin \\(nan, 0.0, 0.0\\) is not finite",
    ),
    "weights that are a pickled model": Case(
        _weights_opts(lambda d: _pickled_model(d / "whole.pt")),
        WeightsError,
        "whole.pt is not a SA-INR checkpoint: it holds Python objects, not only weights",
    ),
    "weights without the format tag": Case(
        _weights_opts(lambda d: _saved(d / "plain.pt", {"w": torch.zeros(2)})),
        WeightsError,
        "plain.pt is not a SA-INR checkpoint \\(no 'sainr-checkpoint-v1' format tag\\)",
    ),
    "weights declaring absurd sizes": Case(
        _weights_opts(lambda d: _absurd_config(d / "huge.pt")),
        WeightsError,
        "huge.pt holds weights of another architecture",
    ),
    "factor 1e12 even with --force": Case(
        _with(["--factor", "1e12", "--force"], _volume),
        SpacingError,
        "a 1e\\+12x reduction of 2 mm; not even --force allows more than 1000x",
    ),
    "forced output beyond the hard limit": Case(
        _small_hard_limit,
        SpacingError,
        "the output would have 13 slices \\(1.87e\\+03 voxels\\) and need .* not even --force allows more than 10 KiB",
    ),
    "infinite qform offset (NIfTI)": Case(
        _with(FACTOR2, lambda d: _nifti_qoffset(d, float("inf"))),
        InputImageError,
        "in.nii: the origin .*inf.* is not finite",
    ),
}


def _pickled_model(path: Path) -> Path:
    """A whole pickled model (torch.save(model)): refused by weights_only loading."""
    torch.save(SAINR(TINY), path)
    return path


def _saved(path: Path, payload: dict) -> Path:
    torch.save(payload, path)
    return path


def _absurd_config(path: Path) -> Path:
    """Declares 100 000 encoder channels (840 billion parameters) with a tiny state."""
    config = {**TINY.to_dict(), "channels": 100_000}
    payload = {
        "format": "sainr-checkpoint-v1",
        "config": config,
        "state_dict": SAINR(TINY).state_dict(),
        "meta": {},
    }
    return _saved(path, payload)


def _meta_compressed_cut(folder: Path) -> Path:
    """A compressed .mha without CompressedDataSize (optional in MetaImage) cut in half: MetaIO
    would read it as uninitialised memory."""
    path = folder / "in.mha"
    sitk.WriteImage(_image(_array()), str(path), True)
    raw = path.read_bytes()
    start = raw.index(b"ElementDataFile = LOCAL\n") + len(b"ElementDataFile = LOCAL\n")
    header = re.sub(rb"CompressedDataSize = \d+\n", b"", raw[:start])
    path.write_bytes(header + raw[start : start + (len(raw) - start) // 2])
    return path


def _without_data(folder: Path, name: str, data: str) -> Path:
    """A header + data volume (uncompressed) whose data file is then deleted."""
    path = folder / name
    sitk.WriteImage(_image(_array()), str(path), False)
    (folder / data).unlink()
    return path


def _nifti_qoffset(folder: Path, value: float) -> Path:
    path = _volume(folder, "in.nii")
    raw = bytearray(path.read_bytes())
    struct.pack_into("<f", raw, 268, value)  # qoffset_x
    path.write_bytes(bytes(raw))
    return path


def _touch(path: Path) -> Path:
    path.touch()
    return path


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _cut(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _rgb() -> sitk.Image:
    channel = _image(_array(dtype=np.uint8))
    return sitk.Compose([channel] * 3)


def _nan_array() -> np.ndarray:
    arr = _array()
    arr[1, 2, 3], arr[2, 5, 5] = np.nan, np.inf
    return arr


# --- helpers: run both ways, check nothing changed -------------------------------------------


def _with_weights(folder: Path, opts: list[str]) -> list[str]:
    """``opts`` plus the tiny model unless they name weights."""
    if "--weights" in opts:
        return opts
    return [*opts, "--weights", str(_tiny_checkpoint(folder / "tiny.pt"))]


def run_api(src: Path, opts: list[str]):
    """The API call the CLI would make for ``opts`` (parsed by the CLI's own parser)."""
    a = build_parser().parse_args(["reduce", str(src), "unused.nrrd", *opts])
    image = read_volume(a.input)
    target = Target(a.spacing, a.factor, a.isotropic, a.axis, a.force)
    options = ReduceOptions(device=a.device, nan_policy="zero" if a.nan_to_zero else "refuse")
    return reduce_spacing(image, target, options, weights=a.weights)


@pytest.mark.parametrize("name", CASES)
def test_cli_refuses_with_one_line_and_writes_nothing(name, tmp_path, monkeypatch, capfd):
    case = CASES[name]
    src, opts = case.make(tmp_path, monkeypatch)
    argv = [
        "reduce",
        str(src),
        str(tmp_path / "out.nii.gz"),
        "--mask",
        str(tmp_path / "m.nrrd"),
        *_with_weights(tmp_path, opts),
        "--progress",
        "none",
    ]
    assert_cli_refuses(tmp_path, argv, case.pattern, capfd)


@pytest.mark.parametrize("name", CASES)
def test_api_raises_the_typed_error(name, tmp_path, monkeypatch):
    case = CASES[name]
    src, opts = case.make(tmp_path, monkeypatch)
    with pytest.raises(case.error, match=case.pattern):
        run_api(src, _with_weights(tmp_path, opts))


# --- output paths ----------------------------------------------------------------------------


def _can_create_file(folder: Path) -> bool:
    try:
        fd, probe = tempfile.mkstemp(dir=folder)
    except PermissionError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


@pytest.fixture
def unwritable_folder(tmp_path):
    """A folder this user really cannot create files in: a 0o555 folder (non-root users) or
    /sys (sysfs refuses new files even to root); verified, else the test is skipped."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        folder = next((f for f in (locked, Path("/sys")) if not _can_create_file(f)), None)
        if folder is None:
            pytest.skip("no folder refuses writes to this user (root ignores permission bits)")
        yield folder
    finally:
        locked.chmod(0o755)


def test_output_paths_that_cannot_be_used(tmp_path, unwritable_folder, capfd):
    src = _volume(tmp_path)
    weights = str(_tiny_checkpoint(tmp_path / "tiny.pt"))
    a_file = _bytes(tmp_path / "notes.txt", b"x")
    cases = [  # output, extra options, message, also refused by the API's write_volume
        (tmp_path / "no" / "such" / "out.nii.gz", [], "output folder does not exist", True),
        (a_file / "out.nii.gz", [], "notes.txt is a file; choose another folder", True),
        (
            unwritable_folder / "out.nii.gz",
            [],
            "output folder is not writable.*Permission denied",
            True,
        ),
        (tmp_path / "out.png", [], "unknown output format for out.png", True),
        (src, [], "is the input file; choose another name", False),
        (
            tmp_path / "o.nrrd",
            ["--mask", str(tmp_path / "o.nrrd")],
            "--mask .* is the output path",
            False,
        ),
    ]
    for out, extra, pattern, api in cases:
        argv = ["reduce", str(src), str(out), "--factor", "2", "--weights", weights, *extra]
        assert_cli_refuses(tmp_path, argv, pattern, capfd)
        if api:
            with pytest.raises(OutputPathError, match=pattern):
                write_volume(read_volume(src), out)


def test_batch_mode_checks_every_input_before_writing_anything(tmp_path, capfd):
    src = tmp_path / "in"
    src.mkdir()
    _volume(src, "a.nrrd")
    _volume(src, "b.nrrd", shape=(1, 12, 12))  # bad: a single slice
    weights = str(_tiny_checkpoint(tmp_path / "tiny.pt"))
    argv = ["reduce", str(src), str(tmp_path / "out"), "--factor", "2", "--weights", weights]
    assert_cli_refuses(tmp_path, argv, "single slice", capfd)  # not even the out folder
    argv = ["reduce", str(src), str(src), "--factor", "2", "--weights", weights]
    assert_cli_refuses(tmp_path, argv, "is the input folder: the results would replace", capfd)


# --- inputs that must work -------------------------------------------------------------------


def _run_ok(tmp_path: Path, src: Path, opts: list[str], capfd) -> sitk.Image:
    """Run the CLI, require success and an untouched input; return the output read back."""
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    out = tmp_path / "out.nrrd"
    code, err = run_cli(
        ["reduce", str(src), str(out), *_with_weights(tmp_path, opts), "--progress", "none"], capfd
    )
    assert code == 0, err
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before
    assert not list(tmp_path.glob(".sainr-*"))
    return sitk.ReadImage(str(out))


def test_outputs_are_replaced_atomically_with_the_usual_file_mode(tmp_path, capfd):
    src = _volume(tmp_path)
    (tmp_path / "out.nrrd").write_bytes(b"an older result")
    out = _run_ok(tmp_path, src, FACTOR2, capfd)
    assert out.GetSize() == (12, 12, 7)
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "out.nrrd").stat().st_mode & 0o777 == 0o666 & ~umask


def test_two_slices_are_a_valid_volume(tmp_path, capfd):
    src = _write(tmp_path, "in.nrrd", _image(_array((2, 12, 12)), (0.5, 0.5, 3.0)))
    out = _run_ok(tmp_path, src, ["--factor", "3"], capfd)
    assert out.GetSize() == (12, 12, 4)
    assert run_api(src, _with_weights(tmp_path, ["--factor", "3"])).image.GetSize() == (12, 12, 4)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64])
def test_output_keeps_the_input_pixel_type(tmp_path, dtype, capfd):
    src = _write(tmp_path, "in.nrrd", _image(_array(dtype=dtype)))
    out = _run_ok(tmp_path, src, FACTOR2, capfd)
    assert sitk.GetArrayViewFromImage(out).dtype == dtype
    assert out.GetPixelID() == sitk.ReadImage(str(src)).GetPixelID()


def test_integer_outputs_are_rounded_and_clipped_to_their_range():
    values = np.array([-3.6, 2.4, 2.6, 254.7, 300.0])
    np.testing.assert_array_equal(cast_like(values, np.dtype(np.uint8)), [0, 2, 3, 255, 255])
    np.testing.assert_array_equal(cast_like(values, np.dtype(np.int16)), [-4, 2, 3, 255, 300])


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_output_values_are_the_whole_volume_cast_in_the_inputs_order(axis, dtype):
    """Slice by slice, written into place: the same values as clipping negatives, scaling
    back and casting the whole volume at once, with the slice axis where the input had it."""
    hr = np.random.default_rng(axis).random((5, 6, 7), dtype=np.float32) * 1.4 - 0.2
    scale = IntensityScale(-20.0, 280.0)
    whole = cast_like(scale.denormalize(np.maximum(hr, 0.0)), np.dtype(dtype))
    out = output_values(hr, scale, np.dtype(dtype), axis)
    assert out.flags.c_contiguous and out.dtype == dtype
    np.testing.assert_array_equal(out, np.moveaxis(whole, 0, 2 - axis))
    assert out.min() == cast_like(np.array([-20.0]), np.dtype(dtype))[0]  # negatives -> low
    if dtype == np.uint8:
        assert out.max() == 255  # 1.2 x 300 - 20 = 340 clipped to the type's range


def test_64_bit_integer_outputs_are_clipped_without_wrapping():
    """float64(2**63 - 1) is 2**63: clipping to it and casting would wrap to the minimum."""
    values = np.array([2.0**64, 2.0**63, 1e30, -1e30, 5.6])
    near, top = 2**63 - 1024, 2**64 - 2048  # the largest float64 below each type's maximum
    np.testing.assert_array_equal(
        cast_like(values, np.dtype(np.int64)),
        np.array([near, near, near, np.iinfo(np.int64).min, 6], np.int64),
    )
    np.testing.assert_array_equal(
        cast_like(values, np.dtype(np.uint64)), np.array([top, 2**63, top, 0, 6], np.uint64)
    )
    np.testing.assert_array_equal(
        cast_like(np.array([1e39, -1e39, 3.0]), np.dtype(np.float32)),
        np.array([np.finfo(np.float32).max, np.finfo(np.float32).min, 3.0], np.float32),
    )


EXTREMES = {  # input voxels spanning (almost) the type's range
    "float32 near +-3e38": lambda: ((_array(dtype=np.float64) * 2 - 1) * 3e38).astype(np.float32),
    "int64 near its maximum": lambda: (_array(dtype=np.float64) * np.iinfo(np.int64).max).astype(
        np.int64
    ),
    "uint64 near its maximum": lambda: (_array(dtype=np.float64) * 2.0**64).astype(np.uint64),
}


@pytest.mark.parametrize("name", EXTREMES)
def test_values_near_the_type_limits_stay_finite_and_in_range(tmp_path, name, capfd):
    """float32 arithmetic overflowed (NaN in 75 % of the output); int64 wrapped."""
    array = EXTREMES[name]()
    src = _write(tmp_path, "in.nrrd", _image(array))
    out = sitk.GetArrayFromImage(_run_ok(tmp_path, src, FACTOR2, capfd))
    assert out.dtype == array.dtype and out.shape == (7, 12, 12)
    values = out.astype(np.float64)
    assert np.isfinite(values).all()
    low, high = float(array.min()), float(array.max())
    span = high - low
    assert values.min() >= low - span and values.max() <= high + span  # no wrap, no overflow
    assert values.std() > 0.01 * span  # contrast kept, not collapsed to one value


def test_micro_scale_spacings_are_not_refused_by_an_absolute_tolerance(tmp_path, capfd):
    """Slices 2 um apart (spacings in mm): factor 2 gives 1 um, not 'not smaller'."""
    src = _write(tmp_path, "in.nrrd", _image(_array(), (0.5e-3, 0.5e-3, 2e-3)))
    out = _run_ok(tmp_path, src, ["--spacing", "1e-3"], capfd)
    assert out.GetSize() == (12, 12, 7)
    np.testing.assert_allclose(out.GetSpacing(), (0.5e-3, 0.5e-3, 1e-3), rtol=1e-6)
    nano = _image(_array(), (0.5e-6, 0.5e-6, 2e-6))
    result = reduce_spacing(nano, Target(factor=2), model=SAINR(TINY).eval())
    assert result.image.GetSize() == (12, 12, 7)


def test_explicit_flags_accept_what_is_otherwise_refused(tmp_path, monkeypatch, capfd):
    nan = _write(tmp_path, "nan.nrrd", _image(_nan_array()))
    assert np.isfinite(
        sitk.GetArrayViewFromImage(_run_ok(tmp_path, nan, FACTOR2 + ["--nan-to-zero"], capfd))
    ).all()
    iso = _write(tmp_path, "iso.nrrd", _image(_array(), (1.0, 1.0, 1.1)))
    assert _run_ok(tmp_path, iso, FACTOR2 + ["--axis", "0"], capfd).GetSize() == (23, 12, 4)
    monkeypatch.setattr("sainr.validation.MAX_RESULT_BYTES", 10_000)
    big = _volume(tmp_path, "big.nrrd")
    assert _run_ok(tmp_path, big, ["--factor", "4", "--force"], capfd).GetSize() == (12, 12, 13)


# --- failures during the run -----------------------------------------------------------------


_REAL_WRITE = sitk.WriteImage


def _failing_write(fail_on_call: int, exc: Callable[[], BaseException]):
    """sitk.WriteImage that writes half a file, then fails, on its ``fail_on_call``-th call."""
    real, calls = _REAL_WRITE, []

    def write(image, path, *args):
        calls.append(path)
        if len(calls) == fail_on_call:
            Path(path).write_bytes(b"partial")
            raise exc()
        return real(image, path, *args)

    return write


@pytest.mark.parametrize("fail_on_call", [1, 2], ids=["image", "mask"])
def test_disk_full_during_write_leaves_no_file(tmp_path, monkeypatch, capfd, fail_on_call):
    src = _volume(tmp_path)
    opts = _with_weights(tmp_path, FACTOR2)

    def disk_full():
        return _failing_write(
            fail_on_call, lambda: RuntimeError("ITK ERROR: No space left on device")
        )

    monkeypatch.setattr(sitk, "WriteImage", disk_full())
    argv = [
        "reduce",
        str(src),
        str(tmp_path / "out.nrrd"),
        "--mask",
        str(tmp_path / "m.nrrd"),
        *opts,
        "--progress",
        "none",
    ]
    assert_cli_refuses(tmp_path, argv, "could not write .*No space left on device", capfd)
    monkeypatch.setattr(sitk, "WriteImage", disk_full())
    with pytest.raises(OutputPathError, match="free disk space"):
        write_volumes(
            [(read_volume(src), tmp_path / "a.nrrd"), (read_volume(src), tmp_path / "b.nrrd")]
        )
    assert not (tmp_path / "a.nrrd").exists() and not list(tmp_path.glob(".sainr-*"))


def test_sigterm_during_write_leaves_no_file(tmp_path, monkeypatch, capfd):
    src = _volume(tmp_path)
    opts = _with_weights(tmp_path, FACTOR2)
    before = _tree(tmp_path)

    def killed():
        os.kill(os.getpid(), signal.SIGTERM)  # the handler raises here
        return AssertionError("the SIGTERM handler did not stop the run")

    monkeypatch.setattr(sitk, "WriteImage", _failing_write(1, killed))
    code, err = run_cli(
        ["reduce", str(src), str(tmp_path / "out.nrrd"), *opts, "--progress", "none"], capfd
    )
    assert code == 130 and err == ["sainr: cancelled; no partial output was written"]
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_run_leaves_no_file(tmp_path, monkeypatch, capfd, sig):
    src = _volume(tmp_path, shape=(4, 40, 40))
    opts = _with_weights(tmp_path, FACTOR2 + ["--memory-mb", "1"])  # many small chunks
    before, calls = _tree(tmp_path), []

    def printer(mode, label):
        def update(done, total):
            calls.append(done)
            os.kill(os.getpid(), sig)

        return update, lambda: None

    monkeypatch.setattr(sainr.cli.reduce, "progress_printer", printer)
    code, err = run_cli(["reduce", str(src), str(tmp_path / "out.nrrd"), *opts], capfd)
    assert code == 130 and err == ["sainr: cancelled; no partial output was written"]
    assert len(calls) == 1  # stopped after the first chunk
    assert _tree(tmp_path) == before
    assert signal.getsignal(signal.SIGTERM) is not sainr.cli._interrupt  # handler restored


def test_api_cancel_stops_after_the_first_chunk(tmp_path):
    image = _image(_array((4, 40, 40)))
    model = SAINR(TINY).eval()
    done: list[int] = []
    with pytest.raises(Cancelled, match="nothing was written"):
        reduce_spacing(
            image,
            Target(factor=2),
            ReduceOptions(memory_mb=1),
            model=model,
            progress=lambda d, t: done.append(d),
            cancel=lambda: bool(done),
        )
    assert len(done) == 1 and done[0] < 40 * 40 * 7


def test_internal_error_exits_1_with_a_report(tmp_path, monkeypatch, capfd):
    src = _volume(tmp_path)
    opts = _with_weights(tmp_path, FACTOR2)

    def bug(volume):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr("sainr.api.robust_scale", bug)
    reports = tmp_path / "reports"
    reports.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(reports))
    before = _tree(tmp_path)
    code, err = run_cli(
        ["reduce", str(src), str(tmp_path / "out.nrrd"), *opts, "--progress", "none"], capfd
    )
    assert code == 1 and len(err) == 1
    match = re.fullmatch(
        r"sainr: internal error \(RuntimeError: boom second line\); report: (\S+)", err[0]
    )
    assert match, err
    report = Path(match.group(1))
    assert (
        report.parent == reports
        and "Traceback" in report.read_text(encoding="utf-8")
        and "boom" in report.read_text(encoding="utf-8")
    )
    report.unlink()
    assert _tree(tmp_path) == before


# --- devices ---------------------------------------------------------------------------------


def test_auto_device_falls_back_to_cpu_but_explicit_cuda_errors(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceError, match="use --device cpu"):
        choose_device("cuda")
    with pytest.raises(DeviceError, match="unknown device 'tpu'"):
        choose_device("tpu")


def _oom_until(succeed_on: Callable[[torch.device, float], bool], calls: list):
    """A stand-in for super_resolve that runs out of memory unless ``succeed_on``."""

    def fake(model, volume, grid, device, budget_mb, **kwargs):
        calls.append((device.type, budget_mb))
        if not succeed_on(device, budget_mb):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return np.zeros(1), np.zeros(1)

    return fake


def test_gpu_out_of_memory_retries_smaller_then_on_the_cpu(monkeypatch):
    calls, notes = [], []
    monkeypatch.setattr(
        "sainr.runtime.inference.super_resolve", _oom_until(lambda d, b: d.type == "cpu", calls)
    )
    super_resolve_with_fallback(None, None, None, torch.device("cuda"), 2048, notice=notes.append)
    assert calls == [("cuda", 2048), ("cuda", 512), ("cuda", 128), ("cuda", 32), ("cpu", 32)]
    assert "retrying with a 512 MB budget" in notes[0] and "continuing on the CPU" in notes[-1]

    calls.clear()
    monkeypatch.setattr(
        "sainr.runtime.inference.super_resolve", _oom_until(lambda d, b: b <= 128, calls)
    )
    super_resolve_with_fallback(None, None, None, torch.device("cuda"), 2048)
    assert calls == [("cuda", 2048), ("cuda", 512), ("cuda", 128)]  # stays on the GPU


def test_cpu_out_of_memory_gives_up_after_the_smaller_retries(monkeypatch):
    calls = []
    monkeypatch.setattr(
        "sainr.runtime.inference.super_resolve", _oom_until(lambda d, b: False, calls)
    )
    with pytest.raises(ResourceError, match="not enough memory even with a 32 MB"):
        super_resolve_with_fallback(None, None, None, torch.device("cpu"), 2048)
    assert calls == [("cpu", 2048), ("cpu", 512), ("cpu", 128), ("cpu", 32)]


@pytest.mark.parametrize("origin", [(float("nan"), 0.0, 0.0), (0.0, float("inf"), 0.0)])
def test_api_refuses_a_non_finite_origin(origin):
    image = _image(_array())
    image.SetOrigin(origin)
    with pytest.raises(InputImageError, match="the origin .* is not finite"):
        reduce_spacing(image, Target(factor=2), model=SAINR(TINY).eval())


def test_header_checks_read_through_gzip(tmp_path):
    """A compressed NIfTI's header is checked too (ITK would read pixdim 0 as 1 mm)."""
    path = _volume(tmp_path, "in.nii.gz")
    raw = bytearray(gzip.decompress(path.read_bytes()))
    struct.pack_into("<f", raw, 76 + 12, 0.0)
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(InputImageError, match="spacing must be positive"):
        read_volume(path)
