"""DICOM series folders: pick one series, check every slice's position, read exact geometry.

ITK's series reader trusts the file order and averages the slice spacing; it ignores the
per-slice ImagePositionPatient (0020,0032) and ImageOrientationPatient (0020,0037). A series
with a missing slice, uneven spacing, two images at one position, a gantry tilt or mixed
orientations would therefore load with a silently wrong geometry (slices millimetres from
where they were acquired). Here every slice's header is read first; the slices must lie on one
regular grid along the slice normal, to within 1 % of the slice spacing (relative, so
micro-scale spacings are judged like clinical ones), or the series is refused with a message
that names the slices and says what to do. The volume's origin, spacing and direction are then
set from those positions, not from ITK's average.

The same holds for every frame of an enhanced (multi-frame) file, given as a file or in a
folder: each frame's own position, orientation and pixel spacing are checked like a slice's
(:mod:`sainr.io.dicom_frames`), and the values are read with each frame's own rescale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputImageError
from .dicom_frames import Frame, read_frames, read_values

#: Slice positions must lie on a regular grid to within this fraction of the slice spacing
#: (along the normal and in-plane); orientation cosines must agree to within ORIENTATION_TOL,
#: pixel spacings to within PIXEL_SPACING_TOL of their size.
POSITION_TOL = 0.01
ORIENTATION_TOL = 1e-3
PIXEL_SPACING_TOL = 1e-4
_SERIES_DESCRIPTION = "0008|103e"


def series_ids(folder: Path) -> tuple[str, ...]:
    """SeriesInstanceUIDs of the DICOM images directly in ``folder`` (none: not DICOM)."""
    return tuple(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


def choose_series(folder: Path, series: str | None = None) -> list[Path]:
    """The files of the one series in ``folder``, or of ``series`` when the folder holds
    several; refuses an ambiguous or unknown choice with the list of series found."""
    ids = series_ids(folder)
    if not ids:
        raise InputImageError(
            f"{folder} is a folder without a DICOM series; give a volume file or a DICOM folder"
        )
    if series is None and len(ids) == 1:
        series = ids[0]
    if series not in ids:
        listing = "; ".join(_describe(folder, uid) for uid in ids)
        found = (
            f"does not hold series {series}"
            if series is not None
            else f"holds {len(ids)} DICOM series"
        )
        raise InputImageError(
            f"{folder} {found}: {listing}; choose one with --series UID (Python: "
            "read_volume(folder, series=UID)) or put each series in its own folder"
        )
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series)
    return [Path(f) for f in files]


def _describe(folder: Path, uid: str) -> str:
    """'UID (20 images, "T2 SAG")' for the series listing."""
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
    description = _tag(_header(Path(files[0])), _SERIES_DESCRIPTION)
    named = f', "{description}"' if description else ""
    return f"{uid} ({len(files)} images{named})"


def _header(path: Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputImageError(
            f"cannot read the DICOM header of {path.name}; export the series again"
        ) from exc
    return reader


def _tag(reader: sitk.ImageFileReader, key: str) -> str:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""


@dataclass(frozen=True)
class SeriesGeometry:
    """The checked series: frames in slice order and the grid they lie on."""

    frames: list[Frame]
    origin: np.ndarray  # position of the first slice
    normal: np.ndarray  # unit slice normal (row x column cosine): the third direction column
    spacing: float  # slice spacing along the normal (mm)


def check_series_geometry(slices: list[Frame]) -> SeriesGeometry:
    """Sort the slices along their normal and refuse anything that is not one regular stack:
    mixed sizes or orientations, two images at one position, a tilt (slices shifted
    in-plane), missing slices or uneven spacing."""
    _check_same(slices, lambda s: (s.layout.rows, s.layout.columns), "image sizes (rows x columns)")
    _check_pixel_spacing(slices)
    _check_orientation(slices)
    normal = slices[0].normal / np.linalg.norm(slices[0].normal)
    slices = sorted(slices, key=lambda s: float(s.position @ normal))
    if len(slices) < 2:  # a single image (its thickness as spacing): refused once read
        return SeriesGeometry(slices, slices[0].position, normal, slices[0].thickness or 1.0)
    depth = np.array([s.position @ normal for s in slices])
    steps = np.diff(depth)
    nominal = float(np.median(steps))
    _check_duplicates(slices, steps, nominal)
    _check_tilt(slices, depth, normal, nominal)
    _check_spacing(slices, steps, nominal)
    spacing = (depth[-1] - depth[0]) / (len(slices) - 1)
    return SeriesGeometry(slices, slices[0].position, normal, float(spacing))


def _names(slices: list[Frame], limit: int = 3) -> str:
    names = [s.name for s in slices[:limit]]
    more = f" and {len(slices) - limit} more" if len(slices) > limit else ""
    return ", ".join(names) + more


def _check_same(slices: list[Frame], key, what: str) -> None:
    groups: dict = {}
    for s in slices:
        groups.setdefault(key(s), []).append(s)
    if len(groups) > 1:
        parts = [f"{len(g)} of {' x '.join(map(str, k))} ({_names(g)})" for k, g in groups.items()]
        raise InputImageError(
            f"the DICOM series mixes {what}: {'; '.join(parts)}; export each kind as its own series"
        )


def _check_pixel_spacing(slices: list[Frame]) -> None:
    """Every slice must have the pixel spacing most of them have (ITK would use the first
    file's for all, placing the others' pixels wrongly)."""
    values, counts = np.unique(
        np.array([s.pixel_spacing for s in slices]), axis=0, return_counts=True
    )
    common = values[int(np.argmax(counts))]
    other = [
        s
        for s in slices
        if np.abs(s.pixel_spacing - common).max() > PIXEL_SPACING_TOL * common.max()
    ]
    if other:
        raise InputImageError(
            f"the DICOM series mixes pixel sizes: {len(other)} of its {len(slices)} images "
            f"({_names(other)}) {'has' if len(other) == 1 else 'have'} PixelSpacing "
            f"{_mm(other[0].pixel_spacing)} mm, the others "
            f"{_mm(common)} mm; export each kind as its own series, or resample the images to "
            "one grid first"
        )


def _mm(values: np.ndarray) -> str:
    return " x ".join(f"{v:.4g}" for v in values)


def _check_orientation(slices: list[Frame]) -> None:
    first = slices[0].orientation
    other = [s for s in slices if np.abs(s.orientation - first).max() > ORIENTATION_TOL]
    if other:
        same = [s for s in slices if s not in other]
        angle = _turn_degrees(slices[0], other[0])
        raise InputImageError(
            f"the DICOM series mixes slice orientations: {len(other)} of its {len(slices)} images "
            f"({_names(other)}) are turned by {angle:.1f} degrees against the others "
            f"({_names(same)}); a volume needs one orientation: export each stack as its own "
            "series, or pick the images of one stack into a folder"
        )


def _turn_degrees(a: Frame, b: Frame) -> float:
    """The angle of the rotation that takes slice ``a``'s (row, column, normal) frame to
    ``b``'s: a turn within the slice plane counts as much as a tilt of the plane."""
    frame_a = np.stack([a.orientation[:3], a.orientation[3:], a.normal])
    frame_b = np.stack([b.orientation[:3], b.orientation[3:], b.normal])
    cos = (np.trace(frame_a @ frame_b.T) - 1) / 2
    return math.degrees(math.acos(float(np.clip(cos, -1, 1))))


