"""The data of stage I: the in-plane slices of real thick-slice volumes (normalised, the slice axis
first) and the random training crops drawn from them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ...errors import SainrError
from ...geometry import detect_slice_axis
from ...intensity import IntensityScale, robust_scale
from ...io.read import read_volume
from ...validation import check_image, check_values

#: Training crops with less than this fraction of voxels above FOREGROUND are redrawn (up to
#: 20 times), so the VAE does not spend its steps on air.
MIN_FOREGROUND = 0.05

FOREGROUND = 0.1


@dataclass
class SliceStack:
    """A volume's in-plane slices (slice axis first), normalised, and how to undo it."""

    name: str
    slices: np.ndarray  # float32 (n, H, W), normalised
    scale: IntensityScale
    axis: int  # index axis (i, j, k) the slices are stacked along


def volume_slices(image: sitk.Image, axis: int | None = None) -> tuple[np.ndarray, int]:
    """(slices (n, H, W) float32 in the input's units, slice index axis) of a checked
    ``image`` (3D scalar, >= 2 slices, contrast); the slice axis is the coarsest one unless
    given."""
    check_image(image)
    ax = detect_slice_axis(image.GetSpacing(), image.GetDirection(), axis)
    array = np.asarray(check_values(sitk.GetArrayViewFromImage(image)), dtype=np.float32)
    return np.ascontiguousarray(np.moveaxis(array, 2 - ax, 0)), ax


def slice_stack(image: sitk.Image, name: str, axis: int | None = None) -> SliceStack:
    """The in-plane slices of ``image``, normalised with the robust volume scale."""
    slices, ax = volume_slices(image, axis)
    scale = robust_scale(slices)
    return SliceStack(name, scale.normalize(slices), scale, ax)


def load_stacks(paths: Sequence[str | os.PathLike], axis: int | None = None) -> list[SliceStack]:
    """Read and check every volume before any work starts."""
    if not paths:
        raise SainrError("no input volumes given; pass the thick-slice volumes to train on")
    return [slice_stack(read_volume(p), Path(p).name, axis) for p in paths]


def sample_crops(
    stacks: list[SliceStack], crop: int, batch: int, rng: np.random.Generator
) -> np.ndarray:
    """(batch, 1, crop, crop) random in-plane crops (volume, then slice, uniformly), with
    random flips and transposes; slices smaller than ``crop`` are edge-padded."""
    out = np.empty((batch, 1, crop, crop), dtype=np.float32)
    for b in range(batch):
        stack = stacks[int(rng.integers(len(stacks)))]
        plane = stack.slices[int(rng.integers(len(stack.slices)))]
        if min(plane.shape) < crop:
            plane = np.pad(plane, [(0, max(crop - n, 0)) for n in plane.shape], mode="edge")
        for _ in range(20):
            y, x = (int(rng.integers(0, n - crop + 1)) for n in plane.shape)
            patch = plane[y : y + crop, x : x + crop]
            if (patch > FOREGROUND).mean() >= MIN_FOREGROUND:
                break
        if rng.random() < 0.5:
            patch = patch[::-1]
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        if rng.random() < 0.5:
            patch = patch.T
        out[b, 0] = patch
    return out
