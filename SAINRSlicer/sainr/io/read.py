"""Reading volumes with SimpleITK: NIfTI, NRRD, MHA and DICOM series folders.

Geometry (origin, spacing, direction) round-trips exactly. Before the pixels are read, the
file's own header is checked for what ITK would silently "repair" (a zero, negative or
non-finite spacing becomes 1 mm; a sheared NIfTI sform is replaced by the qform) and for sizes
no scan has, so a corrupt header never turns into a wrong geometry or a huge allocation.

Inputs are only ever read; :mod:`sainr.io.outputs` writes volumes and :mod:`sainr.io.files`
holds the temp-file helpers every writer shares.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputImageError
from ..geometry import check_direction, check_spacing
from ..validation import MAX_INPUT_VOXELS
from . import dicom, dicom_file

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
#: Bytes of a text header (NRRD, MetaImage) inspected before ITK reads the file.
_TEXT_HEADER_BYTES = 65536


def volume_suffix(path: str | os.PathLike) -> str | None:
    """The volume file extension of ``path`` (e.g. ``.nii.gz``), or None."""
    name = str(path).lower()
    return next((s for s in VOLUME_SUFFIXES if name.endswith(s)), None)


def is_dicom_folder(path: Path) -> bool:
    return path.is_dir() and bool(dicom.series_ids(path))


def dicom_slice_thickness(path: str | os.PathLike, series: str | None = None) -> float | None:
    """SliceThickness (0018,0050) of the DICOM series folder or DICOM file ``path``
    (``series`` picks one of several, as in :func:`read_volume`, which raises the same
    InputImageError when the choice is missing or unknown); None for another volume file, a
    folder without DICOM, or when the tag is absent, invalid or not the same in every frame."""
    path = Path(path)
    if is_dicom_folder(path):
        return dicom.slice_thickness(dicom.choose_series(path, series))
    return dicom.slice_thickness([path]) if is_dicom_file(path) else None


def is_dicom_file(path: Path) -> bool:
    """A DICOM file: the 'DICM' preamble, or (without one) a file ITK reads as DICOM."""
    if dicom_file.is_dicom(path):
        return True
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return False
    return reader.GetImageIO() == "GDCMImageIO"


def read_volume(path: str | os.PathLike, series: str | None = None) -> sitk.Image:
    """Read a volume file, a DICOM file or a DICOM series folder (``series``: the
    SeriesInstanceUID when the folder holds several); raise InputImageError else. DICOM is
    read only when its slices or frames form one regular stack (see :mod:`sainr.io.dicom`)."""
    path = Path(path)
    if not path.exists():
        raise InputImageError(f"input not found: {path}; check the path")
    if path.is_dir():
        return dicom.read_series(path, series)
    if path.stat().st_size == 0:
        raise InputImageError(f"input file is empty (0 bytes): {path}; export the volume again")
    if is_dicom_file(path):  # its frames are checked like a series' slices
        return dicom.read_stack([path])
    check_header(path)
    try:
        return sitk.ReadImage(str(path))
    except (RuntimeError, MemoryError, OSError) as exc:
        raise InputImageError(
            f"cannot read {path.name} as a volume: corrupt or not a supported format "
            f"({_itk_reason(exc)}); check that it opens in 3D Slicer, or export it again"
        ) from exc


def _itk_reason(exc: BaseException) -> str:
    """The informative line of an ITK/SimpleITK error: the innermost teem (NRRD) message, else
    the last ``ERROR:`` line without its class prefix, else the last line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    nrrd = [ln.removeprefix("[nrrd]") for ln in lines if ln.startswith("[nrrd]")]
    errors = [ln.split("ERROR:", 1)[1] for ln in lines if "ERROR:" in ln]
    reason = (nrrd or errors or lines or [type(exc).__name__])[-1]
    return re.sub(r"^\s*\w+\(0x[0-9a-f]+\):", "", reason).strip()[:160]


# --- header checks (before ITK reads the pixels) --------------------------------------------