def _check_duplicates(slices: list[Frame], steps: np.ndarray, nominal: float) -> None:
    scale = max(nominal, float(steps.max()))
    same = np.flatnonzero(steps <= POSITION_TOL * scale) if scale > 0 else np.arange(len(steps))
    if same.size:
        i = int(same[0])
        raise InputImageError(
            f"{same.size} pair{'s of DICOM images lie' if same.size > 1 else ' of DICOM images lies'} at the same "
            f"position, e.g. {slices[i].name} and {slices[i + 1].name} at "
            f"{slices[i].position.round(3).tolist()} mm; the series holds several images per slice (e.g. echoes, repeats or time points): "
            "put one image per slice position in the folder"
        )


def _check_tilt(slices: list[Frame], depth: np.ndarray, normal: np.ndarray, nominal: float) -> None:
    """The positions must lie on the line through the first slice along the normal; a gantry
    tilt shifts each slice in-plane (ITK would place them as if stacked straight)."""
    offsets = np.array([s.position for s in slices]) - slices[0].position
    in_plane = offsets - np.outer(depth - depth[0], normal)
    drift = np.linalg.norm(in_plane, axis=1)
    if drift.max() > POSITION_TOL * nominal:
        per_slice = float(np.linalg.norm(in_plane[-1]) / (len(slices) - 1))
        angle = math.degrees(math.atan2(per_slice, nominal))
        raise InputImageError(
            f"the DICOM slices are shifted in-plane by {per_slice:.3g} mm per slice (a gantry "
            f"tilt of about {angle:.1f} degrees; last slice {slices[-1].name} is "
            f"{drift.max():.3g} mm off the stack): the volume would be sheared; resample it to "
            "a regular grid first (e.g. 3D Slicer's DICOM module with acquisition geometry "
            "regularization) or export a series without tilt"
        )


