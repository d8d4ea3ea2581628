"""Python API: ``reduce_spacing(image, spacing_mm)`` on SimpleITK images.

read -> validate -> slice axis -> thin-slice grid -> normalise -> SA-INR (encoder once per tile,
thin slices in bounded chunks) -> de-normalise -> image with the input's origin and direction
and the new spacing on the slice axis only. The input image is never modified.

Output pixel type: the input's. Integer inputs are rounded and clipped to their type's range;
float64 is computed in float32 and stored as float64.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from .geometry import Geometry, axis_label, slice_grid
from .intensity import robust_scale
from .model import SAINR
from .planning import geometry_of, plan_reduction
from .request import ReduceOptions, Target
from .runtime.device import choose_device
from .runtime.inference import CancelFn, NoticeFn, ProgressFn, super_resolve_with_fallback
from .runtime.weights import load_model
from .thickness import resolve_slice_thickness
from .validation import check_values


@dataclass
class ReduceResult:
    """Thin-slice image, gating mask (uint8 0/1 on the same grid) and a run summary."""

    image: sitk.Image
    mask: sitk.Image
    info: dict[str, Any] = field(default_factory=dict)


def image_from_array(array: np.ndarray, geom: Geometry) -> sitk.Image:
    """SimpleITK image from an (k, j, i) array with the given geometry."""
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(geom.spacing)
    img.SetOrigin(geom.origin)
    img.SetDirection(geom.direction)
    return img


def cast_like(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round and clip to an integer dtype's range, or clip to a float dtype's finite range.

    For 64-bit integers the upper bound is the largest float64 below the type's maximum
    (float64(2**63 - 1) is 2**63, which would wrap to the minimum)."""
    values = np.asarray(values, dtype=np.float64)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        high = float(info.max)
        if int(high) > info.max:
            high = float(np.nextafter(high, 0.0))
        return np.clip(np.rint(values), float(info.min), high).astype(dtype)
    finfo = np.finfo(dtype)
    return np.clip(values, float(finfo.min), float(finfo.max)).astype(dtype)


def slice_first(
    image: sitk.Image, axis: int, nan_policy: str = "refuse"
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The voxels as float32 (S, H, W) with index axis ``axis`` (the slice axis) first, and
    their spacing (c_S, c_H, c_W) in mm; NaN/Inf and constant volumes are checked first."""
    array = check_values(sitk.GetArrayViewFromImage(image), nan_policy)
    volume = np.moveaxis(np.asarray(array, dtype=np.float32), 2 - axis, 0)
    order = [axis] + [a for a in (2, 1, 0) if a != axis]  # array axis b is index axis 2 - b
    return volume, tuple(float(image.GetSpacing()[a]) for a in order)


def reduce_spacing(
    image: sitk.Image,
    target: Target | float,
    options: ReduceOptions = ReduceOptions(),
    *,
    weights: str | None = None,
    model: SAINR | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    notice: NoticeFn | None = None,
) -> ReduceResult:
    """Reduce the slice spacing of ``image`` to ``target`` with SA-INR: a target spacing in
    mm, or a :class:`~sainr.request.Target` (a factor, isotropic voxels, a named slice axis).

    ``options`` says how it runs (:class:`~sainr.request.ReduceOptions`: slice thickness,
    device, precision, memory budget, NaN policy). ``weights`` names a shipped model
    ("default") or a checkpoint file; ``model`` passes an already loaded one (to adapt it to
    the image first: :func:`sainr.train.adapt.adapt_to_image` with the same target and options).
    The acquired slice thickness tells the model how much to deblur: ``options``' value, else
    the image header's (DICOM SliceThickness, NRRD thicknesses), else estimated from the
    voxels (:func:`sainr.thickness.resolve_slice_thickness`); ``info`` says which, with a
    warning about it (``slice_thickness_warning``), for the caller to show beside the result.
    """
    ax, out_geom = plan_reduction(image, target)
    geom = geometry_of(image)
    grid = slice_grid(geom.size[ax], geom.spacing[ax], out_geom.spacing[ax])
    volume, _ = slice_first(image, ax, options.nan_policy)
    net = model if model is not None else load_model(weights)
    trained = getattr(net, "trained_thickness", None)
    resolved = resolve_slice_thickness(image, ax, options.slice_thickness_mm, trained)
    thickness = resolved.relative
    scale = robust_scale(volume)
    dev = choose_device(options.device)
    hr, mask = super_resolve_with_fallback(
        net,
        scale.normalize(volume),
        grid,
        dev,
        options.memory_mb,
        notice=notice,
        progress=progress,
        cancel=cancel,
        precision=options.precision,
        thickness=thickness,
    )
    hr = scale.denormalize(np.maximum(hr, 0.0))
    dtype = sitk.GetArrayViewFromImage(image).dtype
    out = cast_like(np.moveaxis(hr, 0, 2 - ax), dtype)
    mask_arr = np.ascontiguousarray(np.moveaxis(mask, 0, 2 - ax))
    return ReduceResult(
        image_from_array(np.ascontiguousarray(out), out_geom),
        image_from_array(mask_arr, out_geom),
        {
            "axis": ax,
            "axis_label": axis_label(geom.direction, ax),
            "spacing_in": geom.spacing[ax],
            "spacing_out": grid.spacing_hr,
            "factor": grid.factor,
            "slices_in": grid.n_lr,
            "slices_out": grid.n_hr,
            "slice_thickness": resolved.mm,
            "slice_thickness_source": resolved.source,
            "slice_thickness_warning": resolved.warning,
            "gated_fraction": float(mask.mean()),
            "device": str(dev),
        },
    )
