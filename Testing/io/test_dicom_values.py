"""DICOM values and geometry checked per slice and per frame (issue 26).

Every DICOM file is built here from the real knee crop (Testing/Data): single-frame series as
in test_dicom_series.py, and enhanced (multi-frame) MR files written by GDCM with per-frame
positions; then one tag is edited (:mod:`dicom_edit`) as a scanner or an export tool could
have written it. Each test asserts what the user sees: the exact geometry and values, or one
clear refusal (the CLI: exit 2, one line, nothing written). Also here: values beyond float32,
a checkpoint declaring an absurd module count and a SliceThickness the CLI cannot use.
"""

from __future__ import annotations

import hashlib
import re
import struct
import time
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from dicom_edit import load, save, value
from dicom_write import write_series
from hypothesis import given, settings
from hypothesis import strategies as st
from test_dicom_series import assert_same_grid
from test_reader_fuzz import FUZZ, assert_valid_or_refused

from conftest import KNEE_QDESS, TINY
from sainr import reduce_spacing
from sainr.cli import main
from sainr.errors import InputImageError, WeightsError
from sainr.io.dicom_file import parse
from sainr.io.read import read_volume
from sainr.model import SAINR
from sainr.runtime.weights import load_model, save_checkpoint
from sainr.validation import check_image

SLICES = 8
_PER_FRAME, _POSITION_SEQ, _POSITION = (0x5200, 0x9230), (0x0020, 0x9113), (0x0020, 0x0032)
_ROWS, _COLUMNS, _FRAMES = (0x0028, 0x0010), (0x0028, 0x0011), (0x0028, 0x0008)
_PIXEL_SPACING, _INTERCEPT, _SLOPE = (0x0028, 0x0030), (0x0028, 0x1052), (0x0028, 0x1053)
_VALUE_SEQ, _ICON, _PIXEL_DATA = (0x0028, 0x9145), (0x0088, 0x0200), (0x7FE0, 0x0010)
#: An edit of a DICOM file: (data set, pixel bytes) -> the new pixel bytes (the data set is
#: changed in place).
Edit = Callable[[dict, bytes], bytes]


@pytest.fixture(scope="module")
def knee() -> sitk.Image:
    """16 x 16 x 8 voxels of the real knee crop (0.3125 x 0.3125 x 1.5 mm, oblique, int16)."""
    return sitk.ReadImage(str(KNEE_QDESS))[24:40, 24:40, 10 : 10 + SLICES]


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    save_checkpoint(SAINR(TINY), path)
    return path


def write_enhanced(path: Path, volume: sitk.Image, compressor: str | None = None) -> Path:
    """One enhanced MR file (GDCM writes a per-frame PlanePositionSequence from the volume's
    geometry, a shared orientation and pixel measures), its pixels compressed losslessly
    with ``compressor`` when given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.Image(volume)
    for key, text in {
        "0008|0016": "1.2.840.10008.5.1.4.1.1.4.1",
        "0008|0060": "MR",
        "0020|000d": "1.2.826.0.1.3680043.2.1125.0",
        "0020|000e": "1.2.826.0.1.3680043.2.1125.3",
    }.items():
        image.SetMetaData(key, text)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(path))
    if compressor:
        writer.SetUseCompression(True)
        writer.SetCompressor(compressor)
    writer.Execute(image)
    return path


def _ds(values) -> bytes:
    return value("\\".join(f"{v:.6f}" for v in values))


def _edit(path: Path, edit: Edit) -> Path:
    """Rewrite ``path`` with ``edit(dataset, pixels)`` applied (it returns the new pixels)."""
    dataset, pixels = load(path)
    return save(path, dataset, edit(dataset, pixels))


def _set(tags: dict) -> Edit:
    """Set the top-level elements ``tags`` (tag -> raw value bytes)."""

    def edit(dataset, pixels):
        dataset.update(tags)
        return pixels

    return edit


def _frame_position(dataset, k: int) -> np.ndarray:
    """The PlanePosition (mm) of frame ``k`` of an enhanced file."""
    text = dataset[_PER_FRAME][k][_POSITION_SEQ][0][_POSITION].decode()
    return np.array([float(v) for v in text.split("\\")])


def _shift_frames(shift: Callable[[int], np.ndarray]) -> Edit:
    """Move frame k's PlanePosition by ``shift(k)`` mm."""

    def edit(dataset, pixels):
        for k, item in enumerate(dataset[_PER_FRAME]):
            position = _frame_position(dataset, k) + shift(k)
            item[_POSITION_SEQ][0][_POSITION] = _ds(position)
        return pixels

    return edit


