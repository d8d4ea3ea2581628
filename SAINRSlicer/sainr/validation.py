"""One validation layer for the CLI, the Python API and the Slicer Logic.

Checks what SA-INR needs of an input volume before any work is done, and raises typed
:mod:`sainr.errors` with messages that say what is wrong and what to do.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .errors import InputImageError
from .geometry import check_direction, check_spacing

#: Pixel types SA-INR accepts (scalar, real-valued).
SUPPORTED_TYPES = {
    sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16,
    sitk.sitkUInt32, sitk.sitkInt32, sitk.sitkUInt64, sitk.sitkInt64,
    sitk.sitkFloat32, sitk.sitkFloat64,
}  # fmt: skip


def check_image(image: sitk.Image) -> None:
    """Refuse images that are not a scalar 3D volume with a sane grid."""
    dim = image.GetDimension()
    if dim == 2:
        raise InputImageError("the input is a 2D image; SA-INR needs a 3D volume with slices")
    if dim == 4:
        raise InputImageError(
            f"the input is 4D ({image.GetSize()[3]} frames, e.g. a time series); "
            "extract one 3D frame first"
        )
    if dim != 3:
        raise InputImageError(f"the input has {dim} dimensions; SA-INR needs a 3D volume")
    comps = image.GetNumberOfComponentsPerPixel()
    if comps > 1:
        kind = "an RGB/colour" if comps in (3, 4) else "a vector"
        raise InputImageError(
            f"the input is {kind} volume ({comps} components per voxel); "
            "extract one scalar component first"
        )
    if image.GetPixelID() not in SUPPORTED_TYPES:
        raise InputImageError(
            f"pixel type {image.GetPixelIDTypeAsString()} is not supported; "
            "convert to an integer or float scalar volume"
        )
    check_spacing(image.GetSpacing())
    check_direction(image.GetDirection())
    if min(image.GetSize()) < 1:
        raise InputImageError(f"the input is empty (size {image.GetSize()})")


def check_values(array: np.ndarray, nan_policy: str = "refuse") -> np.ndarray:
    """Refuse (or, with nan_policy='zero', replace by 0) NaN/Inf voxels."""
    if array.dtype.kind != "f":
        return array
    bad = ~np.isfinite(array)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return array
    if nan_policy == "zero":
        return np.where(bad, 0, array)
    raise InputImageError(
        f"the volume has {n_bad} NaN/Inf voxels; fix them or allow replacing them by 0 "
        "(--nan-to-zero)"
    )