def check_header(path: Path) -> None:
    """Refuse a file whose header declares an invalid spacing, a sheared orientation (where
    ITK would silently replace it) or an absurd size, before any pixel is read."""
    suffix = volume_suffix(path)
    try:
        if suffix in (".nii", ".nii.gz"):
            header = _head(path, 348, gz=suffix == ".nii.gz")
            _check_nifti_header(header)
            _check_nifti_length(path, header, gz=suffix == ".nii.gz")
        elif suffix in (".nrrd", ".nhdr"):
            _check_nrrd_header(_text_header(path))
            _check_data_file(path)
        elif suffix in (".mha", ".mhd"):
            _check_meta_header(_text_header(path))
            _check_data_file(path)
        _check_declared_size(path)
        if suffix in (".mha", ".mhd"):  # after the size check: it reads all the data
            _check_meta_compressed(path, _text_header(path))
    except InputImageError as exc:
        raise InputImageError(f"{path.name}: {exc}") from exc


def _head(path: Path, n: int, gz: bool) -> bytes:
    """First ``n`` bytes of the file (decompressed for .gz; raw bytes if not gzip after all)."""
    if gz:
        try:
            with gzip.open(path, "rb") as fh:
                return fh.read(n)
        except (OSError, EOFError, zlib.error):
            pass  # not gzip-compressed (or broken): ITK decides below
    with open(path, "rb") as fh:
        return fh.read(n)


def _text_header(path: Path) -> dict[str, str]:
    """``key -> value`` of a NRRD (``key: value``) or MetaImage (``Key = Value``) header."""
    with open(path, "rb") as fh:
        text = fh.read(_TEXT_HEADER_BYTES).decode("latin-1")
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # NRRD: a blank line ends the header
        if line.startswith("#") or ":=" in line:
            continue
        sep = ": " if ": " in line else "=" if "=" in line else None
        if sep is None:
            continue
        key, value = line.split(sep, 1)
        fields[key.strip().lower()] = value.strip()
        if key.strip().lower() == "elementdatafile":
            break  # MetaImage: pixel data follows
    return fields


def _floats(text: str) -> list[float] | None:
    """Numbers in ``text`` (NaN for 'nan'), or None when a token is not a number."""
    try:
        return [
            float(tok) for tok in text.replace(",", " ").replace("(", " ").replace(")", " ").split()
        ]
    except ValueError:
        return None


def _nifti_endian(raw: bytes) -> str | None:
    """'<' or '>' for a NIfTI-1 header (sizeof_hdr = 348), None for anything else (NIfTI-2,
    garbage: ITK decides)."""
    if len(raw) < 348:
        return None
    return next((e for e in "<>" if struct.unpack_from(e + "i", raw, 0)[0] == 348), None)


def _check_nifti_header(raw: bytes) -> None:
    """NIfTI-1: spacing (pixdim 1-3) positive and finite, sform orthonormal when used."""
    endian = _nifti_endian(raw)
    if endian is None:
        return
    dim = struct.unpack_from(endian + "8h", raw, 40)
    if dim[0] < 3:
        return  # 2D (or corrupt) images are refused by their dimension
    pixdim = struct.unpack_from(endian + "8f", raw, 76)
    # a single-slice axis may carry any pixdim: such volumes are refused as a single slice
    check_spacing(tuple(float(p) if n > 1 else 1.0 for p, n in zip(pixdim[1:4], dim[1:4])))
    qform_code, sform_code = struct.unpack_from(endian + "2h", raw, 252)
    if qform_code > 0:  # qoffset_x/y/z: ITK reads non-finite ones as 0
        _check_origin(" ".join(map(str, struct.unpack_from(endian + "3f", raw, 268))))
    if sform_code > 0:
        srow = np.array(struct.unpack_from(endian + "12f", raw, 280), dtype=np.float64)
        srow = srow.reshape(3, 4)
        norms = np.linalg.norm(srow[:, :3], axis=0)
        if not (np.all(np.isfinite(srow)) and np.all(norms > 0)):
            raise InputImageError(
                "the NIfTI sform is degenerate (zero or non-finite); fix the header"
            )
        check_direction(srow[:, :3] / norms)