def _drop_frame(k: int) -> Edit:
    """Remove frame ``k``: its functional groups and its pixels."""

    def edit(dataset, pixels):
        frames = len(dataset[_PER_FRAME])
        del dataset[_PER_FRAME][k]
        dataset[_FRAMES] = value(str(frames - 1))
        size = len(pixels) // frames
        return pixels[: k * size] + pixels[(k + 1) * size :]

    return edit


def _tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _refused(capfd, src: Path, folder: Path, weights: Path, pattern: str, *options: str) -> str:
    """The CLI refuses ``src`` with one line matching ``pattern`` and writes nothing into
    ``folder``; returns the line."""
    before = _tree(folder)
    code = _reduce(src, folder / "out.nrrd", weights, *options)
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("sainr: error: "), err
    assert re.search(pattern, err[0]), err[0]
    assert _tree(folder) == before
    return err[0]


def _reduce(src: Path, out: Path, weights: Path, *options: str) -> int:
    return main(
        ["reduce", str(src), str(out), "--factor", "2", "--weights", str(weights)]
        + ["--progress", "none", *options]
    )


# --- enhanced (multi-frame) files, given as a file or in a folder ----------------------------


@pytest.mark.parametrize("compressor", [None, "JPEG"])
def test_an_enhanced_file_reads_exactly_as_a_file_and_in_a_folder(tmp_path, knee, compressor):
    """A regular enhanced MR file reads with the knee's exact grid and voxels, as ITK reads
    it, whether it is given as a file or as a folder holding only it (a regression: the folder
    was refused for lacking a top-level ImagePositionPatient); compressed pixel data (lossless
    JPEG) is decoded by ITK."""
    path = write_enhanced(tmp_path / "one" / "enh.dcm", knee, compressor)
    for src in (path, path.parent):
        image = read_volume(src)
        assert_same_grid(image, knee)
        assert_same_grid(image, sitk.ReadImage(str(path)))
        assert_same_grid(read_volume(src), image)  # a second read: identical


def test_explicit_vr_files_read_like_implicit_ones(tmp_path, knee):
    """Most scanners write explicit VR: the same enhanced file (with an icon, whose own pixel
    data is not the image's) and series, re-encoded, read with the same grid and values (ITK
    agrees)."""
    enhanced = write_enhanced(tmp_path / "enh.dcm", knee)
    dataset, pixels = load(enhanced)
    dataset[_ICON] = [{_ROWS: struct.pack("<H", 2), _COLUMNS: struct.pack("<H", 2)}]
    dataset[_ICON][0][_PIXEL_DATA] = bytes(8)
    save(enhanced, dataset, pixels, explicit=True)
    assert parse(enhanced).encoding.explicit
    assert_same_grid(read_volume(enhanced), knee)
    assert_same_grid(sitk.ReadImage(str(enhanced)), knee)
    folder = _series(tmp_path / "dcm", knee, {_SLOPE: value("2")})
    for path in folder.iterdir():
        save(path, *load(path), explicit=True)
    truth = sitk.GetArrayFromImage(knee).astype(np.int64) * 2
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_volume(folder)), truth)


