"""What a reduction is asked to do: the target slice spacing and the run's options (torch-free).

The command line, the Python API, per-volume adaptation, the planning and the Slicer Logic all
describe a reduction with these two values, so that the parameters are named, defaulted and
checked in one place instead of being repeated in every signature along the way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import SainrError, SpacingError

#: How NaN/Inf voxels are handled: refused with a message, or replaced by 0.
NAN_POLICIES = ("refuse", "zero")


@dataclass(frozen=True)
class Target:
    """The slice spacing to reach: exactly one of ``spacing`` (mm), ``factor`` (> 1) or
    ``isotropic`` (the finest in-plane spacing). ``axis`` (0, 1, 2 = i, j, k) names the slice
    axis instead of detecting it; ``force`` allows reductions beyond the usual limits.

    Built from user input, so it refuses what is wrong on its own (no volume needed); what
    depends on the volume (a target coarser than the slices) is checked by
    :func:`sainr.geometry.resolve_target_spacing`."""

    spacing: float | None = None
    factor: float | None = None
    isotropic: bool = False
    axis: int | None = None
    force: bool = False

    def __post_init__(self) -> None:
        given = (self.spacing is not None) + (self.factor is not None) + bool(self.isotropic)
        if given != 1:
            raise SpacingError("give exactly one of a target spacing, a factor or isotropic")
        if self.factor is not None and not (math.isfinite(self.factor) and self.factor > 1):
            raise SpacingError(f"the factor must be a finite number > 1, got {self.factor}")
        if self.spacing is not None and not (math.isfinite(self.spacing) and self.spacing > 0):
            raise SpacingError(
                f"target spacing must be a positive number of mm, got {self.spacing}"
            )

    @classmethod
    def of(cls, target: Target | float) -> Target:
        """``target`` itself, or a target spacing in mm as a Target."""
        return target if isinstance(target, Target) else cls(spacing=target)


@dataclass(frozen=True)
class ReduceOptions:
    """How a reduction runs, besides its target and its model.

    ``slice_thickness_mm``: the acquired slice thickness (None: auto, from the image header,
    else estimated from the voxels; :func:`sainr.thickness.resolve_slice_thickness`). ``device``: auto, cpu, cuda[:N] or mps. ``precision``: auto, fp32, bf16, fp16 or
    int8 (CPU; :func:`sainr.runtime.precision.resolve_precision`).
    ``memory_mb``: the working-memory budget of the reconstruction. ``nan_policy``: one of
    :data:`NAN_POLICIES`. Per-volume adaptation has its own settings
    (:class:`sainr.train.adapt.AdaptConfig`).
    """

    slice_thickness_mm: float | None = None
    device: str = "auto"
    precision: str = "auto"
    memory_mb: float = 2048.0  # sainr.runtime.inference.DEFAULT_BUDGET_MB (torch-free here)
    nan_policy: str = "refuse"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.memory_mb) and self.memory_mb > 0):
            raise SainrError(f"--memory-mb must be a positive number of MB, got {self.memory_mb}")
        if self.nan_policy not in NAN_POLICIES:
            raise SainrError(f"nan_policy must be 'refuse' or 'zero', got {self.nan_policy!r}")