def _check_nifti_length(path: Path, raw: bytes, gz: bool) -> None:
    """Refuse a truncated NIfTI (ITK silently fills the missing voxels) or a corrupt gzip
    stream; the whole .gz stream is decompressed (and its CRC checked), not stored."""
    endian = _nifti_endian(raw)
    if endian is None:
        return
    dim = struct.unpack_from(endian + "8h", raw, 40)
    bitpix = struct.unpack_from(endian + "h", raw, 72)[0]
    vox_offset = struct.unpack_from(endian + "f", raw, 108)[0]
    if not (1 <= dim[0] <= 7 and all(n >= 1 for n in dim[1 : dim[0] + 1]) and bitpix > 0):
        return  # nonsense sizes: ITK reports them
    if not (math.isfinite(vox_offset) and vox_offset >= 0):
        return
    needed = max(int(vox_offset), 348) + math.prod(dim[1 : dim[0] + 1]) * bitpix // 8
    held = _gzip_length(path) if gz else path.stat().st_size
    if held < needed:
        raise InputImageError(
            f"the file is truncated: its header needs {needed} bytes, it holds {held}; "
            "copy or export it again"
        )


def _gzip_length(path: Path) -> int:
    """Decompressed size of a gzip file, read to the end; raw size if it is not gzip."""
    with open(path, "rb") as fh:
        if fh.read(2) != b"\x1f\x8b":
            return path.stat().st_size
    total = 0
    try:
        with gzip.open(path, "rb") as fh:
            while block := fh.read(1 << 22):
                total += len(block)
    except (EOFError, OSError, zlib.error) as exc:
        raise InputImageError(
            f"the compressed data is corrupt or truncated ({exc}); copy or export it again"
        ) from exc
    return total


def _check_nrrd_header(fields: dict[str, str]) -> None:
    """3D NRRD: every spacing given, known, positive and finite (ITK reads a missing or nan
    spacing as 1 mm); the origin finite."""
    if fields.get("dimension", "").strip() != "3":
        return  # other dimensions are refused once read
    if "spacings" not in fields and "space directions" not in fields:
        raise InputImageError(
            "the header gives no voxel spacing (no 'spacings' or 'space directions' field; "
            "ITK would assume 1 mm); add the spacing to the header or export the volume again"
        )
    _check_origin(fields.get("space origin"))
    if "spacings" in fields:
        values = _floats(fields["spacings"])
        if values is not None:
            check_spacing(tuple(values))
    if "space directions" in fields and "none" not in fields["space directions"].lower():
        values = _floats(fields["space directions"])
        if values is not None and len(values) == 9:
            vectors = np.array(values).reshape(3, 3)  # one row per axis
            check_spacing(tuple(float(n) for n in np.linalg.norm(vectors, axis=1)))


def _check_meta_header(fields: dict[str, str]) -> None:
    """3D MetaImage: ElementSpacing positive and finite (ITK flips negative values silently)."""
    if fields.get("ndims", "").strip() != "3":
        return
    spacing = fields.get("elementspacing") or fields.get("elementsize")
    values = _floats(spacing) if spacing else None
    if values is not None:
        check_spacing(tuple(values))
    _check_origin(fields.get("offset") or fields.get("origin") or fields.get("position"))


def _check_origin(text: str | None) -> None:
    """An origin given in the header must be finite (ITK reads inf or nan as 0)."""
    values = _floats(text) if text else None
    if values is not None and not all(math.isfinite(v) for v in values):
        raise InputImageError(f"the origin {tuple(values)} is not finite; fix the file's header")


def _check_data_file(header: Path) -> None:
    """A .mhd/.nhdr header's separate data file must exist (ITK's message does not name it)."""
    data = data_file_of(header) if volume_suffix(header) in DATA_FILES else None
    if data is not None and not data.is_file():
        raise InputImageError(
            f"its data file {data.name} is missing (the header names it); copy it next to "
            f"{header.name}, or export the volume again"
        )