BROKEN_ENHANCED = {
    "tilt (1 mm per frame)": (
        lambda volume: _shift_frames(
            lambda k: k * np.array(volume.GetDirection()).reshape(3, 3)[:, 1]
        ),
        r"shifted in-plane by 1 mm per slice .*last slice enh.dcm frame 8 is 7 mm off",
    ),
    "missing frame": (
        lambda volume: _drop_frame(3),
        r"misses 1 slice: the gap between enh.dcm frame 3 and enh.dcm frame 4 is 3 mm, the "
        r"slice spacing 1.5 mm; export the complete series again",
    ),
}


@pytest.mark.parametrize("form", ["file", "folder"])
@pytest.mark.parametrize("name", BROKEN_ENHANCED)
def test_a_broken_enhanced_file_is_refused(tmp_path, knee, tiny_weights, capfd, name, form):
    """The frames of an enhanced file go through the series checks (given as a file they
    were skipped: the tilt put slices 9 mm off; a missing frame looked "nearly isotropic", and
    with --axis 2 slices were 19 mm off)."""
    make, pattern = BROKEN_ENHANCED[name]
    path = _edit(write_enhanced(tmp_path / "dcm" / "enh.dcm", knee), make(knee))
    src = path if form == "file" else path.parent
    with pytest.raises(InputImageError, match=pattern):
        read_volume(src)
    _refused(capfd, src, tmp_path, tiny_weights, pattern)
    _refused(capfd, src, tmp_path, tiny_weights, pattern, "--axis", "2")


def test_per_frame_rescale_of_an_enhanced_file_is_applied_frame_by_frame(tmp_path, knee):
    """Each frame's own PixelValueTransformation (slope k + 1, intercept -100 k)."""

    def edit(dataset, pixels):
        for k, item in enumerate(dataset[_PER_FRAME]):
            item[_VALUE_SEQ] = [{_INTERCEPT: value(str(-100 * k)), _SLOPE: value(str(k + 1))}]
        return pixels

    image = read_volume(_edit(write_enhanced(tmp_path / "enh.dcm", knee), edit))
    stored = sitk.GetArrayFromImage(knee).astype(np.int64)
    k = np.arange(SLICES)[:, None, None]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), stored * (k + 1) - 100 * k)


# --- per-slice values and sizes of a single-frame series -------------------------------------


def _series(folder: Path, knee: sitk.Image, tags: dict, files=range(SLICES)) -> Path:
    """The knee as a single-frame series, with ``tags`` set in the files ``files``."""
    write_series(folder, knee)
    for k in files:
        _edit(folder / f"IM{k:04d}.dcm", _set(tags))
    return folder


def test_rectangular_pixels_keep_their_row_and_column_spacing(tmp_path, knee):
    """PixelSpacing is (row spacing, column spacing): the column spacing is the volume's first
    (i) spacing."""
    volume = sitk.Image(knee)
    volume.SetSpacing((0.3, 0.4, 1.5))
    assert_same_grid(read_volume(write_series(tmp_path / "dcm", volume)), volume)
    assert_same_grid(read_volume(write_enhanced(tmp_path / "enh.dcm", volume)), volume)


def test_one_slice_with_another_pixel_spacing_is_refused(tmp_path, knee, tiny_weights, capfd):
    """ITK would place that slice's pixels on the others' grid, up to mm off."""
    folder = _series(tmp_path / "dcm", knee, {_PIXEL_SPACING: value("0.4\\0.4")}, [3])
    pattern = (
        r"mixes pixel sizes: 1 of its 8 images \(IM0003.dcm\) has PixelSpacing 0.4 x 0.4 mm, "
        r"the others 0.3125 x 0.3125 mm; export each kind as its own series, or resample"
    )
    with pytest.raises(InputImageError, match=pattern):
        read_volume(folder)
    _refused(capfd, folder, tmp_path, tiny_weights, pattern)


def test_rows_larger_than_the_pixel_data_are_refused_every_time(
    tmp_path, knee, tiny_weights, capfd
):
    """Reading past the pixel data gave uninitialised memory: two runs differed."""
    folder = _series(tmp_path / "dcm", knee, {_ROWS: struct.pack("<H", 32)}, [2])
    pattern = (
        r"DICOM file IM0002.dcm: its header declares 32 x 16 pixels x 1 frame\(s\), 1024 "
        r"bytes, but its pixel data holds 512: the Rows/Columns are wrong or the file is "
        r"truncated; export the series again"
    )
    assert _refused(capfd, folder, tmp_path, tiny_weights, pattern) == _refused(
        capfd, folder, tmp_path, tiny_weights, pattern
    )


