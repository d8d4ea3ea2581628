"""Planning a reduction without running it: checks and the output grid (torch-free).

The CLI, the Python API and the Slicer Logic all plan through :func:`plan_reduction`, so the
panel's preview and refusals are exactly those of the run; the Slicer module calls it in its
own process, where PyTorch may not be installed.
"""

from __future__ import annotations

import SimpleITK as sitk

from .geometry import (
    Geometry,
    detect_slice_axis,
    output_geometry,
    resolve_target_spacing,
    slice_grid,
)
from .request import Target
from .validation import check_forced_limits, check_image, check_output_size


def geometry_of(image: sitk.Image) -> Geometry:
    """The grid of a SimpleITK image as a :class:`~sainr.geometry.Geometry`."""
    return Geometry(
        tuple(image.GetSize()),
        tuple(image.GetSpacing()),
        tuple(image.GetOrigin()),
        tuple(image.GetDirection()),
    )


def plan_reduction(image: sitk.Image, target: Target | float) -> tuple[int, Geometry]:
    """Validate and return (slice axis, output geometry) without running the model;
    ``target`` is a :class:`~sainr.request.Target` or a target spacing in mm."""
    target = Target.of(target)
    check_image(image)
    geom = geometry_of(image)
    ax = detect_slice_axis(geom.spacing, geom.direction, target.axis)
    spacing = resolve_target_spacing(geom, ax, target)
    check_forced_limits(geom.size, ax, geom.spacing[ax], spacing, image.GetSizeOfPixelComponent())
    out = output_geometry(geom, ax, slice_grid(geom.size[ax], geom.spacing[ax], spacing))
    check_output_size(out.size, image.GetSizeOfPixelComponent(), target.force)
    return ax, out