#: Bytes per component of MetaImage element types.
_META_BYTES = {
    "MET_CHAR": 1,
    "MET_UCHAR": 1,
    "MET_SHORT": 2,
    "MET_USHORT": 2,
    "MET_INT": 4,
    "MET_UINT": 4,
    "MET_LONG": 4,
    "MET_ULONG": 4,
    "MET_LONG_LONG": 8,
    "MET_ULONG_LONG": 8,
    "MET_FLOAT": 4,
    "MET_DOUBLE": 8,
}


def _check_meta_compressed(path: Path, fields: dict[str, str]) -> None:
    """Compressed MetaImage data must be one complete zlib stream holding every voxel:
    without CompressedDataSize, MetaIO reads a truncated stream as uninitialised memory."""
    if fields.get("compresseddata", "").lower() != "true":
        return
    if fields.get("elementdatafile", "").upper() == "LOCAL":
        source, offset = path, _local_data_offset(path)
    else:
        source, offset = data_file_of(path), 0
    if source is None or offset is None:
        return  # file lists and patterns: ITK decides
    held = _zlib_length(source, offset)
    sizes = _floats(fields.get("dimsize", ""))
    channels = _floats(fields.get("elementnumberofchannels", "1"))
    per_voxel = _META_BYTES.get(fields.get("elementtype", ""))
    needed = math.prod(sizes) * channels[0] * per_voxel if sizes and channels and per_voxel else 0
    if math.isfinite(needed) and all(v >= 0 for v in sizes or []):
        if held < needed:
            raise InputImageError(
                f"the compressed data is truncated: it holds {held} bytes, the header needs "
                f"{int(needed)}; copy or export it again"
            )


def _local_data_offset(path: Path) -> int | None:
    """Where the pixel data of a .mha starts: after the ``ElementDataFile = LOCAL`` line."""
    with open(path, "rb") as fh:
        head = fh.read(_TEXT_HEADER_BYTES)
    match = re.search(rb"ElementDataFile\s*=\s*LOCAL[^\n]*\n", head, re.IGNORECASE)
    return match.end() if match else None


def _zlib_length(path: Path, offset: int) -> int:
    """Decompressed size of the zlib stream at ``offset`` (read to its end, not stored);
    refuses a stream that is corrupt or ends early."""
    stream = zlib.decompressobj()
    total = 0
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            while (block := fh.read(1 << 20)) and not stream.eof:
                while block and not stream.eof:
                    total += len(stream.decompress(block, 1 << 24))
                    block = stream.unconsumed_tail
    except zlib.error as exc:
        raise InputImageError(
            f"the compressed data is corrupt ({exc}); copy or export it again"
        ) from exc
    if not stream.eof:
        raise InputImageError(
            "the compressed data is truncated (the stream ends early); copy or export it again"
        )
    return total


def _check_declared_size(path: Path) -> None:
    """Refuse absurd header sizes before ITK allocates them (unreadable headers pass: the
    read reports them)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return
    size = reader.GetSize()
    voxels = math.prod(size) * reader.GetNumberOfComponents()
    if voxels > MAX_INPUT_VOXELS:
        raise InputImageError(
            f"the header declares {' x '.join(map(str, size))} voxels "
            f"({voxels / 1e9:.3g} billion; the limit is {MAX_INPUT_VOXELS / 1e9:.3g} billion): "
            "the file is corrupt, or crop the volume first"
        )


#: Header + data formats: the data file ITK writes beside the header (compressed, raw).
DATA_FILES = {".mhd": (".zraw", ".raw"), ".nhdr": (".raw.gz", ".raw")}


def input_files(path: Path) -> list[Path]:
    """The files an input consists of: the file itself and, for a .mhd/.nhdr header, the
    separate data file it names."""
    data = data_file_of(path) if volume_suffix(path) in DATA_FILES and path.is_file() else None
    return [path] + ([data] if data is not None else [])


def data_file_of(header: Path) -> Path | None:
    """The data file a .mhd (ElementDataFile) or .nhdr (data file) header names, if it is one
    plain file (not LOCAL, a list or a pattern)."""
    fields = _text_header(header)
    name = fields.get("elementdatafile") or fields.get("data file") or fields.get("datafile")
    if not name or name.upper() == "LOCAL" or name.upper().startswith("LIST") or " " in name:
        return None
    return header.parent / name