def test_rows_smaller_than_the_pixel_data_are_refused(tmp_path, knee):
    """Rows 8 in every file of 16 x 16 pixels would read half of each image as the slice."""
    folder = _series(tmp_path / "dcm", knee, {_ROWS: struct.pack("<H", 8)})
    with pytest.raises(
        InputImageError,
        match=r"DICOM file IM0000.dcm: its header declares 8 x 16 pixels x 1 frame\(s\), 256 "
        r"bytes, but its pixel data holds 512: the Rows/Columns are wrong",
    ):
        read_volume(folder)


def test_a_huge_declared_matrix_is_refused_before_reading(tmp_path, knee, tiny_weights, capfd):
    """Rows/Columns 16384 in a few KB of files: refused from the headers, nothing allocated."""
    huge = {_ROWS: struct.pack("<H", 16384), _COLUMNS: struct.pack("<H", 16384)}
    folder = _series(tmp_path / "dcm", knee, huge)
    assert sum(p.stat().st_size for p in folder.iterdir()) < 64_000
    pattern = (
        r"the DICOM headers declare 2.15 billion voxels \(Rows x Columns 16384 x 16384, 8 "
        r"frames; the limit is 1.07 billion\): the headers are corrupt, or crop the series"
    )
    tracemalloc.start()
    with pytest.raises(InputImageError, match=pattern):
        read_volume(folder)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 * 2**20
    _refused(capfd, folder, tmp_path, tiny_weights, pattern)


def test_differing_rescale_is_applied_per_slice_without_wrapping(
    tmp_path, knee, tiny_weights, capfd
):
    """RescaleSlope 1 on half the slices and 20 on the rest: every value exact in a wide
    enough integer type (int16 wrapped hundreds of voxels negative), the same on two runs."""
    folder = _series(tmp_path / "dcm", knee, {_SLOPE: value("20")}, range(4, SLICES))
    stored = sitk.GetArrayFromImage(knee).astype(np.int64)
    truth = stored * np.where(np.arange(SLICES) >= 4, 20, 1)[:, None, None]
    image = read_volume(folder)
    assert image.GetPixelID() == sitk.sitkInt32
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), truth)
    outputs = []
    for run in range(2):
        out = tmp_path / f"out{run}.nrrd"
        assert _reduce(folder, out, tiny_weights) == 0, capfd.readouterr().err
        outputs.append(sitk.GetArrayFromImage(sitk.ReadImage(str(out))))
    assert outputs[0].dtype == np.int32 and outputs[0].min() >= 0  # the truth is >= 0
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_a_fractional_rescale_slope_is_not_truncated(tmp_path, knee, tiny_weights, capfd):
    """RescaleSlope 0.01: float32 values within a rounding of the truth (not integers)."""
    folder = _series(tmp_path / "dcm", knee, {_SLOPE: value("0.01"), _INTERCEPT: value("0.5")})
    truth = sitk.GetArrayFromImage(knee) * 0.01 + 0.5
    image = read_volume(folder)
    assert image.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(sitk.GetArrayFromImage(image), truth, rtol=1e-6)
    out = tmp_path / "out.nrrd"
    assert _reduce(folder, out, tiny_weights) == 0, capfd.readouterr().err
    assert sitk.ReadImage(str(out)).GetPixelID() == sitk.sitkFloat32


@pytest.mark.parametrize("slope", ["0", "nan", "abc", "1\\2"])
def test_an_invalid_rescale_slope_is_refused(tmp_path, knee, slope):
    """Values of an unknown scale are not guessed (ITK would take a slope of 1)."""
    folder = _series(tmp_path / "dcm", knee, {_SLOPE: value(slope)}, [5])
    with pytest.raises(
        InputImageError,
        match=r"DICOM image IM0005.dcm has an invalid RescaleSlope/RescaleIntercept \("
        + re.escape(repr(slope))
        + r"\), so its values are unknown; export the series again",
    ):
        read_volume(folder)


