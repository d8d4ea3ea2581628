"""The frames (slices) of DICOM files, their sizes checked against the files, and their values.

A single-frame image is one frame; an enhanced (multi-frame) image holds many, each with its
own position, orientation, pixel spacing and rescale in its functional groups (per-frame, else
shared, else the top-level elements). Every frame goes through the same checks whichever kind
of file it comes from. The declared sizes are checked against a memory budget and against the
length of the pixel data before any pixel is read, so a corrupt Rows/Columns neither allocates
gigabytes nor reads memory the file does not hold. Stored values are then mapped to real
values with each frame's own RescaleSlope/RescaleIntercept, into a type wide enough for all.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputImageError
from ..validation import MAX_INPUT_VOXELS
from . import dicom_file as df

_POSITION, _ORIENTATION = (0x0020, 0x0032), (0x0020, 0x0037)
_PIXEL_SPACING, _SLICE_THICKNESS = (0x0028, 0x0030), (0x0018, 0x0050)
_INTERCEPT, _SLOPE = (0x0028, 0x1052), (0x0028, 0x1053)
_ROWS, _COLUMNS, _FRAMES, _SAMPLES = (
    (0x0028, 0x0010),
    (0x0028, 0x0011),
    (0x0028, 0x0008),
    (
        0x0028,
        0x0002,
    ),
)
_BITS_ALLOCATED, _BITS_STORED, _SIGNED = (0x0028, 0x0100), (0x0028, 0x0101), (0x0028, 0x0103)
_SHARED, _PER_FRAME = (0x5200, 0x9229), (0x5200, 0x9230)
#: functional group (sequence) holding each per-frame attribute of an enhanced image
_GROUP_OF = {
    _POSITION: (0x0020, 0x9113),
    _ORIENTATION: (0x0020, 0x9116),
    _PIXEL_SPACING: (0x0028, 0x9110),
    _SLICE_THICKNESS: (0x0028, 0x9110),
    _INTERCEPT: (0x0028, 0x9145),
    _SLOPE: (0x0028, 0x9145),
}
#: Rescaled values up to this magnitude are exact to well within 1 unit in float32.
_FLOAT32_EXACT = 2.0**24


@dataclass(frozen=True)
class PixelLayout:
    """How a file's pixel data is laid out: frames x rows x columns samples of ``bits``."""

    rows: int
    columns: int
    frames: int
    samples: int
    bits_allocated: int
    bits_stored: int
    signed: bool

    @property
    def voxels(self) -> int:
        return self.rows * self.columns * self.frames * self.samples

    @property
    def readable(self) -> bool:
        """True when the samples can be read as plain integers (else ITK decodes them)."""
        return self.bits_allocated in (8, 16, 32) and self.samples == 1

    def dtype(self, endian: str) -> np.dtype:
        kind = "i" if self.signed else "u"
        return np.dtype(f"{endian}{kind}{self.bits_allocated // 8}")


@dataclass(frozen=True, eq=False)
class Frame:
    """One slice: frame ``index`` of ``source``, with its patient position (mm, LPS), row and
    column cosines, PixelSpacing (row spacing, column spacing; mm), SliceThickness (None when
    absent or not a positive number) and rescale (slope, intercept)."""

    source: df.DicomFile
    layout: PixelLayout
    index: int
    position: np.ndarray  # (3,)
    orientation: np.ndarray  # (6,)
    pixel_spacing: np.ndarray  # (2,)
    thickness: float | None
    rescale: tuple[float, float]

    @property
    def name(self) -> str:
        return frame_name(self.source, self.layout, self.index)

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.orientation[:3], self.orientation[3:])


def frame_name(source: df.DicomFile, layout: PixelLayout, k: int) -> str:
    """How messages name frame ``k``: the file's name, with the frame number for a
    multi-frame file."""
    file = source.path.name
    return file if layout.frames == 1 else f"{file} frame {k + 1}"


def numbers(text: str) -> np.ndarray | None:
    """The backslash-separated decimal strings of a DICOM DS value, or None if not numbers."""
    try:
        values = np.array([float(v) for v in text.split("\\")], dtype=np.float64)
    except ValueError:
        return None
    return values if np.all(np.isfinite(values)) else None


