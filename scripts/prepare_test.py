"""Write the TEST volumes into a folder: reported only, never used for a choice (the
validation volumes of scripts/prepare_heldout.py are the ones decisions are made on).

- ``brain_pycortexS1_t1_1mm``: a single-subject T1 (FreeSurfer-conformed, 1 mm iso), linked
  unchanged; evaluated along its native slice axis (index k).
- ``knee_mese_te25_sag``: knee subject A (new), sagittal 2D multi-echo SE at 0.625 x 0.625 x
  4 mm. Its 4 mm axis is a real thick-slice axis with no thin truth, so thick slices are
  simulated along an in-plane (sharp) axis instead: S-I (index j), as an axial acquisition
  would slice it.
- ``prostate_px0001_t2tse_tra``: a new prostate subject, axial T2 TSE at 0.5 x 0.5 x 3 mm;
  simulated along the in-plane L-R axis (index i), as a sagittal acquisition would slice it.

For the in-plane cases the chosen axis becomes index axis k (the slice axis ``sainr evaluate
--axis 2`` takes) by a pure permutation of the index axes (:func:`reorient_slice_axis`): the
voxel values, their physical positions (origin, direction cosines, spacing per axis) are
unchanged, only the order in which the axes are stored.

Usage: python scripts/prepare_test.py DATA OUT
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import SimpleITK as sitk

#: (output name, source file, index axis that becomes the slice axis, or None: link unchanged)
TEST_VOLUMES = (
    ("brain_pycortexS1_t1_1mm", "brain_pycortexS1_t1_1mm.nii.gz", None),
    ("knee_mese_te25_sag_SI-slices_0p625mm", "knee_mese_te25_sag_0p62x0p62x4p0.nii.gz", 1),
    (
        "prostate_px0001_t2tse_tra_LR-slices_0p5mm",
        "prostate_px0001_t2tse_tra_0p5x0p5x3p0.nii.gz",
        0,
    ),
)


def reorient_slice_axis(image: sitk.Image, axis: int) -> sitk.Image:
    """``image`` with index axis ``axis`` moved to k (the other in-plane axis first, the
    coarsest remaining axis second). ITK's axis permutation permutes spacing and direction
    columns with the voxels, so every voxel keeps its physical point."""
    spacing = image.GetSpacing()
    others = sorted((a for a in range(3) if a != axis), key=lambda a: spacing[a])
    return sitk.PermuteAxes(image, [others[0], others[1], axis])


def main(data: str, out: str) -> None:
    for name, source, axis in TEST_VOLUMES:
        src, dst = Path(data) / source, Path(out) / f"{name}.nii.gz"
        if axis is None:
            os.symlink(os.path.realpath(src), dst)
        else:
            sitk.WriteImage(reorient_slice_axis(sitk.ReadImage(str(src)), axis), str(dst), True)
        print(f"{dst.name}: from {source}" + ("" if axis is None else f", index axis {axis} -> k"))


if __name__ == "__main__":
    main(*sys.argv[1:])
