"""Python API: ``reduce_spacing(image, spacing_mm)`` on SimpleITK images.

read -> plan (checks, slice axis, thin-slice grid, slice thickness; :mod:`sainr.planning`, or a
plan the caller made) -> normalise -> SA-INR (encoder once per tile, thin slices in bounded
chunks) -> data consistency (:mod:`sainr.runtime.consistency`) -> de-normalise -> image with
the input's origin and direction and the new spacing on the slice axis only. The input image
is never modified.

Output pixel type: the input's. Integer inputs are rounded and clipped to their type's range;
float64 is computed in float32 and stored as float64.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from .geometry import EPS, Geometry
from .intensity import IntensityScale, robust_scale
from .model import SAINR
from .planning import ReductionPlan, geometry_of, plan_reduction
from .request import ReduceOptions, Target
from .runtime.consistency import enforce_consistency
from .runtime.device import choose_device
from .runtime.inference import CancelFn, NoticeFn, ProgressFn, super_resolve_with_fallback
from .runtime.weights import open_weights
from .validation import zero_nonfinite


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


def output_values(hr: np.ndarray, scale: IntensityScale, dtype: np.dtype, axis: int) -> np.ndarray:
    """Thin-slice volume ``hr`` (slice axis first, normalised) in the input's units, pixel
    type and (k, j, i) order, C-contiguous: negatives to 0, de-normalised, rounded and
    clipped (:func:`cast_like`). One thin slice at a time, written straight into its place:
    the float64 steps stay cache-sized instead of several passes over a volume eight bytes a
    voxel, and the values are those of the whole-volume computation."""
    out = np.empty(np.moveaxis(hr, 0, 2 - axis).shape, dtype=dtype)
    slices_first = np.moveaxis(out, 2 - axis, 0)
    for j, plane in enumerate(hr):
        slices_first[j] = cast_like(scale.denormalize(np.maximum(plane, 0.0)), dtype)
    return out


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
    image: sitk.Image, axis: int, replace_nonfinite: bool = False
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The voxels as float32 (S, H, W) with index axis ``axis`` (the slice axis) first, and
    their spacing (c_S, c_H, c_W) in mm; NaN/Inf voxels replaced by 0 if ``replace_nonfinite``.
    The voxels are checked by the plan (:func:`sainr.planning.plan_reduction`), not here."""
    view = sitk.GetArrayViewFromImage(image)
    volume = np.moveaxis(np.asarray(view, dtype=np.float32), 2 - axis, 0)
    if replace_nonfinite:
        volume = zero_nonfinite(volume)
    order = [axis] + [a for a in (2, 1, 0) if a != axis]  # array axis b is index axis 2 - b
    return volume, tuple(float(image.GetSpacing()[a]) for a in order)


def check_plan(plan: ReductionPlan, image: sitk.Image, trained: tuple[float, float] | None) -> None:
    """Refuse to run a plan made for another grid, one of the grid alone
    (:func:`sainr.planning.plan_grid`: its voxels are unchecked, its slice thickness unknown),
    or one whose slice thickness lies outside the model's ``trained`` range (planned without
    it: the model would be told a thickness it never saw)."""
    if plan.input != geometry_of(image):
        raise ValueError("the plan was made for an image with another grid; plan this image")
    if plan.thickness is None or plan.nonfinite is None:
        raise ValueError("a plan of the grid alone cannot run; make it with plan_reduction")
    relative = plan.thickness.relative
    if trained is not None and not trained[0] * (1 - EPS) <= relative <= trained[1] * (1 + EPS):
        raise ValueError(
            f"the plan's slice thickness ({relative:.3g}x the spacing) lies outside the "
            f"{trained[0]:.2g}-{trained[1]:.2g}x this model was trained for; plan with the "
            "model's range (plan_reduction(..., trained=model.trained_thickness))"
        )


def reduce_spacing(
    image: sitk.Image,
    target: Target | float | None = None,
    options: ReduceOptions = ReduceOptions(),
    *,
    plan: ReductionPlan | None = None,
    weights: str | None = None,
    model: SAINR | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    notice: NoticeFn | None = None,
) -> ReduceResult:
    """Reduce the slice spacing of ``image`` to ``target`` with SA-INR: a target spacing in
    mm, or a :class:`~sainr.request.Target` (a factor, isotropic voxels, a named slice axis);
    or run a ``plan`` already made for this image (:func:`sainr.planning.plan_reduction`), which
    is then neither made again nor its voxel checks repeated. Give exactly one of the two.

    ``options`` says how it runs (:class:`~sainr.request.ReduceOptions`: slice thickness,
    device, precision, memory budget, NaN policy; with a ``plan``, its slice thickness and NaN
    decisions hold). ``weights`` names a shipped model ("default") or a checkpoint file;
    ``model`` passes an already loaded one (to adapt it to the image first:
    :func:`sainr.train.adapt.adapt_to_image` with the same plan and options).
    The acquired slice thickness tells the model how much to deblur: ``options``' value, else
    the image header's (DICOM SliceThickness, NRRD thicknesses), else estimated from the
    voxels (:func:`sainr.thickness.resolve_slice_thickness`); ``info`` says which, with a
    warning about it (``slice_thickness_warning``), for the caller to show beside the result.
    The network's thin slices are then made to give back the acquired ones
    (:func:`sainr.runtime.consistency.enforce_consistency`); ``info["consistency_weight"]`` is
    the weight that step got (0 on noisy input, where it would only add the noise back).
    """
    if (target is None) == (plan is None):
        raise TypeError("give reduce_spacing a target or a plan (exactly one)")
    # the plan first, from the checkpoint's header alone: a bad image is refused before a
    # model is built for it
    opened = open_weights(weights) if model is None else None
    trained = opened.trained_thickness if opened else getattr(model, "trained_thickness", None)
    if plan is None:
        plan = plan_reduction(image, target, options, trained)
    else:
        check_plan(plan, image, trained)
    net = opened.build() if opened else model
    volume, _ = slice_first(image, plan.axis, bool(plan.nonfinite))
    scale = robust_scale(volume)
    normalised = scale.normalize(volume)
    dev = choose_device(options.device)
    grid = plan.grid()
    hr, mask = super_resolve_with_fallback(
        net,
        normalised,
        grid,
        dev,
        options.memory_mb,
        notice=notice,
        progress=progress,
        cancel=cancel,
        precision=options.precision,
        thickness=plan.thickness.relative,
    )
    consistency = enforce_consistency(hr, normalised, grid, plan.thickness.relative)
    ax = plan.axis
    out = output_values(hr, scale, sitk.GetArrayViewFromImage(image).dtype, ax)
    mask_arr = np.ascontiguousarray(np.moveaxis(mask, 0, 2 - ax))
    return ReduceResult(
        image_from_array(out, plan.output),
        image_from_array(mask_arr, plan.output),
        {
            "axis": ax,
            "axis_label": plan.axis_label,
            "spacing_in": plan.spacing_in,
            "spacing_out": grid.spacing_hr,
            "factor": grid.factor,
            "slices_in": grid.n_lr,
            "slices_out": grid.n_hr,
            "slice_thickness": plan.thickness.mm,
            "slice_thickness_source": plan.thickness.source,
            "slice_thickness_warning": plan.thickness.warning,
            "gated_fraction": float(mask.mean()),
            "consistency_weight": consistency,
            "device": str(dev),
        },
    )
