"""Volume nodes to and from files and SimpleITK images, without touching the input node.

The subprocess reads the NRRD written here with SimpleITK (LPS); :func:`imageFromVolume` gives
the planning in this process the same image, so both plan the same grid.
"""

from __future__ import annotations

import pathlib

import SimpleITK as sitk
import slicer
import vtk

from .core import SAINRSlicerError

#: Node reference role from a result volume to its gating-mask labelmap.
MASK_REFERENCE_ROLE = "SAINRSlicerGatingMask"
#: RAS <-> LPS: the first two patient axes change sign.
_RAS_TO_LPS = (-1.0, -1.0, 1.0)


def writeVolume(volume, path: pathlib.Path) -> None:
    """Write a volume node to NRRD (its own IJK-to-RAS, not hardened) with a storage node that
    is not added to the scene, so the node's own storage settings stay untouched."""
    storage = slicer.vtkMRMLNRRDStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(False)
    if not storage.WriteData(volume):
        raise SAINRSlicerError(f"could not write {volume.GetName()} to a temporary file ({path})")


def readVolume(path: pathlib.Path, volume):
    """Read a NRRD file into a node that is not (yet) in the scene; return the node.

    The NRRD storage node keeps the file's voxel order and IJK-to-RAS exactly (the archetype
    reader would flip left-handed grids), so the node gets the geometry the core computed.
    """
    storage = slicer.vtkMRMLNRRDStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(volume) or volume.GetImageData() is None:
        raise SAINRSlicerError(f"could not read the result file {path.name}")
    return volume


def ijkToRASDirections(volume) -> list[list[float]]:
    """3x3 direction cosines (columns = unit vectors of i, j, k in RAS) of a volume node."""
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASDirectionMatrix(matrix)
    return [[matrix.GetElement(row, column) for column in range(3)] for row in range(3)]


def imageFromVolume(volume) -> sitk.Image:
    """The volume as SimpleITK reads the NRRD that :func:`writeVolume` makes of it: same
    voxels, pixel type and components; spacing, origin and direction in LPS."""
    imageData = volume.GetImageData()
    components = imageData.GetNumberOfScalarComponents()
    image = sitk.GetImageFromArray(slicer.util.arrayFromVolume(volume), isVector=components > 1)
    directions = ijkToRASDirections(volume)
    image.SetSpacing(volume.GetSpacing())
    image.SetOrigin([f * o for f, o in zip(_RAS_TO_LPS, volume.GetOrigin(), strict=True)])
    image.SetDirection([_RAS_TO_LPS[r] * directions[r][c] for r in range(3) for c in range(3)])
    return image


def replaceVolumeContent(target, source) -> None:
    """Give ``target`` the voxels and IJK-to-RAS geometry of ``source`` (one Modified event)."""
    matrix = vtk.vtkMatrix4x4()
    source.GetIJKToRASMatrix(matrix)
    wasModifying = target.StartModify()
    target.SetIJKToRASMatrix(matrix)
    target.SetAndObserveImageData(source.GetImageData())
    target.EndModify(wasModifying)


def copyWindowLevel(source, target) -> None:
    """Show ``target`` with the window/level and colour table of ``source``."""
    sourceDisplay, targetDisplay = source.GetDisplayNode(), target.GetDisplayNode()
    if sourceDisplay is None or targetDisplay is None:
        return
    targetDisplay.SetAutoWindowLevel(False)
    targetDisplay.SetWindowLevel(sourceDisplay.GetWindow(), sourceDisplay.GetLevel())
    targetDisplay.SetAndObserveColorNodeID(sourceDisplay.GetColorNodeID())


def placeBeside(source, target) -> None:
    """Put ``target`` under the same subject hierarchy parent (study, folder) as ``source``."""
    shNode = source.GetScene().GetSubjectHierarchyNode()
    sourceItem = shNode.GetItemByDataNode(source)
    if not sourceItem:  # the input is not in the hierarchy (e.g. made by a script)
        return
    parent = shNode.GetItemParent(sourceItem)
    targetItem = shNode.GetItemByDataNode(target) or shNode.CreateItem(parent, target)
    shNode.SetItemParent(targetItem, parent)
