"""Edit the elements of a DICOM file in tests: parse it with :mod:`sainr.io.dicom_file`, change
the data set (tags, sequence items, pixel bytes) and write it back, in implicit VR little
endian (what GDCM writes) or explicit VR little endian (what most scanners write), as a
scanner or an export tool could have written it."""

from __future__ import annotations

import struct
from pathlib import Path

from sainr.io.dicom_file import EXPLICIT_LITTLE, IMPLICIT_LITTLE, PIXEL_DATA, DataSet, parse

_SOP_CLASS, _SOP_INSTANCE = (0x0008, 0x0016), (0x0008, 0x0018)
#: Value representations of the elements GDCM writes (ITK checks them); other elements
#: are written as LO (text), sequences as SQ and pixel data as OW.
_VRS = {
    **dict.fromkeys([(0x0028, e) for e in (0x0002, 0x0010, 0x0011, 0x0100, 0x0101)], b"US"),
    **dict.fromkeys([(0x0028, 0x0102), (0x0028, 0x0103)], b"US"),
    **dict.fromkeys([(0x0008, 0x0016), (0x0008, 0x0018), (0x0020, 0x000D)], b"UI"),
    (0x0020, 0x000E): b"UI",
    **dict.fromkeys([(0x0020, 0x0032), (0x0020, 0x0037), (0x0028, 0x0030)], b"DS"),
    **dict.fromkeys([(0x0018, 0x0050), (0x0018, 0x0088), (0x0028, 0x1052)], b"DS"),
    **dict.fromkeys([(0x0028, 0x1053)], b"DS"),
    **dict.fromkeys([(0x0020, 0x0013), (0x0028, 0x0008)], b"IS"),
    **dict.fromkeys([(0x0008, 0x0060), (0x0028, 0x0004)], b"CS"),
    (0x0008, 0x0020): b"DA",
    (0x0008, 0x0030): b"TM",
}
_LONG = {b"SQ", b"OW"}
_ITEM, _UNDEFINED = (0xFFFE, 0xE000), 0xFFFFFFFF
_ITEM_END = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
_SEQUENCE_END = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


def load(path: Path) -> tuple[DataSet, bytes]:
    """The data set of ``path`` and its pixel data bytes."""
    source = parse(path)
    with open(path, "rb") as fh:
        fh.seek(source.pixel_offset)
        pixels = fh.read(source.pixel_length)
    return source.dataset, pixels


def save(path: Path, dataset: DataSet, pixels: bytes, explicit: bool = False) -> Path:
    """Write ``dataset`` and ``pixels`` as a DICOM file (preamble, file meta, data set)."""
    syntax = EXPLICIT_LITTLE if explicit else IMPLICIT_LITTLE
    meta = {
        (0x0002, 0x0002): dataset[_SOP_CLASS],
        (0x0002, 0x0003): dataset[_SOP_INSTANCE],
        (0x0002, 0x0010): syntax.encode() + b"\0",
    }
    body = b"".join(
        struct.pack("<HH2sH", *tag, b"UI", len(_even(v))) + _even(v) for tag, v in meta.items()
    )
    content = _dataset(dataset, explicit) + _element(PIXEL_DATA, pixels, explicit)
    path.write_bytes(b"\0" * 128 + b"DICM" + body + content)
    return path


def value(text: str) -> bytes:
    """A text value (DS, IS, ...) padded to even length."""
    return _even(text.encode())


def _even(raw: bytes) -> bytes:
    return raw + b" " if len(raw) % 2 else raw


def _dataset(dataset: DataSet, explicit: bool) -> bytes:
    return b"".join(_element(tag, dataset[tag], explicit) for tag in sorted(dataset))


def _element(tag: tuple[int, int], content, explicit: bool) -> bytes:
    if isinstance(content, list):
        return _sequence(tag, content, explicit)
    content = _even(content)
    vr = b"OW" if tag == PIXEL_DATA else _VRS.get(tag, b"LO")
    return _header(tag, vr, len(content), explicit) + content


def _sequence(tag: tuple[int, int], items: list[DataSet], explicit: bool) -> bytes:
    """Implicit: defined lengths (as GDCM writes); explicit: undefined lengths closed by
    delimiters (as many scanners write)."""
    if not explicit:
        raw = b"".join(
            struct.pack("<HHI", *_ITEM, len(body)) + body
            for body in (_dataset(item, explicit) for item in items)
        )
        return _header(tag, b"SQ", len(raw), explicit) + raw
    raw = b"".join(
        struct.pack("<HHI", *_ITEM, _UNDEFINED) + _dataset(item, explicit) + _ITEM_END
        for item in items
    )
    return _header(tag, b"SQ", _UNDEFINED, explicit) + raw + _SEQUENCE_END


def _header(tag: tuple[int, int], vr: bytes, length: int, explicit: bool) -> bytes:
    if not explicit:
        return struct.pack("<HHI", *tag, length)
    if vr in _LONG:
        return struct.pack("<HH2s2xI", *tag, vr, length)
    return struct.pack("<HH2sH", *tag, vr, length)
