"""The header of one DICOM file, parsed here rather than by ITK.

ITK's DICOM reader exposes only the top-level elements: the per-frame geometry of an enhanced
(multi-frame) image lives in functional-group sequences it does not show, and it neither
reports the pixel data's length nor the rescale of each frame. This parser reads the data set
up to the pixel data (never the pixels themselves), keeps sequences as lists of items, and
records where the pixel data lies and how long it is, so that sizes can be checked against
the file before anything is allocated.
"""

from __future__ import annotations

import mmap
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputImageError

Tag = tuple[int, int]
#: A data set: tag -> raw value bytes, or a list of item data sets for a sequence.
DataSet = dict[Tag, "bytes | list[DataSet]"]

PIXEL_DATA: Tag = (0x7FE0, 0x0010)
_ITEM, _ITEM_END, _SEQUENCE_END = (0xFFFE, 0xE000), (0xFFFE, 0xE00D), (0xFFFE, 0xE0DD)
_UNDEFINED = 0xFFFFFFFF
#: Explicit-VR value representations with a 4-byte length (after 2 reserved bytes).
_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}
#: Sequences this package reads, recognised by tag where the VR is implicit.
SEQUENCES: set[Tag] = {
    (0x5200, 0x9229),  # SharedFunctionalGroupsSequence
    (0x5200, 0x9230),  # PerFrameFunctionalGroupsSequence
    (0x0020, 0x9113),  # PlanePositionSequence
    (0x0020, 0x9116),  # PlaneOrientationSequence
    (0x0028, 0x9110),  # PixelMeasuresSequence
    (0x0028, 0x9145),  # PixelValueTransformationSequence
}
IMPLICIT_LITTLE, EXPLICIT_LITTLE = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"
EXPLICIT_BIG, DEFLATED = "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"
#: Transfer syntaxes whose pixel data is stored as plain sample values at a file offset (a
#: deflated data set's pixels are left to ITK).
NATIVE = {IMPLICIT_LITTLE, EXPLICIT_LITTLE, EXPLICIT_BIG}


@dataclass(frozen=True)
class Encoding:
    """How the data set's elements are written: implicit or explicit VR, byte order."""

    explicit: bool
    endian: str  # "<" or ">"


@dataclass(frozen=True)
class DicomFile:
    """A parsed DICOM file: its data set (up to the pixel data), transfer syntax and encoding,
    and the pixel data's byte offset and length (length None: compressed, i.e. encapsulated or
    in a deflated data set; offset None: no pixel data)."""

    path: Path
    dataset: DataSet
    transfer_syntax: str
    encoding: Encoding
    pixel_offset: int | None
    pixel_length: int | None

    @property
    def native(self) -> bool:
        """True when the pixel data holds plain sample values that can be read directly."""
        return self.transfer_syntax in NATIVE and self.pixel_length is not None