def read_frames(files: list[Path]) -> list[Frame]:
    """Every frame of ``files``, each with its geometry and rescale; the declared sizes are
    checked against the memory budget and each file's pixel data before anything is read."""
    sources = [df.parse(path) for path in files]
    layouts = [_layout(source) for source in sources]
    _check_budget(layouts)
    for source, layout in zip(sources, layouts):
        _check_pixel_data(source, layout)
    frames = [
        _frame(source, layout, k)
        for source, layout in zip(sources, layouts)
        for k in range(layout.frames)
    ]
    _check_decoded_rescale(frames)
    return frames


def _layout(source: df.DicomFile) -> PixelLayout:
    ds, endian = source.dataset, source.encoding.endian
    rows, columns = df.ushort(ds, _ROWS, endian), df.ushort(ds, _COLUMNS, endian)
    if not rows or not columns:
        raise InputImageError(
            f"DICOM file {source.path.name} has no Rows/Columns, so it is not an image (e.g. a "
            "report); remove it from the folder or export the series again"
        )
    frames = df.text(ds, _FRAMES)
    bits = df.ushort(ds, _BITS_ALLOCATED, endian) or 16
    return PixelLayout(
        rows=rows,
        columns=columns,
        frames=int(frames) if frames.isdigit() and int(frames) > 0 else 1,
        samples=df.ushort(ds, _SAMPLES, endian) or 1,
        bits_allocated=bits,
        bits_stored=min(df.ushort(ds, _BITS_STORED, endian) or bits, bits),
        signed=df.ushort(ds, _SIGNED, endian) == 1,
    )


def _check_budget(layouts: list[PixelLayout]) -> None:
    """The declared matrix sizes of all files together must fit MAX_INPUT_VOXELS."""
    voxels = sum(layout.voxels for layout in layouts)
    if voxels > MAX_INPUT_VOXELS:
        first = layouts[0]
        raise InputImageError(
            f"the DICOM headers declare {voxels / 1e9:.3g} billion voxels (Rows x Columns "
            f"{first.rows} x {first.columns}, {sum(x.frames for x in layouts)} frames; the "
            f"limit is {MAX_INPUT_VOXELS / 1e9:.3g} billion): the headers are corrupt, or crop "
            "the series first"
        )


def _check_pixel_data(source: df.DicomFile, layout: PixelLayout) -> None:
    """A file must hold pixel data, and plain pixel data exactly the bytes its header
    declares (plus one byte that pads an odd length): fewer would leave pixels unread, more
    means that Rows/Columns/NumberOfFrames cut the data into the wrong images."""
    name = source.path.name
    if source.pixel_offset is None:
        raise InputImageError(
            f"DICOM file {name} holds no pixel data; remove it from the folder or export the "
            "series again"
        )
    if source.native and layout.readable:
        needed = layout.voxels * layout.bits_allocated // 8
        held = min(source.pixel_length, source.path.stat().st_size - source.pixel_offset)
        if held not in (needed, needed + 1):
            raise InputImageError(
                f"DICOM file {name}: its header declares {layout.rows} x {layout.columns} "
                f"pixels x {layout.frames} frame(s), {needed} bytes, but its pixel data holds "
                f"{held}: the Rows/Columns are wrong or the file is truncated; export the "
                "series again"
            )


def _check_decoded_rescale(frames: list[Frame]) -> None:
    """ITK decodes compressed pixel data and applies one rescale per file: the frames of such
    a file must share it."""
    rescales: dict[Path, set[tuple[float, float]]] = {}
    for frame in frames:
        if not _plain(frame):
            rescales.setdefault(frame.source.path, set()).add(frame.rescale)
    for path, values in rescales.items():
        if len(values) > 1:
            raise InputImageError(
                f"DICOM file {path.name} is compressed and its frames have different "
                "RescaleSlope/RescaleIntercept, which cannot be applied frame by frame; "
                "decompress it first (e.g. gdcmconv --raw)"
            )


