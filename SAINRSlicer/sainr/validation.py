"""One validation layer for the CLI, the Python API and the Slicer Logic.

Checks what SA-INR needs of an input volume before any work is done, and raises typed
:mod:`sainr.errors` with messages that say what is wrong and what to do.
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk

from .errors import InputImageError, SpacingError
from .geometry import check_direction, check_spacing, slice_count

#: Pixel types SA-INR accepts (scalar, real-valued).
SUPPORTED_TYPES = {
    sitk.sitkUInt8,
    sitk.sitkInt8,
    sitk.sitkUInt16,
    sitk.sitkInt16,
    sitk.sitkUInt32,
    sitk.sitkInt32,
    sitk.sitkUInt64,
    sitk.sitkInt64,
    sitk.sitkFloat32,
    sitk.sitkFloat64,
}
#: Refuse headers that declare more voxels than this (2^30, e.g. 1024^3): a corrupt size field
#: must not make a reader allocate gigabytes before the read fails.
MAX_INPUT_VOXELS = 2**30
#: Refuse (unless forced) outputs whose result arrays would need more memory than this.
MAX_RESULT_BYTES = 4 * 2**30
#: Memory per output voxel besides the output itself: float32 result, uint8 gating mask and
#: the float64 de-normalised copy made before the cast (see :func:`sainr.api.reduce_spacing`).
RESULT_WORK_BYTES_PER_VOXEL = 4 + 1 + 8
#: Not even ``force`` allows reductions beyond this factor or outputs beyond this size.
MAX_FORCED_FACTOR = 1000.0
MAX_FORCED_RESULT_BYTES = 256 * 2**30


def check_image(image: sitk.Image) -> None:
    """Refuse images that are not a scalar 3D volume of at least 2 x 2 x 2 voxels with a sane
    grid (positive finite spacing, orthonormal direction)."""
    _check_dimension(image)
    comps = image.GetNumberOfComponentsPerPixel()
    if comps > 1:
        raise InputImageError(
            f"the input is {_vector_kind(image)} volume ({comps} components per voxel), not a "
            "scalar one; extract one scalar component first (e.g. one channel, or the magnitude)"
        )
    if image.GetPixelID() not in SUPPORTED_TYPES:
        raise InputImageError(
            f"pixel type {image.GetPixelIDTypeAsString()} is not supported; "
            "convert to an integer or float scalar volume"
        )
    check_spacing(image.GetSpacing())
    check_direction(image.GetDirection())
    if not all(math.isfinite(o) for o in image.GetOrigin()):
        raise InputImageError(
            f"the origin {image.GetOrigin()} is not finite; set the volume's origin first"
        )
    size = image.GetSize()
    if min(size) < 2:
        shape = " x ".join(map(str, size))
        raise InputImageError(
            f"the input is a single slice ({shape} voxels); SA-INR interpolates between "
            "slices and needs at least 2 slices"
        )


def _check_dimension(image: sitk.Image) -> None:
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


def _vector_kind(image: sitk.Image) -> str:
    """What a multi-component volume most likely is: 8-bit with 3/4 components is colour."""
    comps = image.GetNumberOfComponentsPerPixel()
    colour = {3: "RGB", 4: "RGBA"}.get(comps)
    if colour and image.GetPixelID() == sitk.sitkVectorUInt8:
        return f"an {colour} colour"
    return f"a vector or {colour}" if colour else "a vector"


def check_values(array: np.ndarray, nan_policy: str = "refuse") -> np.ndarray:
    """:func:`scan_values`, then the array with its NaN/Inf voxels replaced by 0 (allowed by
    nan_policy='zero'): for readers that need the cleaned voxels at once."""
    if scan_values(array, nan_policy):
        return zero_nonfinite(array)
    return array


def zero_nonfinite(array: np.ndarray) -> np.ndarray:
    """``array`` with its NaN/Inf voxels replaced by 0: what ``--nan-to-zero`` does, the one
    place it is done (the model, the thickness estimate and evaluation all see the same
    voxels). A new array; the caller's is never changed."""
    return np.where(np.isfinite(array), array, np.zeros((), dtype=array.dtype))


