"""Fuzzing the readers (hypothesis, bounded): whatever the bytes, ``read_volume`` +
``check_image`` either return a valid scalar 3D volume or raise a :class:`SainrError` with a
message; never another exception, a crash, a hang or a huge allocation. Headers are generated
field by field (NRRD, NIfTI-1, MetaImage: every field also takes nonsense values: zero,
negative, NaN and huge sizes and spacings, unknown types and encodings, sheared or degenerate
orientations, short or missing data), and valid files are corrupted byte by byte. Each example
is a few hundred bytes; absurd declared sizes must be refused from the header alone.
"""

from __future__ import annotations

import gzip
import math
import re
import struct
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sainr.cli import main
from sainr.errors import SainrError
from sainr.io.read import read_volume
from sainr.validation import SUPPORTED_TYPES, check_image

FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,  # the same examples on every CI run
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

#: Odd values a header field may take instead of a sane one.
ODD_FLOATS = st.sampled_from([0.0, -1.0, -3.0, 1e-30, 1e30, math.nan, math.inf, -math.inf])
ODD_SIZES = st.sampled_from([0, 1, -1, 30000, 100000])  # absurd sizes must be refused unread
SANE_FLOATS = st.floats(0.1, 5.0)
SANE_SIZES = st.integers(2, 6)


class Header:
    """Draws header fields so that each file breaks one field (or none, or all at random):
    every oddity is tried on its own, and many files stay valid enough to reach the deeper
    checks and the pixel read."""

    def __init__(self, draw, fields: list[str]) -> None:
        self.draw = draw
        self.broken = draw(st.sampled_from([None, None, "all", *fields]))

    def __call__(self, name: str, sane: st.SearchStrategy, odd: st.SearchStrategy):
        if self.broken == "all":
            return self.draw(st.one_of(sane, odd))
        return self.draw(odd if self.broken == name else sane)

    def payload(self, n_bytes: int, compress: bool = False) -> bytes:
        """Data of the declared size, or (field 'data') random bytes of any length."""
        if 0 < n_bytes <= 20000 and self("data", st.just(True), st.just(False)):
            data = np.random.default_rng(n_bytes).integers(0, 255, n_bytes, dtype=np.uint8)
            return gzip.compress(data.tobytes()) if compress else data.tobytes()
        return self.draw(st.binary(max_size=300))

    def axes(self, n: int) -> np.ndarray:
        """(n, 3) axis vectors: a flipped, permuted, scaled orthogonal grid, or (field 'axes')
        any vectors: sheared, zero, NaN."""
        if n == 3 and self("axes", st.just(True), st.just(False)):
            perm = self.draw(st.permutations(range(3)))
            signs = [self.draw(st.sampled_from([-1.0, 1.0])) for _ in range(3)]
            scales = [self("spacing", SANE_FLOATS, ODD_FLOATS) for _ in range(3)]
            with np.errstate(invalid="ignore"):  # inf * 0 off the diagonal: NaN, as intended
                return np.eye(3)[list(perm)] * np.array(signs)[:, None] * np.array(scales)[:, None]
        return np.array(
            [[self.draw(st.one_of(SANE_FLOATS, ODD_FLOATS)) for _ in range(3)] for _ in range(n)]
        )


def assert_valid_or_refused(path: Path) -> None:
    """The reader's contract: a valid scalar 3D volume, or a SainrError with a message."""
    try:
        image = read_volume(path)
        check_image(image)
    except SainrError as exc:
        assert str(exc).strip()
        return
    assert image.GetDimension() == 3 and image.GetNumberOfComponentsPerPixel() == 1
    assert image.GetPixelID() in SUPPORTED_TYPES and min(image.GetSize()) >= 2
    assert all(math.isfinite(s) and s > 0 for s in image.GetSpacing())
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-4)


# --- NRRD ------------------------------------------------------------------------------------

NRRD_TYPES = {"uchar": 1, "short": 2, "ushort": 2, "int": 4, "float": 4, "double": 8}
NRRD_FIELDS = ["dimension", "sizes", "type", "encoding", "spacing", "axes", "origin", "data"]