def _frame(source: df.DicomFile, layout: PixelLayout, k: int) -> Frame:
    """Frame ``k`` of ``source`` with its attributes; refuses a frame without geometry."""
    name = frame_name(source, layout, k)
    position = numbers(_attribute(source, _POSITION, k))
    orientation = numbers(_attribute(source, _ORIENTATION, k))
    if position is None or position.size != 3 or orientation is None or orientation.size != 6:
        raise InputImageError(
            f"DICOM image {name} has no valid ImagePositionPatient/ImageOrientationPatient, so "
            "its place in the volume is unknown; export the series again (as images with "
            "patient geometry)"
        )
    spacing = numbers(_attribute(source, _PIXEL_SPACING, k))
    if spacing is None or spacing.size != 2 or not np.all(spacing > 0):
        raise InputImageError(
            f"DICOM image {name} has no valid PixelSpacing, so its pixel size is unknown; "
            "export the series again"
        )
    thickness = numbers(_attribute(source, _SLICE_THICKNESS, k))
    return Frame(
        source=source,
        layout=layout,
        index=k,
        position=position,
        orientation=orientation,
        pixel_spacing=spacing,
        thickness=float(thickness[0]) if _one_positive(thickness) else None,
        rescale=_rescale(source, k, name),
    )


def _rescale(source: df.DicomFile, k: int, name: str) -> tuple[float, float]:
    """(RescaleSlope, RescaleIntercept) of frame ``k``: (1, 0) when absent; refused when
    present but not one finite number (or a zero slope), as its values would be unknown."""
    pair = []
    for tag, default in ((_SLOPE, 1.0), (_INTERCEPT, 0.0)):
        text = _attribute(source, tag, k)
        values = numbers(text) if text else np.array([default])
        if values is None or values.size != 1 or (tag == _SLOPE and values[0] == 0):
            raise InputImageError(
                f"DICOM image {name} has an invalid RescaleSlope/RescaleIntercept ({text!r}), "
                "so its values are unknown; export the series again"
            )
        pair.append(float(values[0]))
    return pair[0], pair[1]


def _one_positive(values: np.ndarray | None) -> bool:
    return values is not None and values.size == 1 and values[0] > 0


def _attribute(source: df.DicomFile, tag: df.Tag, k: int) -> str:
    """An attribute of frame ``k``: from its per-frame functional group, else the shared one,
    else the top-level element ('' when absent)."""
    group = _GROUP_OF[tag]
    for items in (df.item(source.dataset, _PER_FRAME, k), df.item(source.dataset, _SHARED)):
        value = df.text(df.item(items, group), tag)
        if value:
            return value
    return df.text(source.dataset, tag)


def read_values(frames: list[Frame]) -> np.ndarray:
    """The real values (stored values x slope + intercept of each frame) of ``frames`` in
    their order, as one (frames, rows, columns) array of a type that holds every one."""
    out = np.empty(
        (len(frames), frames[0].layout.rows, frames[0].layout.columns), _value_type(frames)
    )
    by_file: dict[Path, list[tuple[int, Frame]]] = {}
    for position, frame in enumerate(frames):
        by_file.setdefault(frame.source.path, []).append((position, frame))
    for members in by_file.values():
        stored = _stored_values(members[0][1])
        for position, frame in members:
            slope, intercept = _own_rescale(frame)
            values = stored[frame.index]
            out[position] = (
                values
                if (slope, intercept) == (1.0, 0.0)
                else _rescaled(values, slope, intercept, out.dtype)
            )
    return out


def _rescaled(values: np.ndarray, slope: float, intercept: float, dtype: np.dtype) -> np.ndarray:
    """``values x slope + intercept`` computed in float64, rounded for an integer ``dtype``
    (chosen so that every such value fits)."""
    real = values.astype(np.float64) * slope + intercept
    return np.rint(real) if dtype.kind in "iu" else real


def _own_rescale(frame: Frame) -> tuple[float, float]:
    """The rescale this package applies: each frame's own for plain pixel data; none for
    pixel data ITK decodes (ITK applies the file's rescale itself)."""
    return frame.rescale if _plain(frame) else (1.0, 0.0)


def _plain(frame: Frame) -> bool:
    return frame.source.native and frame.layout.readable