def test_one_dicom_image_given_as_a_file_is_one_slice(tmp_path, knee, tiny_weights, capfd):
    """A single-frame file goes through the same reader: a one-slice volume, refused."""
    path = write_series(tmp_path / "dcm", knee) / "IM0000.dcm"
    image = read_volume(path)
    assert_same_grid(image, knee[:, :, :1])
    with pytest.raises(InputImageError, match="single slice"):
        check_image(image)
    _refused(capfd, path, tmp_path, tiny_weights, r"the input is a single slice")


@settings(FUZZ, max_examples=60)
@given(
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=8),
    keep=st.one_of(st.none(), st.floats(0, 1)),
)
def test_corrupted_dicom_files_are_read_or_refused(flips, keep, knee, tmp_path_factory):
    """Byte flips and truncation of an enhanced file: a valid volume or a SainrError."""
    folder = tmp_path_factory.mktemp("corrupt")
    raw = bytearray(write_enhanced(folder / "valid.dcm", knee).read_bytes())
    for where, byte in flips:
        raw[int(where * len(raw))] = byte
    if keep is not None:
        raw = raw[: int(keep * len(raw))]
    path = folder / "fuzz.dcm"
    path.write_bytes(bytes(raw))
    assert_valid_or_refused(path)


# --- values, weights and options ----------------------------------------------------------


def test_float64_values_near_1e300_are_refused_clearly(tmp_path, knee, tiny_weights, capfd):
    """Beyond float32 the network would see inf ("constant (every voxel = inf)", warnings)."""
    huge = sitk.Cast(knee, sitk.sitkFloat64) * 1e297
    path = tmp_path / "huge.nii.gz"
    sitk.WriteImage(huge, str(path))
    pattern = (
        r"the volume's values reach \d\.\d+e\+300, beyond the range SA-INR computes in "
        r"\(float32, up to 3.4e\+38\); divide the intensities by a power of ten first"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputImageError, match=pattern):
            reduce_spacing(read_volume(path), 0.75, weights=str(tiny_weights))
    _refused(capfd, path, tmp_path, tiny_weights, pattern)


def test_a_checkpoint_declaring_300000_blocks_is_refused_quickly(tmp_path):
    """Its module count is checked against the tensors it holds before a model is built
    (building it, even without memory, took minutes and gigabytes)."""
    torch.manual_seed(0)
    ckpt = {
        "format": "sainr-checkpoint-v1",
        "config": {**TINY.to_dict(), "blocks": 300_000},
        "state_dict": SAINR(TINY).state_dict(),
        "meta": {},
    }
    path = tmp_path / "blocks.pt"
    torch.save(ckpt, path)
    start = time.perf_counter()
    with pytest.raises(
        WeightsError,
        match=r"blocks.pt declares a model of 1200\d\d\d weight tensors \(blocks=300000, "
        r"decoder_layers=\d\) but holds only 28: it is corrupt or of another architecture",
    ):
        load_model(path)
    assert time.perf_counter() - start < 5


def test_a_slice_thickness_far_above_the_spacing_names_the_option(
    tmp_path, knee, tiny_weights, capfd
):
    """A DICOM SliceThickness of 10x the spacing is refused with the option that overrides it."""
    folder = write_series(tmp_path / "dcm", knee, thickness="15")
    _refused(
        capfd,
        folder,
        tmp_path,
        tiny_weights,
        r"a slice thickness of 15 mm is 10.0x the slice spacing 1.5 mm \(limit 3x\); give the "
        r"acquired slice thickness in mm with --slice-thickness MM",
    )
    assert _reduce(folder, tmp_path / "out.nrrd", tiny_weights, "--slice-thickness", "1.5") == 0