def _check_spacing(slices: list[Frame], steps: np.ndarray, nominal: float) -> None:
    off = np.flatnonzero(np.abs(steps - nominal) > POSITION_TOL * nominal)
    if not off.size:
        return
    i = int(off[0])
    multiple = steps[off] / nominal
    between = f"{slices[i].name} and {slices[i + 1].name}"
    if np.all(np.abs(multiple - np.rint(multiple)) <= POSITION_TOL * np.rint(multiple)):
        missing = int(np.sum(np.rint(multiple) - 1))
        raise InputImageError(
            f"the DICOM series misses {missing} slice{'s' if missing > 1 else ''}: the gap "
            f"between {between} is {steps[i]:.4g} mm, the slice spacing {nominal:.4g} mm; "
            "export the complete series again"
        )
    raise InputImageError(
        f"the DICOM slice spacing is not uniform: it varies from {steps.min():.4g} to "
        f"{steps.max():.4g} mm (first change between {between}); resample the series to a "
        "uniform spacing first (e.g. 3D Slicer's DICOM module with acquisition geometry "
        "regularization) or export it again"
    )


def read_series(folder: Path, series: str | None = None) -> sitk.Image:
    """The checked series of ``folder`` as a volume whose origin, slice spacing and direction
    come from the slices' own positions."""
    return read_stack(choose_series(folder, series))


def read_stack(files: list[Path]) -> sitk.Image:
    """The frames of ``files`` (single-frame images of one series, or enhanced multi-frame
    files), checked as one regular stack, as a volume with their geometry and rescaled
    values."""
    geometry = check_series_geometry(read_frames(files))
    first = geometry.frames[0]
    image = sitk.GetImageFromArray(read_values(geometry.frames))
    image.SetSpacing((*first.pixel_spacing[::-1].tolist(), geometry.spacing))
    image.SetOrigin(tuple(float(v) for v in geometry.origin))
    columns = np.column_stack([first.orientation[:3], first.orientation[3:], geometry.normal])
    image.SetDirection(tuple(float(v) for v in columns.reshape(-1)))
    return image


def slice_thickness(files: list[Path]) -> float | None:
    """SliceThickness (0018,0050) of the frames of ``files``: the value they agree on, None
    when absent, not a positive finite number or not the same in every frame."""
    values = {frame.thickness for frame in read_frames(files)}
    return values.pop() if len(values) == 1 else None