@st.composite
def nrrd_files(draw) -> bytes:
    h = Header(draw, NRRD_FIELDS)
    dimension = h("dimension", st.just(3), st.sampled_from([2, 4, 0, 1]))
    sizes = [h("sizes", SANE_SIZES, ODD_SIZES) for _ in range(max(dimension, 1))]
    kind = h("type", st.sampled_from(list(NRRD_TYPES)), st.sampled_from(["banana", "block"]))
    encoding = h(
        "encoding", st.sampled_from(["raw", "gzip"]), st.sampled_from(["ascii", "hex", "zip?"])
    )
    lines = [
        "NRRD0004",
        f"type: {kind}",
        f"dimension: {dimension}",
        f"sizes: {' '.join(map(str, sizes))}",
        f"encoding: {encoding}",
        f"endian: {draw(st.sampled_from(['little', 'big']))}",
    ]
    if draw(st.booleans()):
        spacings = (h("spacing", SANE_FLOATS, ODD_FLOATS) for _ in range(dimension))
        lines.append(f"spacings: {' '.join(map(str, spacings))}")
    else:
        vectors = " ".join("({},{},{})".format(*v) for v in h.axes(dimension))
        origin = ",".join(str(h("origin", st.floats(-99, 99), ODD_FLOATS)) for _ in range(3))
        lines += [
            "space: left-posterior-superior",
            f"space directions: {vectors}",
            f"space origin: ({origin})",
        ]
    header = ("\n".join(lines) + "\n\n").encode()
    n_bytes = math.prod(max(s, 0) for s in sizes) * NRRD_TYPES.get(kind, 1)
    return header + h.payload(n_bytes, compress=encoding == "gzip")


@FUZZ
@given(content=nrrd_files())
def test_nrrd_headers(content, tmp_path_factory):
    path = tmp_path_factory.mktemp("nrrd") / "fuzz.nrrd"
    path.write_bytes(content)
    assert_valid_or_refused(path)


# --- NIfTI-1 ---------------------------------------------------------------------------------

#: datatype -> bitpix: the scalar types, then complex, RGB, binary and unknown codes.
NIFTI_TYPES = {
    2: 8,
    4: 16,
    8: 32,
    16: 32,
    64: 64,
    256: 8,
    512: 16,
    768: 32,
    32: 64,
    128: 24,
    1: 1,
    0: 0,
    9999: 16,
}
NIFTI_FIELDS = [
    "sizeof_hdr",
    "ndim",
    "dims",
    "datatype",
    "spacing",
    "pixdim_sign",
    "vox_offset",
    "scl_slope",
    "codes",
    "quatern",
    "axes",
    "origin",
    "magic",
    "data",
]


@st.composite
def nifti_files(draw) -> bytes:
    h = Header(draw, NIFTI_FIELDS)
    hdr = bytearray(352)
    struct.pack_into("<i", hdr, 0, h("sizeof_hdr", st.just(348), st.sampled_from([540, 0, -348])))
    ndim = h("ndim", st.just(3), st.sampled_from([2, 4, 5, 0, -1, 8]))
    dims = [
        h("dims", SANE_SIZES, ODD_SIZES) if a < 3 else h("dims", st.just(1), ODD_SIZES)
        for a in range(7)
    ]
    struct.pack_into("<8h", hdr, 40, ndim, *(min(d, 32767) for d in dims))
    datatype = h(
        "datatype",
        st.sampled_from([2, 4, 8, 16, 64, 256, 512, 768]),
        st.sampled_from([32, 128, 1, 0, 9999]),
    )
    struct.pack_into("<hh", hdr, 70, datatype, NIFTI_TYPES[datatype])
    axes = h.axes(3)  # rows: i, j, k axis vectors (RAS), scaled by the spacing
    pixdim = np.linalg.norm(axes, axis=1) * h("pixdim_sign", st.just(1.0), st.just(-1.0))
    struct.pack_into("<8f", hdr, 76, 1.0, *pixdim, 1.0, 1.0, 1.0, 1.0)
    vox_offset = h("vox_offset", st.just(352.0), st.sampled_from([0.0, -5.0, math.nan, 1e9]))
    struct.pack_into("<f", hdr, 108, vox_offset)
    struct.pack_into("<ff", hdr, 112, h("scl_slope", st.just(1.0), ODD_FLOATS), 0.0)
    codes = (h("codes", st.integers(0, 2), st.integers(-1, 9)) for _ in range(2))
    struct.pack_into("<hh", hdr, 252, *codes)  # qform_code, sform_code
    quatern = (h("quatern", st.just(0.0), st.one_of(SANE_FLOATS, ODD_FLOATS)) for _ in range(3))
    origin = [h("origin", st.floats(-99, 99), ODD_FLOATS) for _ in range(3)]
    struct.pack_into("<6f", hdr, 256, *quatern, *origin)
    struct.pack_into("<12f", hdr, 280, *np.hstack([axes.T, np.array(origin)[:, None]]).ravel())
    hdr[344:348] = h("magic", st.sampled_from([b"n+1\0", b"ni1\0"]), st.just(b"xyz\0"))
    n_bytes = math.prod(max(d, 0) for d in dims[: max(ndim, 0)]) * NIFTI_TYPES[datatype] // 8
    return bytes(hdr) + h.payload(n_bytes)