def _stored_values(frame: Frame) -> np.ndarray:
    """(frames, rows, columns) values of ``frame``'s file: plain pixel data read directly
    (exactly the bytes checked against the header), anything else decoded by ITK."""
    source, layout = frame.source, frame.layout
    if not _plain(frame):
        return _decoded(source.path, layout)
    dtype = layout.dtype(source.encoding.endian)
    with open(source.path, "rb") as fh:
        fh.seek(source.pixel_offset)
        raw = fh.read(layout.voxels * dtype.itemsize)
    values = np.frombuffer(raw, dtype).reshape(layout.frames, layout.rows, layout.columns)
    if layout.bits_stored < layout.bits_allocated:
        values = _unpacked(values, layout)
    return values


def _unpacked(values: np.ndarray, layout: PixelLayout) -> np.ndarray:
    """Only the low BitsStored bits are the value (the others may hold overlays); signed
    values are sign-extended from them."""
    bits = layout.bits_stored
    values = values.astype(np.int64) & ((1 << bits) - 1)
    if layout.signed:
        values = np.where(values >= 1 << (bits - 1), values - (1 << bits), values)
    return values


def _decoded(path: Path, layout: PixelLayout) -> np.ndarray:
    """Pixel data ITK decodes (compressed, or unusual sample sizes), as (frames, rows, cols)."""
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1][:160] if str(exc).strip() else "unreadable"
        raise InputImageError(
            f"cannot read the pixels of DICOM file {path.name} ({reason}); export it again"
        ) from exc
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputImageError(
            f"DICOM file {path.name} is a colour image, not a scalar one; export a greyscale series"
        )
    array = sitk.GetArrayFromImage(image)
    if array.size != layout.frames * layout.rows * layout.columns:
        raise InputImageError(
            f"DICOM file {path.name} decodes to {array.size} pixels, not the {layout.rows} x "
            f"{layout.columns} x {layout.frames} frame(s) its header declares; export the "
            "series again"
        )
    return array.reshape(layout.frames, layout.rows, layout.columns)


def _value_type(frames: list[Frame]) -> np.dtype:
    """The type of the real values: the stored type when no frame is rescaled, the narrowest
    integer type that holds every possible value when all rescales are integers, else float32
    (float64 beyond float32's exact integers)."""
    one_per_file = {frame.source.path: frame for frame in frames}
    types = {path: _stored_type(frame) for path, frame in one_per_file.items()}
    kinds = set(types.values())
    rescales = {_own_rescale(frame) for frame in frames}
    if len(kinds) == 1 and rescales == {(1.0, 0.0)}:
        return kinds.pop()
    low, high = _value_range(frames, types)
    if all(float(v).is_integer() for pair in rescales for v in pair):
        for dtype in (*sorted(kinds, key=lambda d: d.itemsize), np.dtype(np.int32)):
            if dtype.kind in "iu" and np.iinfo(dtype).min <= low and high <= np.iinfo(dtype).max:
                return np.dtype(dtype)
    return np.dtype(np.float32 if max(-low, high) <= _FLOAT32_EXACT else np.float64)


def _stored_type(frame: Frame) -> np.dtype:
    """The type of a frame's values before its rescale (native byte order); for pixel data
    ITK decodes, the type ITK gives it."""
    if _plain(frame):
        return frame.layout.dtype("=")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(frame.source.path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputImageError(
            f"cannot read DICOM file {frame.source.path.name} (ITK cannot decode its pixel "
            "data); export the series again uncompressed"
        ) from exc
    return sitk.GetArrayViewFromImage(sitk.Image([1, 1], reader.GetPixelID())).dtype


def _value_range(frames: list[Frame], types: dict[Path, np.dtype]) -> tuple[float, float]:
    """The lowest and highest real value any frame can hold (from its stored type's range;
    ``types``: the stored type of each file)."""
    lows, highs = [], []
    for frame in frames:
        dtype = types[frame.source.path]
        if dtype.kind == "f":
            return -np.inf, np.inf
        bits = frame.layout.bits_stored if _plain(frame) else dtype.itemsize * 8
        signed = dtype.kind == "i"
        low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        slope, intercept = _own_rescale(frame)
        ends = (low * slope + intercept, high * slope + intercept)
        lows.append(min(ends))
        highs.append(max(ends))
    return min(lows), max(highs)
