"""Edit the elements of a DICOM file in tests: parse it with :mod:`sainr.dicom_file`, change
the data set (tags, sequence items, pixel bytes) and write it back (implicit VR little endian,
the transfer syntax GDCM writes), as a scanner or an export tool could have written it."""

from __future__ import annotations

import struct
from pathlib import Path

from sainr.dicom_file import IMPLICIT_LITTLE, PIXEL_DATA, DataSet, parse

_SOP_CLASS, _SOP_INSTANCE = (0x0008, 0x0016), (0x0008, 0x0018)


def load(path: Path) -> tuple[DataSet, bytes]:
    """The data set of ``path`` and its pixel data bytes."""
    source = parse(path)
    with open(path, "rb") as fh:
        fh.seek(source.pixel_offset)
        pixels = fh.read(source.pixel_length)
    return source.dataset, pixels


def save(path: Path, dataset: DataSet, pixels: bytes) -> Path:
    """Write ``dataset`` and ``pixels`` as a DICOM file (preamble, file meta, data set)."""
    meta = {
        (0x0002, 0x0002): dataset[_SOP_CLASS],
        (0x0002, 0x0003): dataset[_SOP_INSTANCE],
        (0x0002, 0x0010): IMPLICIT_LITTLE.encode() + b"\0",
    }
    body = b"".join(
        struct.pack("<HH2sH", *tag, b"UI", len(_even(v))) + _even(v) for tag, v in meta.items()
    )
    path.write_bytes(
        b"\0" * 128 + b"DICM" + body + _dataset(dataset) + _element(PIXEL_DATA, pixels)
    )
    return path


def value(text: str) -> bytes:
    """A text value (DS, IS, ...) padded to even length."""
    return _even(text.encode())


def _even(raw: bytes) -> bytes:
    return raw + b" " if len(raw) % 2 else raw


def _dataset(dataset: DataSet) -> bytes:
    return b"".join(_element(tag, dataset[tag]) for tag in sorted(dataset))


def _element(tag: tuple[int, int], content) -> bytes:
    if isinstance(content, list):
        items = b"".join(
            struct.pack("<HHI", 0xFFFE, 0xE000, len(raw)) + raw
            for raw in (_dataset(item) for item in content)
        )
        return struct.pack("<HHI", *tag, len(items)) + items
    content = _even(content)
    return struct.pack("<HHI", *tag, len(content)) + content
