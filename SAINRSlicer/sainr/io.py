"""Reading and writing volumes with SimpleITK: NIfTI, NRRD, MHA and DICOM series folders.

Geometry (origin, spacing, direction) round-trips exactly. Outputs are written atomically: a
temporary file in the destination folder, renamed over the target only when complete, so a
failed write (disk full, cancel) never leaves a partial file. Inputs are only ever read.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import SimpleITK as sitk

from .errors import InputImageError, OutputPathError

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def volume_suffix(path: str | os.PathLike) -> str | None:
    name = str(path).lower()
    return next((s for s in VOLUME_SUFFIXES if name.endswith(s)), None)


def is_dicom_folder(path: Path) -> bool:
    return path.is_dir() and bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))


def read_volume(path: str | os.PathLike) -> sitk.Image:
    """Read a volume file or a folder holding one DICOM series."""
    path = Path(path)
    if not path.exists():
        raise InputImageError(f"input not found: {path}")
    if path.is_dir():
        return _read_dicom(path)
    if path.stat().st_size == 0:
        raise InputImageError(f"input file is empty: {path}")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reason"
        raise InputImageError(
            f"cannot read {path.name} as a volume (corrupt or unsupported format: {first[:160]})"
        ) from exc


def _read_dicom(folder: Path) -> sitk.Image:
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputImageError(f"{folder} is a folder without a DICOM series")
    if len(series) > 1:
        raise InputImageError(
            f"{folder} holds {len(series)} DICOM series; put one series per folder"
        )
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0]))
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise InputImageError(f"cannot read the DICOM series in {folder}: {exc}") from exc


def check_output_path(path: str | os.PathLike, inputs: tuple[Path, ...] = ()) -> Path:
    """Refuse an output path that cannot be written or would overwrite an input."""
    path = Path(path)
    suffix = volume_suffix(path)
    if suffix is None:
        raise OutputPathError(
            f"unknown output format for {path.name}; use one of {', '.join(VOLUME_SUFFIXES)}"
        )
    folder = path.resolve().parent
    if not folder.is_dir():
        raise OutputPathError(f"output folder does not exist: {folder}")
    if not os.access(folder, os.W_OK):
        raise OutputPathError(f"output folder is not writable: {folder}")
    for src in inputs:
        if src.exists() and path.exists() and path.resolve() == src.resolve():
            raise OutputPathError(f"output {path} is the input file; choose another name")
    return path


def write_volume(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> None:
    """Write atomically: temp file in the same folder, then rename over ``path``."""
    path = check_output_path(path)
    suffix = volume_suffix(path)
    fd, tmp = tempfile.mkstemp(dir=path.resolve().parent, prefix=".sainr-", suffix=suffix)
    os.close(fd)
    try:
        sitk.WriteImage(image, tmp, compress)
        os.replace(tmp, path)
    except RuntimeError as exc:
        raise OutputPathError(f"could not write {path}: {str(exc).strip()[:200]}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
