"""Planning a reduction without running it: every check and the output grid (torch-free).

A run is planned once, into a :class:`ReductionPlan`, and the plan is passed along: the CLI
plans each input once and hands the plan to :func:`sainr.api.reduce_spacing` (and to
per-volume adaptation), which then neither re-plans nor reads the voxels for checks again.
The Slicer Logic plans in its own process, where PyTorch may not be installed, with
:func:`plan_grid` (the same grid, from the same code); its worker plans again only because it
is another process, on the file the Logic wrote, with the slice axis and target the Logic
passes, so both plans hold the same grid.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import SimpleITK as sitk

from .geometry import (
    Geometry,
    SliceGrid,
    axis_label,
    detect_slice_axis,
    output_geometry,
    resolve_target_spacing,
    slice_grid,
)
from .request import ReduceOptions, Target
from .thickness import SliceThickness, resolve_slice_thickness
from .validation import (
    check_forced_limits,
    check_image,
    check_output_size,
    result_bytes,
    scan_values,
)


@dataclass(frozen=True)
class ReductionPlan:
    """What a reduction will do, decided before anything runs.

    ``target``: what was asked; ``axis`` (0, 1, 2 = i, j, k) and ``axis_label``: the slice
    axis; ``input`` and ``output``: the grids (the output differs only in size and spacing on
    the slice axis); ``result_bytes``: the memory of the result arrays. ``thickness``: the
    acquired slice thickness the model is told and where it came from, and ``nonfinite``: the
    NaN/Inf voxels to replace by 0; both are None in a plan of the grid alone
    (:func:`plan_grid`), which reads no voxels.
    """

    target: Target
    axis: int
    axis_label: str
    input: Geometry
    output: Geometry
    result_bytes: int
    thickness: SliceThickness | None = None
    nonfinite: int | None = None

    @property
    def spacing_in(self) -> float:
        """The acquired slice spacing (mm)."""
        return self.input.spacing[self.axis]

    @property
    def spacing_out(self) -> float:
        """The output slice spacing (mm)."""
        return self.output.spacing[self.axis]

    @property
    def factor(self) -> float:
        """How many times finer the output slices are."""
        return self.spacing_in / self.spacing_out

    @property
    def notes(self) -> tuple[str, ...]:
        """Warnings for the user beside the result: about the slice thickness."""
        warning = self.thickness.warning if self.thickness is not None else None
        return (warning,) if warning else ()

    def grid(self) -> SliceGrid:
        """Where each output slice lies between the acquired ones."""
        return slice_grid(self.input.size[self.axis], self.spacing_in, self.spacing_out)


def geometry_of(image: sitk.Image) -> Geometry:
    """The grid of a SimpleITK image as a :class:`~sainr.geometry.Geometry`."""
    return Geometry(
        tuple(image.GetSize()),
        tuple(image.GetSpacing()),
        tuple(image.GetOrigin()),
        tuple(image.GetDirection()),
    )


def plan_grid(image: sitk.Image, target: Target | float) -> ReductionPlan:
    """The plan of the grid alone: the image's grid checked, the slice axis and the output
    grid, without reading the voxels (the Slicer panel's preview, the Logic, and checks that
    need only the grid); ``target`` is a :class:`~sainr.request.Target` or a spacing in mm."""
    target = Target.of(target)
    check_image(image)
    geom = geometry_of(image)
    ax = detect_slice_axis(geom.spacing, geom.direction, target.axis)
    spacing = resolve_target_spacing(geom, ax, target)
    per_voxel = image.GetSizeOfPixelComponent()
    check_forced_limits(geom.size, ax, geom.spacing[ax], spacing, per_voxel)
    out = output_geometry(geom, ax, slice_grid(geom.size[ax], geom.spacing[ax], spacing))
    check_output_size(out.size, per_voxel, target.force)
    label = axis_label(geom.direction, ax)
    return ReductionPlan(target, ax, label, geom, out, result_bytes(out.size, per_voxel))


def plan_reduction(
    image: sitk.Image,
    target: Target | float,
    options: ReduceOptions = ReduceOptions(),
    trained: tuple[float, float] | None = None,
) -> ReductionPlan:
    """Everything a run decides before the model runs: :func:`plan_grid`, one scan of the
    voxels (:func:`sainr.validation.scan_values` with ``options.nan_policy``) and the slice
    thickness (``options.slice_thickness_mm``, else the header's, else estimated; checked
    against, or clipped to, the model's ``trained`` range:
    :func:`sainr.thickness.resolve_slice_thickness`). Cheap refusals come first: the grid,
    then a given thickness, then the voxels, then the estimate."""
    plan = plan_grid(image, target)
    given = options.slice_thickness_mm
    if given is not None:
        thickness = resolve_slice_thickness(image, plan.axis, given, trained)
    nonfinite = scan_values(sitk.GetArrayViewFromImage(image), options.nan_policy)
    if given is None:
        thickness = resolve_slice_thickness(image, plan.axis, None, trained)
    return replace(plan, thickness=thickness, nonfinite=nonfinite)
