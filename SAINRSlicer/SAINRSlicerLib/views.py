"""The compare layout (input left, output right, cut across the slices) and the gating-mask
overlay, on the scene's own layout and slice nodes, with what is needed to put them back."""

from __future__ import annotations

from dataclasses import dataclass

import slicer
import vtk

from .core import SAINRSlicerError
from .sceneio import MASK_REFERENCE_ROLE

#: Slice views of SlicerLayoutSideBySideView: input left, output right.
COMPARE_VIEWS = ("Red", "Yellow")
#: View orientation that contains the slice axis, by the patient axis the slices are stacked on
#: (R-L: sagittal slices, A-P: coronal, S-I: axial). That is where thin slices show.
PERPENDICULAR_ORIENTATION = {0: "Coronal", 1: "Sagittal", 2: "Coronal"}


@dataclass
class ViewState:
    """What Compare changes in one slice view, to put it back afterwards."""

    backgroundID: str | None
    foregroundID: str | None
    labelID: str | None
    labelOpacity: float
    linked: bool
    sliceToRAS: vtk.vtkMatrix4x4


@dataclass
class LayoutSnapshot:
    """The layout and the compare views as they were before :func:`showComparison`."""

    layoutNode: object  # vtkMRMLLayoutNode
    arrangement: int
    views: dict[str, ViewState]


def sliceView(scene, layoutName: str):
    """(slice node, slice composite node) of a slice view such as "Red"."""
    sliceNode = scene.GetSingletonNode(layoutName, "vtkMRMLSliceNode")
    compositeNode = slicer.vtkMRMLSliceLogic.GetSliceCompositeNode(sliceNode) if sliceNode else None
    if compositeNode is None:
        raise SAINRSlicerError(f"the {layoutName} slice view does not exist in this scene")
    return sliceNode, compositeNode


def layoutNode(scene):
    node = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    if node is None:
        raise SAINRSlicerError("the scene has no layout node (no views to compare in)")
    return node


def viewState(scene, name: str) -> ViewState:
    sliceNode, compositeNode = sliceView(scene, name)
    sliceToRAS = vtk.vtkMatrix4x4()
    sliceToRAS.DeepCopy(sliceNode.GetSliceToRAS())
    return ViewState(
        compositeNode.GetBackgroundVolumeID(),
        compositeNode.GetForegroundVolumeID(),
        compositeNode.GetLabelVolumeID(),
        compositeNode.GetLabelOpacity(),
        bool(compositeNode.GetLinkedControl()),
        sliceToRAS,
    )


def showComparison(inputVolume, outputVolume, orientation: str) -> LayoutSnapshot:
    """Side-by-side layout, linked views: input left, output right, in ``orientation``
    turned to the output's planes. Returns what :func:`restoreLayout` needs."""
    scene = outputVolume.GetScene()
    layout = layoutNode(scene)
    arrangement = layout.GetViewArrangement()
    layout.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView)
    snapshot = LayoutSnapshot(layout, arrangement, {n: viewState(scene, n) for n in COMPARE_VIEWS})
    for name, volume in zip(COMPARE_VIEWS, (inputVolume, outputVolume), strict=True):
        sliceNode, compositeNode = sliceView(scene, name)
        compositeNode.SetBackgroundVolumeID(volume.GetID())
        compositeNode.SetForegroundVolumeID(None)
        compositeNode.SetLabelVolumeID(None)
        compositeNode.SetLinkedControl(True)
        sliceNode.SetOrientation(orientation)
        sliceNode.RotateToVolumePlane(outputVolume)
    return snapshot


def restoreLayout(snapshot: LayoutSnapshot) -> None:
    """Put the compare views and the layout back as they were before showComparison."""
    scene = snapshot.layoutNode.GetScene()
    for name, state in snapshot.views.items():
        sliceNode, compositeNode = sliceView(scene, name)
        compositeNode.SetBackgroundVolumeID(state.backgroundID)
        compositeNode.SetForegroundVolumeID(state.foregroundID)
        compositeNode.SetLabelVolumeID(state.labelID)
        compositeNode.SetLabelOpacity(state.labelOpacity)
        compositeNode.SetLinkedControl(state.linked)
        sliceNode.GetSliceToRAS().DeepCopy(state.sliceToRAS)
        sliceNode.UpdateMatrices()
    snapshot.layoutNode.SetViewArrangement(snapshot.arrangement)


def setMaskOverlay(outputVolume, visible: bool, opacity: float) -> None:
    """Show (or hide) the result's gating mask as label layer in every slice view whose
    background is the result."""
    mask = outputVolume.GetNodeReference(MASK_REFERENCE_ROLE)
    scene = outputVolume.GetScene()
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        compositeNode = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        if compositeNode.GetBackgroundVolumeID() != outputVolume.GetID():
            continue
        compositeNode.SetLabelVolumeID(mask.GetID() if visible and mask is not None else None)
        compositeNode.SetLabelOpacity(opacity)