def is_dicom(path: Path) -> bool:
    """True for a file with the DICOM preamble ('DICM' at byte 128)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def parse(path: Path) -> DicomFile:
    """The header of the DICOM file ``path``; InputImageError if it is not one or corrupt."""
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(path, buf)
    except (ValueError, OSError) as exc:  # empty file (mmap), unreadable
        raise InputImageError(
            f"cannot read {path.name} as a DICOM file ({exc}); export the series again"
        ) from exc


def _parse(path: Path, buf: mmap.mmap) -> DicomFile:
    start = 132 if buf[128:132] == b"DICM" else 0
    try:
        meta, pos = _read_dataset(buf, start, len(buf), Encoding(True, "<"), group=0x0002)
        syntax = text(meta, (0x0002, 0x0010)) or IMPLICIT_LITTLE
        encoding = Encoding(syntax != IMPLICIT_LITTLE, ">" if syntax == EXPLICIT_BIG else "<")
        body = _inflate(buf[pos:]) if syntax == DEFLATED else buf
        dataset, _ = _read_dataset(
            body, 0 if syntax == DEFLATED else pos, len(body), encoding, top=True
        )
    except (_Corrupt, struct.error, zlib.error, RecursionError) as exc:
        raise InputImageError(
            f"{path.name} is a corrupt DICOM file ({exc or 'it ends inside an element'}); "
            "export the series again"
        ) from exc
    offset, length = dataset.pop(PIXEL_DATA, (None, None))
    if syntax not in NATIVE:
        length = None
    return DicomFile(path, dataset, syntax, encoding, offset, length)


def _inflate(data: bytes) -> bytes:
    """A deflated data set (raw deflate stream, no zlib header)."""
    return zlib.decompress(data, -15)


class _Corrupt(Exception):
    """A length or tag that runs past the end of the file."""


def _read_dataset(
    buf, pos: int, end: int, enc: Encoding, group: int | None = None, top: bool = False
) -> tuple[DataSet, int]:
    """Elements from ``pos`` to ``end`` (or the end of an undefined-length item, or, with
    ``group``, the last element of that group). The ``top``-level pixel data is recorded as
    (offset, length or None) and ends the data set; nested pixel data (an icon) is skipped.
    Returns the data set and where it ended."""
    dataset: DataSet = {}
    while pos + 8 <= end:
        tag = struct.unpack_from(enc.endian + "HH", buf, pos)
        if (group is not None and tag[0] != group) or tag == _ITEM_END:
            return dataset, pos + (8 if tag == _ITEM_END else 0)
        vr, length, pos = _element_header(buf, pos, enc, tag)
        if tag == PIXEL_DATA and top:
            dataset[tag] = (pos, None if length == _UNDEFINED else length)
            return dataset, end
        if tag == PIXEL_DATA and length == _UNDEFINED:
            pos = _skip_fragments(buf, pos, end, enc)
            continue
        if vr == b"SQ" or (length == _UNDEFINED) or (vr is None and tag in SEQUENCES):
            inner = enc if vr != b"UN" else Encoding(False, "<")
            dataset[tag], pos = _read_sequence(buf, pos, length, end, inner)
            continue
        if pos + length > end:
            raise _Corrupt(f"element {tag[0]:04X},{tag[1]:04X} runs past the end of the file")
        dataset[tag] = bytes(buf[pos : pos + length])
        pos += length
    return dataset, pos


def _element_header(buf, pos: int, enc: Encoding, tag: Tag) -> tuple[bytes | None, int, int]:
    """(VR or None when implicit, value length, value offset) of the element at ``pos``."""
    if tag[0] == 0xFFFE or not enc.explicit:
        (length,) = struct.unpack_from(enc.endian + "I", buf, pos + 4)
        return None, length, pos + 8
    vr = bytes(buf[pos + 4 : pos + 6])
    if vr in _LONG_VRS:
        (length,) = struct.unpack_from(enc.endian + "I", buf, pos + 8)
        return vr, length, pos + 12
    (length,) = struct.unpack_from(enc.endian + "H", buf, pos + 6)
    return vr, length, pos + 8


def _read_sequence(buf, pos: int, length: int, end: int, enc: Encoding) -> tuple[list, int]:
    """The items of a sequence whose value starts at ``pos``; returns them and the position
    after the sequence."""
    stop = end if length == _UNDEFINED else pos + length
    if stop > end:
        raise _Corrupt("a sequence runs past the end of the file")
    items: list[DataSet] = []
    while pos + 8 <= stop:
        tag = struct.unpack_from(enc.endian + "HH", buf, pos)
        (item_length,) = struct.unpack_from(enc.endian + "I", buf, pos + 4)
        pos += 8
        if tag == _SEQUENCE_END:
            return items, pos
        if tag != _ITEM:
            raise _Corrupt(f"a sequence holds {tag[0]:04X},{tag[1]:04X} instead of an item")
        item_end = stop if item_length == _UNDEFINED else pos + item_length
        if item_end > stop:
            raise _Corrupt("a sequence item runs past its sequence")
        item, after = _read_dataset(buf, pos, item_end, enc)
        items.append(item)
        pos = after if item_length == _UNDEFINED else item_end
    return items, pos


def _skip_fragments(buf, pos: int, end: int, enc: Encoding) -> int:
    """The position after encapsulated pixel data (items of compressed bytes, then a
    sequence delimiter) that starts at ``pos``."""
    while pos + 8 <= end:
        tag = struct.unpack_from(enc.endian + "HH", buf, pos)
        (length,) = struct.unpack_from(enc.endian + "I", buf, pos + 4)
        pos += 8
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM or pos + length > end:
            raise _Corrupt("encapsulated pixel data runs past the end of the file")
        pos += length
    raise _Corrupt("encapsulated pixel data runs past the end of the file")


def text(dataset: DataSet, tag: Tag) -> str:
    """The value of a text element (DS, IS, CS, UI, LO, ...), stripped; '' when absent."""
    value = dataset.get(tag)
    if not isinstance(value, bytes):
        return ""
    return value.decode("latin-1").strip("\x00 ")


def ushort(dataset: DataSet, tag: Tag, endian: str) -> int | None:
    """The value of a US element (Rows, Columns, BitsAllocated, ...); None when absent."""
    value = dataset.get(tag)
    if not isinstance(value, bytes) or len(value) < 2:
        return None
    return struct.unpack_from(endian + "H", value)[0]


def item(dataset: DataSet, tag: Tag, index: int = 0) -> DataSet:
    """Item ``index`` of the sequence ``tag`` ({} when absent)."""
    value = dataset.get(tag)
    return value[index] if isinstance(value, list) and len(value) > index else {}
