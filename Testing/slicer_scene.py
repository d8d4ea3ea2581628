"""A Slicer-like MRML scene without the Slicer application, for the module's Logic.

With the PyPI package ``slicer-core`` (real MRML classes, no Qt), this sets up what the
application normally provides: the scene as ``slicer.mrmlScene``; an application logic with the
Colors, Volumes and Subject hierarchy module logics (display nodes need the colour tables); the
layout node and the Red/Yellow/Green slice views with their slice logics (which create the slice
composite nodes). It also puts the module folder on ``sys.path`` so that ``import SAINRSlicer``
works as in Slicer's Python console, and imports the module as ``slicer_scene.SAINRSlicer``
(its library as ``slicer_scene.SAINRSlicerLib``).

Used by the Slicer Logic tests and by ``scripts/render_slicer_views.py``.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "SAINRSlicer"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))
SAINRSlicer = importlib.import_module("SAINRSlicer")
SAINRSlicerLib = importlib.import_module("SAINRSlicerLib")  # its modules, loaded by SAINRSlicer

SLICE_VIEWS = ("Red", "Yellow", "Green")


@dataclass
class SlicerScene:
    """The scene and the logics that keep it working (hold on to this object)."""

    scene: slicer.vtkMRMLScene
    applicationLogic: slicer.vtkSlicerApplicationLogic
    moduleLogics: dict[str, object]
    layoutLogic: slicer.vtkMRMLLayoutLogic
    sliceLogics: dict[str, slicer.vtkMRMLSliceLogic]

    def sliceImage(self, viewName: str, width: int, height: int) -> np.ndarray:
        """The RGBA picture a slice view of this size shows, fitted to its volumes, with the
        layers blended as in Slicer (vtkMRMLSliceLogic's pipeline, no OpenGL); rows top-down."""
        logic = self.sliceLogics[viewName]
        logic.GetSliceNode().SetDimensions(width, height, 1)
        logic.FitSliceToAll()
        producer = logic.GetImageDataConnection().GetProducer()
        producer.Update()
        image = producer.GetOutputDataObject(0)
        cols, rows = image.GetDimensions()[:2]
        scalars = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
        return scalars.reshape(rows, cols, -1)[::-1].copy()  # VTK rows run bottom-up


def newScene() -> SlicerScene:
    """A fresh scene set as ``slicer.mrmlScene``, with module logics and slice views."""
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    applicationLogic = slicer.vtkSlicerApplicationLogic()
    applicationLogic.SetMRMLScene(scene)
    # slicer-core ships no colour files (the built-in tables are enough): point the colour logic
    # at an empty folder instead of letting it log an error.
    home = Path(tempfile.gettempdir()) / "sainrslicer-home"
    (home / "share" / "ColorFiles").mkdir(parents=True, exist_ok=True)
    applicationLogic.SetHomeDirectory(str(home))
    applicationLogic.SetShareDirectory("share")
    moduleLogics = {}
    for name, logicClass in (
        ("Colors", slicer.vtkSlicerColorLogic),
        ("Volumes", slicer.vtkSlicerVolumesLogic),
        ("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic),
    ):
        logic = logicClass()
        logic.SetMRMLApplicationLogic(applicationLogic)
        logic.SetMRMLScene(scene)
        applicationLogic.SetModuleLogic(name, logic)
        moduleLogics[name] = logic
    layoutLogic = slicer.vtkMRMLLayoutLogic()
    layoutLogic.SetMRMLScene(scene)
    sliceLogics = {}
    collection = vtk.vtkCollection()
    for name in SLICE_VIEWS:
        sliceLogic = slicer.vtkMRMLSliceLogic()
        sliceLogic.SetMRMLApplicationLogic(applicationLogic)
        sliceLogic.SetMRMLScene(scene)
        sliceLogic.SetSliceNode(scene.GetSingletonNode(name, "vtkMRMLSliceNode"))
        collection.AddItem(sliceLogic)
        sliceLogics[name] = sliceLogic
    applicationLogic.SetSliceLogics(collection)
    return SlicerScene(scene, applicationLogic, moduleLogics, layoutLogic, sliceLogics)


def ijkToRAS(rotation: np.ndarray, spacing, origin) -> vtk.vtkMatrix4x4:
    """IJK-to-RAS matrix: direction columns scaled by the spacing, then the origin."""
    matrix = np.eye(4)
    matrix[:3, :3] = np.asarray(rotation) @ np.diag(spacing)
    matrix[:3, 3] = origin
    result = vtk.vtkMatrix4x4()
    slicer.util.updateVTKMatrixFromArray(result, matrix)
    return result


def addVolume(scene, array: np.ndarray, matrix: vtk.vtkMatrix4x4, name: str):
    """Scalar volume node from a (k, j, i) array and an IJK-to-RAS matrix, with display."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array))
    node.SetIJKToRASMatrix(matrix)
    node.CreateDefaultDisplayNodes()
    return node


def readArray(path: Path) -> np.ndarray:
    """Voxels of a volume file as a (k, j, i) array."""
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