@FUZZ
@given(content=nifti_files(), compress=st.booleans())
def test_nifti_headers(content, compress, tmp_path_factory):
    name = "fuzz.nii.gz" if compress else "fuzz.nii"
    path = tmp_path_factory.mktemp("nifti") / name
    path.write_bytes(gzip.compress(content) if compress else content)
    assert_valid_or_refused(path)


# --- MetaImage -------------------------------------------------------------------------------


META_TYPES = {"MET_SHORT": 2, "MET_FLOAT": 4, "MET_UCHAR": 1}


@st.composite
def metaimage_files(draw) -> bytes:
    h = Header(draw, ["ndims", "sizes", "type", "spacing", "spacing_sign", "axes", "data"])
    ndims = h("ndims", st.just(3), st.sampled_from([2, 4, 0]))
    sizes = [h("sizes", SANE_SIZES, ODD_SIZES) for _ in range(3)]
    kind = h("type", st.sampled_from(list(META_TYPES)), st.just("MET_BANANA"))
    axes = h.axes(3)
    spacing = np.linalg.norm(axes, axis=1) * h("spacing_sign", st.just(1.0), st.just(-1.0))
    with np.errstate(invalid="ignore", divide="ignore"):  # zero or NaN axes: NaN, as intended
        matrix = (axes / np.linalg.norm(axes, axis=1)[:, None]).ravel()
    header = (
        f"ObjectType = Image\nNDims = {ndims}\nDimSize = {' '.join(map(str, sizes))}\n"
        f"ElementType = {kind}\nElementSpacing = {' '.join(map(str, spacing))}\n"
        f"TransformMatrix = {' '.join(map(str, matrix))}\nElementDataFile = LOCAL\n"
    )
    return header.encode() + h.payload(
        math.prod(max(n, 0) for n in sizes) * META_TYPES.get(kind, 1)
    )


@FUZZ
@given(content=metaimage_files())
def test_metaimage_headers(content, tmp_path_factory):
    path = tmp_path_factory.mktemp("mha") / "fuzz.mha"
    path.write_bytes(content)
    assert_valid_or_refused(path)


# --- byte-level corruption of valid files ----------------------------------------------------


def _valid_file(folder: Path, suffix: str) -> bytes:
    rng = np.random.default_rng(2)
    image = sitk.GetImageFromArray(rng.normal(100, 20, (4, 6, 6)).astype(np.int16))
    image.SetSpacing((0.5, 0.6, 2.0))
    image.SetDirection((0, 0, -1, 1, 0, 0, 0, -1, 0))
    path = folder / f"valid{suffix}"
    sitk.WriteImage(image, str(path))
    return path.read_bytes()


@FUZZ
@given(
    suffix=st.sampled_from([".nrrd", ".nii", ".nii.gz", ".mha"]),
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=8),
    keep=st.one_of(st.none(), st.floats(0, 1)),
)
def test_corrupted_valid_files(suffix, flips, keep, tmp_path_factory):
    folder = tmp_path_factory.mktemp("corrupt")
    raw = bytearray(_valid_file(folder, suffix))
    for where, value in flips:
        raw[int(where * len(raw))] = value
    if keep is not None:
        raw = raw[: int(keep * len(raw))]
    path = folder / f"fuzz{suffix}"
    path.write_bytes(bytes(raw))
    assert_valid_or_refused(path)


# --- the CLI on fuzzed files -----------------------------------------------------------------


@settings(FUZZ, max_examples=8)
@given(content=nifti_files())
def test_cli_on_fuzzed_files_exits_cleanly(content, tmp_path_factory, capfd):
    """Exit 2 with one ``sainr: error:`` line and nothing written: the input is refused, or, if
    it happens to be valid, the (missing) weights are; never an internal error (exit 1)."""
    folder = tmp_path_factory.mktemp("cli")
    src = folder / "fuzz.nii"
    src.write_bytes(content)
    out = folder / "out.nrrd"
    code = main(
        [
            "reduce",
            str(src),
            str(out),
            "--factor",
            "2",
            "--weights",
            "missing.pt",
            "--progress",
            "none",
        ]
    )
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("sainr: error: "), err
    assert src.read_bytes() == content and not out.exists()
    assert not [p for p in folder.iterdir() if re.match(r"\.sainr-", p.name)]
