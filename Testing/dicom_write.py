"""Write a DICOM series in tests: one single-frame MR file per slice of a volume, with the
tags a scanner writes (positions, orientation, thickness, series UID), each slice's position
or orientation open to override so that a test can break the series on purpose.

Kept beside ``conftest.py`` so that the DICOM, output and thickness tests (in different area
folders) import it by name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk


def _ds(values) -> str:
    return "\\".join(f"{v:.6f}" for v in values)


def write_series(
    folder: Path,
    volume: sitk.Image,
    uid: str = "1.2.826.0.1.3680043.2.1125.1",
    positions: dict[int, np.ndarray] | None = None,
    orientations: dict[int, np.ndarray] | None = None,
    thickness: str = "1.5",
    description: str = "SAG qDESS",
    prefix: str = "IM",
) -> Path:
    """One single-frame MR image per slice of ``volume``, with the volume's geometry in its
    tags except where ``positions`` / ``orientations`` override a slice's."""
    folder.mkdir(parents=True, exist_ok=True)
    cosines = np.array(volume.GetDirection()).reshape(3, 3)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(volume.GetDepth()):
        image = volume[:, :, k]
        position = np.array(volume.TransformIndexToPhysicalPoint((0, 0, k)))
        position = (positions or {}).get(k, position)
        orientation = (orientations or {}).get(k, np.concatenate([cosines[:, 0], cosines[:, 1]]))
        tags = {
            "0008|0016": "1.2.840.10008.5.1.4.1.1.4",
            "0008|0060": "MR",
            "0008|103e": description,
            "0020|000d": "1.2.826.0.1.3680043.2.1125.0",
            "0020|000e": uid,
            "0020|0013": str(k + 1),
            "0020|0032": _ds(position),
            "0020|0037": _ds(orientation),
            "0018|0050": thickness,
        }
        for key, value in tags.items():
            image.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"{prefix}{k:04d}.dcm"))
        writer.Execute(image)
    return folder