def scan_values(array: np.ndarray, nan_policy: str = "refuse") -> int:
    """The one pass over the voxels before a run: refuse NaN/Inf voxels (unless nan_policy is
    'zero': they count as 0), values beyond float32 (the network's type) and volumes without
    contrast (all zero, or constant). Returns how many NaN/Inf voxels are to be replaced by 0,
    so that a run replaces them without scanning again."""
    n_bad, finite = 0, array
    if array.dtype.kind == "f":
        good = np.isfinite(array)
        n_bad = int(array.size - np.count_nonzero(good))
        if n_bad and nan_policy != "zero":
            raise InputImageError(
                f"the volume has {n_bad} NaN/Inf voxels; fix them or allow replacing them "
                "by 0 (--nan-to-zero)"
            )
        if n_bad:
            finite = array[good]
    low, high = (finite.min(), finite.max()) if finite.size else (0, 0)
    if n_bad:  # the replaced voxels are 0
        low, high = min(low, 0), max(high, 0)
    _check_float32_range(float(low), float(high))
    if low == high == 0:
        raise InputImageError(
            "every voxel of the volume is 0 (an empty or blank export); check that the right "
            "file or series was exported"
        )
    if low == high:
        raise InputImageError(
            f"every voxel of the volume is {low:g}; there is nothing to interpolate"
        )
    return n_bad


def _check_float32_range(low: float, high: float) -> None:
    """Values beyond float32's range would become inf when the network reads them."""
    peak = max(abs(low), abs(high))
    limit = float(np.finfo(np.float32).max)
    if peak > limit:
        raise InputImageError(
            f"the volume's values reach {peak:.3g}, beyond the range SA-INR computes in "
            f"(float32, up to {limit:.2g}); divide the intensities by a power of ten first "
            "(e.g. rescale them to the scanner's units)"
        )


def check_forced_limits(
    size: tuple[int, ...], axis: int, current: float, target: float, bytes_per_voxel: int
) -> None:
    """Limits ``force`` does not lift, checked before the thin-slice grid is built (a factor
    of 1e12 would otherwise allocate terabytes for the slice positions alone): a reduction
    of at most MAX_FORCED_FACTOR, an output of at most MAX_FORCED_RESULT_BYTES."""
    factor = current / target
    if factor > MAX_FORCED_FACTOR:
        raise SpacingError(
            f"target spacing {target:.4g} mm is a {factor:.4g}x reduction of {current:.4g} mm; "
            f"not even --force allows more than {MAX_FORCED_FACTOR:g}x; choose a larger target "
            "spacing"
        )
    slices = slice_count(size[axis], factor)
    voxels = math.prod(size) // size[axis] * slices
    needed = voxels * (bytes_per_voxel + RESULT_WORK_BYTES_PER_VOXEL)
    if needed > MAX_FORCED_RESULT_BYTES:
        raise SpacingError(
            f"the output would have {slices} slices ({voxels:.3g} voxels) and need "
            f"{format_bytes(needed)} of memory; not even --force allows more than "
            f"{format_bytes(MAX_FORCED_RESULT_BYTES)}; choose a larger target spacing or crop "
            "the volume"
        )


def check_output_size(size: tuple[int, ...], bytes_per_voxel: int, force: bool = False) -> None:
    """Refuse an output whose result arrays would need more than MAX_RESULT_BYTES of memory,
    with the size it would need, unless ``force``."""
    needed = result_bytes(size, bytes_per_voxel)
    if needed > MAX_RESULT_BYTES and not force:
        raise SpacingError(
            f"the output would be {' x '.join(map(str, size))} voxels and need "
            f"{format_bytes(needed)} of memory (limit {format_bytes(MAX_RESULT_BYTES)}); "
            "choose a larger target spacing, crop the volume, or force it (--force)"
        )


def result_bytes(size: tuple[int, ...], bytes_per_voxel: int) -> int:
    """Memory the result arrays of an output of ``size`` voxels need: the output itself
    (``bytes_per_voxel``) and RESULT_WORK_BYTES_PER_VOXEL of work per voxel."""
    return math.prod(size) * (bytes_per_voxel + RESULT_WORK_BYTES_PER_VOXEL)


def format_bytes(n: float) -> str:
    """'2.5 TiB', '4.0 GiB', '12.5 MiB', '900 KiB'."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 2**10:.0f} KiB"
