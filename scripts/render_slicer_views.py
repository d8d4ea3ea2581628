"""Render the README pictures from MRML, as Slicer's slice views show them (no OpenGL).

Reduces the bundled thick-slice knee sample (Resources/Sample, 3 mm sagittal slices) to 1 mm
with the shipped default model through the module's Logic, sets up the module's Compare views
(input left, output right, cut perpendicular to the acquired slices) and renders them with
vtkMRMLSliceLogic, which blends background and label layers exactly as the views do:

- Resources/Screenshots/compare.png: input vs output;
- Resources/Screenshots/mask_overlay.png: the output with the gating mask as label layer.

Run from the repository root: ``python scripts/render_slicer_views.py`` (about a minute on a CPU).
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the headless backend
import numpy as np  # noqa: E402
import slicer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "Testing"))
import slicer_scene  # noqa: E402 - the Slicer-like scene of the tests
from slicer_scene import SAINRSlicer  # noqa: E402

SAMPLE = REPO / "Resources" / "Sample" / "knee_qdess_sag_3mm.nii.gz"
SCREENSHOTS = REPO / "Resources" / "Screenshots"
TARGET_MM = 1.0
#: Slice view size in pixels (the coronal cut of the sample is about twice as wide as high).
VIEW = (640, 360)
MASK_OPACITY = 0.5


def load_sample(scene):
    """The sample as Slicer's "Add data" loads it (the archetype reader of loadVolume)."""
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(SAMPLE))
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", SAMPLE.name.removesuffix(".nii.gz"))
    if not storage.ReadData(volume):
        raise SystemExit(f"cannot read {SAMPLE}")
    volume.CreateDefaultDisplayNodes()
    return volume


def save_panels(path: Path, panels: list[tuple[np.ndarray, str]]) -> None:
    """The rendered views side by side, at their pixel size, each with a title."""
    height, width = panels[0][0].shape[:2]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(width * len(panels) / 100, height / 100 + 0.4), dpi=100
    )
    for ax, (image, title) in zip(np.atleast_1d(axes), panels, strict=True):
        ax.imshow(image[..., :3], interpolation="nearest")
        ax.set_title(title, fontsize=10, color="white")
        ax.axis("off")
    fig.subplots_adjust(
        left=0.005, right=0.995, bottom=0.005, top=1 - 0.3 / (height / 100 + 0.4), wspace=0.01
    )
    fig.savefig(path, dpi=100, facecolor="black")
    plt.close(fig)
    print(f"wrote {path.relative_to(REPO)}")


def main() -> None:
    handles = slicer_scene.newScene()
    logic = SAINRSlicer.SAINRSlicerLogic(handles.applicationLogic)
    volume = load_sample(handles.scene)
    plan = logic.plan(volume, TARGET_MM)
    print(f"{volume.GetName()}: {plan.axisLabel}, reducing to {TARGET_MM} mm ...")
    output = logic.process(volume, TARGET_MM)
    print(f"{output.GetName()}: {output.GetImageData().GetDimensions()}")

    thick = f"input: {plan.inputSize[plan.axis]} slices at {SAINRSlicer.formatMillimetres(plan.inputSpacing[plan.axis])} mm"
    thin = f"SA-INR: {plan.outputSize[plan.axis]} slices at {SAINRSlicer.formatMillimetres(TARGET_MM)} mm"
    logic.showComparison(volume, output, showMask=False)
    orientation = logic.compareOrientation(volume).lower()
    left, right = (handles.sliceImage(name, *VIEW) for name in SAINRSlicer.COMPARE_VIEWS)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    save_panels(
        SCREENSHOTS / "compare.png", [(left, f"{thick} ({orientation} cut)"), (right, thin)]
    )

    logic.setMaskOverlay(output, True, MASK_OPACITY)
    mask = slicer.util.arrayFromVolume(output.GetNodeReference(SAINRSlicer.MASK_REFERENCE_ROLE))
    overlay = handles.sliceImage(SAINRSlicer.COMPARE_VIEWS[1], *VIEW)
    save_panels(
        SCREENSHOTS / "mask_overlay.png",
        [
            (right, thin),
            (overlay, f"gating mask as label layer ({100 * mask.mean():.0f} % of voxels gated)"),
        ],
    )


if __name__ == "__main__":
    main()
