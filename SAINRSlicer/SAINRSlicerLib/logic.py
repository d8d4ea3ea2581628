"""The Logic: everything the panel does, usable from the Python console and tests.

Planning goes through the core's own :func:`sainr.planning.plan_grid` on the image the
subprocess will read (its grid exactly as that process reads it), so the panel's preview and
refusals are those of the run. A run is planned once here; the subprocess plans again only
because it is another process, with what :func:`~SAINRSlicerLib.run.workerArguments` passes
it, and makes the same plan of the grid (it adds the voxel checks and the slice thickness,
which need the model's checkpoint and so PyTorch).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import pathlib
import re
import sys
import tempfile
import traceback
from collections.abc import Callable
from typing import Annotated

import SimpleITK as sitk
import slicer
import vtk

from . import views
from .core import SAINRSlicerError, coreModule, panelWording, resourcePath
from .framework import (
    ScriptedLoadableModuleLogic,
    WithinRange,
    _,
    inSlicerApplication,
    parameterNodeWrapper,
)
from .process import subprocessEnvironment
from .run import ReductionPlan, ReductionRun
from .sceneio import ijkToRASDirections, imageFromVolume, writeVolume
from .torchenv import (
    installedTorchVersion,
    installTorchThroughExtension,
    probeTorch,
    torchRequirement,
    versionTuple,
)

_protocol = coreModule("protocol")
DEFAULT_MODEL = _protocol.DEFAULT_MODEL
DEFAULT_ADAPT_STEPS = _protocol.DEFAULT_ADAPT_STEPS
MAX_ADAPT_STEPS = 10000
#: Model choice meaning "the checkpoint in weightsPath".
WEIGHTS_FILE = "file"
#: Where the slice thickness comes from: the DICOM series' SliceThickness, the core's automatic
#: choice when the run starts (header, else an estimate from the image), or the user.
THICKNESS_DICOM, THICKNESS_AUTO, THICKNESS_USER = "dicom", "auto", "user"
#: DICOM tag of SliceThickness, as Slicer's DICOM database names tags.
SLICE_THICKNESS_TAG = "0018,0050"
#: Devices the Logic accepts: auto (GPU if usable, else CPU), cpu, cuda or cuda:N, mps.
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


@parameterNodeWrapper
class SAINRSlicerParameterNode:
    """The panel's settings, kept in the scene (they survive scene save and load).

    inputVolume: thick-slice volume. outputVolume: volume to overwrite, or None for a new one
    (the panel sets it to the node a run creates, so the next run reuses it). resultVolume:
    the last result (what Compare and the mask overlay show). targetSpacing: output slice
    spacing in mm. sliceThicknessMm: acquired slice thickness in mm (0: automatic);
    sliceThicknessSource: where the panel's value came from (THICKNESS_DICOM, THICKNESS_AUTO,
    THICKNESS_USER; only THICKNESS_USER values are passed on as given). device: auto, cpu,
    cuda:N or mps.
    model: a shipped model name or "file" for weightsPath. showGatingMask, maskOpacity: the
    gating-mask overlay. adaptToVolume, adaptSteps: first fine-tune the model on the input.
    """

    inputVolume: slicer.vtkMRMLScalarVolumeNode
    outputVolume: slicer.vtkMRMLScalarVolumeNode
    resultVolume: slicer.vtkMRMLScalarVolumeNode
    targetSpacing: Annotated[float, WithinRange(0.05, 20.0)] = 1.0
    sliceThicknessMm: Annotated[float, WithinRange(0.0, 100.0)] = 0.0
    sliceThicknessSource: str = ""
    device: str = "auto"
    model: str = DEFAULT_MODEL
    weightsPath: pathlib.Path
    showGatingMask: bool = True
    maskOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    adaptToVolume: bool = False
    adaptSteps: Annotated[int, WithinRange(1, MAX_ADAPT_STEPS)] = DEFAULT_ADAPT_STEPS


class SAINRSlicerLogic(ScriptedLoadableModuleLogic):
    """Everything the panel does, usable from the Python console and tests without the GUI.

    Blocking, e.g. in the Python console::

        output = SAINRSlicerLogic().process(volume, targetSpacing=1.0)

    Non-blocking (the panel): ``run = logic.start(...)``, then ``run.poll()`` until it returns
    False, ``run.cancel()`` to stop.
    """

    def __init__(self, applicationLogic=None) -> None:
        """``applicationLogic`` (vtkMRMLApplicationLogic) fits the compare views to the
        volumes; Slicer's own is used in the application."""
        ScriptedLoadableModuleLogic.__init__(self)
        if applicationLogic is None and inSlicerApplication():
            applicationLogic = slicer.app.applicationLogic()
        self.applicationLogic = applicationLogic
        self._imageCache: tuple[tuple, object] | None = None

    def getParameterNode(self) -> SAINRSlicerParameterNode:
        return SAINRSlicerParameterNode(super().getParameterNode())

    # Planning (the core's planning, no torch)

    def coreImage(self, volume):
        """The SimpleITK image the subprocess will read for ``volume``: its voxels, and its
        grid read from the header of the file the run writes (:func:`fileGrid`); kept until
        the volume changes, since the panel plans on every parameter change."""
        if volume is None:
            raise SAINRSlicerError(_("Select an input volume."))
        if volume.IsA("vtkMRMLLabelMapVolumeNode"):
            raise SAINRSlicerError(
                _("{name} is a labelmap; choose an image volume").format(name=volume.GetName())
            )
        imageData = volume.GetImageData()
        if imageData is None:
            raise SAINRSlicerError(_("{name} has no voxels").format(name=volume.GetName()))
        key = (volume.GetID(), volume.GetMTime(), imageData.GetMTime())
        if self._imageCache is None or self._imageCache[0] != key:
            image = imageFromVolume(volume)
            spacing, origin, direction = fileGrid(volume)
            image.SetSpacing(spacing)
            image.SetOrigin(origin)
            image.SetDirection(direction)
            self._imageCache = (key, image)
        return self._imageCache[1]

    def _corePlan(self, volume, targetSpacing: float | None, axis: int | None, isotropic=False):
        """The core's plan of the grid (:func:`sainr.planning.plan_grid`): to
        ``targetSpacing`` mm, or to isotropic voxels."""
        planning, request, errors = (coreModule(n) for n in ("planning", "request", "errors"))
        image = self.coreImage(volume)
        try:
            if isotropic:
                target = request.Target(isotropic=True, axis=axis)
            else:
                target = request.Target(spacing=targetSpacing, axis=axis)
            return planning.plan_grid(image, target)
        except errors.SainrError as error:
            raise SAINRSlicerError(panelWording(str(error))) from None

    def sliceAxis(self, volume, axis: int | None = None) -> tuple[int, str]:
        """(slice axis, description such as 'k (R-L, sagittal slices)') of a volume node."""
        geometry, errors = coreModule("geometry"), coreModule("errors")
        direction = coreModule("planning").geometry_of(self.coreImage(volume)).direction
        try:
            axis = geometry.detect_slice_axis(volume.GetSpacing(), direction, axis)
        except errors.SainrError as error:
            raise SAINRSlicerError(panelWording(str(error))) from None
        return axis, geometry.axis_label(direction, axis)

    def plan(self, volume, targetSpacing: float, axis: int | None = None) -> ReductionPlan:
        """What reducing ``volume`` to ``targetSpacing`` mm will produce, from the core's
        planning; raises SAINRSlicerError with the core's reason when it is not possible."""
        return ReductionPlan(self._corePlan(volume, targetSpacing, axis))

    def isotropicSpacing(self, volume) -> float:
        """The finest in-plane spacing: the target that gives isotropic voxels."""
        return self._corePlan(volume, None, None, isotropic=True).spacing_out

    def sliceSpacing(self, volume) -> float:
        """Spacing along the detected slice axis: the slice thickness of contiguous slices
        (the panel's default for the slice thickness)."""
        axis, _label = self.sliceAxis(volume)
        return volume.GetSpacing()[axis]

    # Slice thickness

    def dicomSliceThickness(self, volume, database=None) -> float | None:
        """The SliceThickness (0018,0050) of the DICOM series ``volume`` was loaded from, or
        None (not loaded from DICOM, no DICOM database, tag missing or not a positive number).
        ``database``: Slicer's DICOM database (``slicer.dicomDatabase``) by default."""
        if database is None:
            database = getattr(slicer, "dicomDatabase", None)
        return dicomSliceThickness(volume, database)

    def sliceThicknessSuggestion(self, volume, database=None) -> tuple[float, str]:
        """(value, source) the panel fills in for ``volume``: the DICOM SliceThickness, else
        (0, THICKNESS_AUTO): the core chooses when the run starts."""
        value = self.dicomSliceThickness(volume, database)
        return (value, THICKNESS_DICOM) if value is not None else (0.0, THICKNESS_AUTO)

    # Running

    def ensureTorch(self, statusCallback: Callable[[str], None] | None = None) -> bool:
        """Make sure PyTorch is installed for the subprocess; in Slicer, install it through
        the PyTorch extension (it asks the user first). ``statusCallback`` hears that an
        install is starting (it takes minutes). Returns True when PyTorch was installed now.
        Every failure, of any type, is raised as SAINRSlicerError; its details hold the last
        lines the installer printed and the traceback."""
        version = installedTorchVersion()
        if version is not None:
            if versionTuple(version) < versionTuple(torchRequirement()):
                raise SAINRSlicerError(
                    _(
                        "PyTorch {version} is older than SAINRSlicer needs ({requirement}); "
                        "update it in the PyTorch Utils module and restart Slicer."
                    ).format(version=version, requirement=torchRequirement())
                )
            return False
        if statusCallback is not None:
            statusCallback(
                _("Installing PyTorch through the PyTorch extension (several minutes)...")
            )
        printed = OutputTail()
        try:
            with printed.capture():
                self.installTorch()
        except SAINRSlicerError:
            raise
        except Exception as error:  # pip's CalledProcessError, a network or disk error, a bug
            raise SAINRSlicerError(
                _(
                    "PyTorch could not be installed ({reason}); the installer's last lines are "
                    "under Details. Check the internet connection (or proxy), then install "
                    "PyTorch in the PyTorch Utils module, restart Slicer and try again."
                ).format(reason=_reason(error)),
                installerOutput(error, printed.lines()),
            ) from error
        return True

    def installTorch(self) -> None:
        """Install PyTorch (the PyTorch extension in Slicer)."""
        installTorchThroughExtension()

    def start(
        self,
        inputVolume,
        targetSpacing: float,
        outputVolume=None,
        device: str = "auto",
        maskVolume=None,
        weights: str | None = None,
        axis: int | None = None,
        adaptSteps: int = 0,
        saveAdaptedPath: str | None = None,
        sliceThicknessMm: float | None = None,
    ) -> ReductionRun:
        """Start reducing the slice spacing of ``inputVolume`` to ``targetSpacing`` mm in the
        background and return the run (see ReductionRun).

        outputVolume: scalar volume to overwrite; None creates ``<input>_SAINR_<spacing>mm``
        now (``run.outputVolume``; removed again if the run does not succeed). A node this
        Logic created and nobody renamed is renamed for the new spacing when reused.
        device: "auto" (GPU if usable, else CPU), "cpu", "cuda", "cuda:N" or "mps".
        maskVolume: labelmap for the attention mask; None reuses the output's or creates one.
        weights: shipped model name or checkpoint file; None is the bundled default model.
        axis: slice axis (0, 1, 2 = i, j, k); detected (largest spacing) if None.
        adaptSteps: first fine-tune the model for this many steps on pairs made from the
        input's own in-plane detail (0: use the model as it is).
        saveAdaptedPath: also save the adapted weights to this .pt file (needs adaptSteps).
        sliceThicknessMm: acquired slice thickness in mm. None: the DICOM SliceThickness of
        the series the input was loaded from, else the core's automatic choice.
        """
        if not isinstance(device, str) or not DEVICE_PATTERN.fullmatch(device):
            raise SAINRSlicerError(
                _("unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps").format(
                    device=device
                )
            )
        if outputVolume is not None and outputVolume is inputVolume:
            raise SAINRSlicerError(_("the output volume must not be the input volume"))
        if isinstance(adaptSteps, bool) or not isinstance(adaptSteps, int) or adaptSteps < 0:
            raise SAINRSlicerError(f"adaptSteps must be a whole number >= 0, got {adaptSteps!r}")
        if saveAdaptedPath is not None and not adaptSteps:
            raise SAINRSlicerError("saving adapted weights needs adaptSteps > 0")
        plan = self.plan(inputVolume, targetSpacing, axis)
        self.ensureTorch()
        thicknessSource = THICKNESS_USER
        if sliceThicknessMm is None:
            sliceThicknessMm = self.dicomSliceThickness(inputVolume)
            thicknessSource = THICKNESS_AUTO if sliceThicknessMm is None else THICKNESS_DICOM
        options = ["--device", device]
        for option, value in (
            ("--weights", weights),
            ("--adapt-steps", adaptSteps or None),
            ("--save-adapted", saveAdaptedPath),
            (
                "--slice-thickness",
                None if sliceThicknessMm is None else repr(float(sliceThicknessMm)),
            ),
        ):
            if value is not None:
                options += [option, str(value)]
        environment = subprocessEnvironment(
            {"PYTORCH_ENABLE_MPS_FALLBACK": "1"} if device == "mps" else None
        )
        return ReductionRun(
            inputVolume,
            plan,
            options,
            outputVolume,
            maskVolume,
            adaptSteps,
            environment,
            thicknessSource=thicknessSource,
        )

    def process(
        self,
        inputVolume,
        targetSpacing: float,
        outputVolume=None,
        device: str = "auto",
        maskVolume=None,
        progressCallback: Callable[[float, str], None] | None = None,
        weights: str | None = None,
        axis: int | None = None,
        adaptSteps: int = 0,
        saveAdaptedPath: str | None = None,
        sliceThicknessMm: float | None = None,
    ):
        """Reduce the slice spacing of ``inputVolume`` to ``targetSpacing`` mm and wait (the
        Slicer GUI keeps repainting meanwhile): :meth:`start` with the same arguments, then
        the run's ``wait``. ``progressCallback(fraction, message)`` is called as the run
        progresses.

        Returns the output volume node; raises SAINRSlicerError with the reason on failure,
        in which case the scene is unchanged.
        """
        run = self.start(
            inputVolume,
            targetSpacing,
            outputVolume,
            device,
            maskVolume,
            weights=weights,
            axis=axis,
            adaptSteps=adaptSteps,
            saveAdaptedPath=saveAdaptedPath,
            sliceThicknessMm=sliceThicknessMm,
        )
        return run.wait(progressCallback)

    # Models and devices

    def modelCatalog(self) -> dict[str, dict]:
        """Shipped models (name -> entry of Resources/Models/models.json); empty if none."""
        try:
            path = resourcePath("Models/models.json")
        except FileNotFoundError:
            return {}
        return json.loads(path.read_text(encoding="utf-8"))["models"]

    def torchInfo(self, timeout: float = 120.0) -> dict:
        """PyTorch version, GPUs and MPS as the subprocess sees them, without importing torch
        here (see :func:`probeTorch`)."""
        return probeTorch(timeout)

    # Display

    def compareOrientation(self, volume) -> str:
        """Slice view orientation perpendicular to the acquired slices (contains the slice axis)."""
        axis, _label = self.sliceAxis(volume)
        directions = ijkToRASDirections(volume)
        patientAxis = max(range(3), key=lambda row: abs(directions[row][axis]))
        return views.PERPENDICULAR_ORIENTATION[patientAxis]

    def showComparison(
        self, inputVolume, outputVolume, showMask: bool = True, maskOpacity: float = 0.5
    ) -> views.LayoutSnapshot:
        """Side-by-side layout, linked views: input left, output right (with the gating mask
        as label layer), cut perpendicular to the acquired slices. Returns what
        :meth:`restoreLayout` needs to put the views back."""
        if inputVolume is None or outputVolume is None:
            raise SAINRSlicerError(_("Compare needs an input and a result volume"))
        snapshot = views.showComparison(
            inputVolume, outputVolume, self.compareOrientation(inputVolume)
        )
        views.setMaskOverlay(outputVolume, showMask, maskOpacity)
        if self.applicationLogic is not None:
            for name in views.COMPARE_VIEWS:
                self.applicationLogic.GetSliceLogicByLayoutName(name).FitSliceToAll()
        return snapshot

    def restoreLayout(self, snapshot: views.LayoutSnapshot) -> None:
        """Put the compare views and the layout back as they were before showComparison."""
        views.restoreLayout(snapshot)

    def setMaskOverlay(self, outputVolume, visible: bool, opacity: float) -> None:
        """Show (or hide) the result's gating mask over the result in the slice views."""
        views.setMaskOverlay(outputVolume, visible, opacity)


def fileGrid(volume) -> tuple[tuple, tuple, tuple]:
    """(spacing, origin, direction) of ``volume`` exactly as the subprocess reads them: from
    the header of the NRRD :func:`writeVolume` writes, for a 2 x 2 x 2 stand-in with the same
    IJK-to-RAS (the header does not depend on the voxels), read without voxels. Computed from
    the node instead, an oblique direction can differ in its last bit, and so the plans."""
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    voxels = vtk.vtkImageData()
    voxels.SetDimensions(2, 2, 2)
    voxels.AllocateScalars(vtk.VTK_SHORT, 1)
    standIn = slicer.vtkMRMLScalarVolumeNode()
    standIn.SetAndObserveImageData(voxels)
    standIn.SetIJKToRASMatrix(matrix)
    with tempfile.TemporaryDirectory(prefix="sainr-") as folder:
        path = pathlib.Path(folder) / "grid.nrrd"
        writeVolume(standIn, path)
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        return reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection()


def _reason(error: BaseException) -> str:
    """One line naming what failed: 'pip exited with status 1', or the exception's text."""
    returncode = getattr(error, "returncode", None)
    if returncode is not None:
        return _("the installer exited with status {code}").format(code=returncode)
    return f"{type(error).__name__}: {error}"


def dicomSliceThickness(volume, database) -> float | None:
    """SliceThickness (0018,0050) of the first DICOM instance ``volume`` was loaded from
    (node attribute ``DICOM.instanceUIDs``, as Slicer's DICOM module sets it), read from
    ``database`` (a ctkDICOMDatabase: ``fileForInstance``, ``fileValue``). None when any of
    that is missing or the value is not a positive number."""
    uids = (volume.GetAttribute("DICOM.instanceUIDs") or "").split() if volume else []
    if not uids or database is None:
        return None
    try:
        text = database.fileValue(database.fileForInstance(uids[0]), SLICE_THICKNESS_TAG)
        value = float(str(text).split("\\")[0])
    except (ValueError, TypeError, AttributeError, OSError):
        return None
    return value if math.isfinite(value) and value > 0 else None


class OutputTail:
    """The last lines printed (``print``, as Slicer's ``logProcessOutput`` does with the
    installer's output) and logged while :meth:`capture` is active, still shown as usual."""

    def __init__(self, keep: int = 40):
        self._lines: collections.deque[str] = collections.deque(maxlen=keep)
        self._partial = ""

    def lines(self) -> list[str]:
        return [*self._lines, *([self._partial] if self._partial.strip() else [])]

    def write(self, text: str) -> None:
        self._partial += text
        *complete, self._partial = self._partial.split("\n")
        self._lines.extend(line for line in complete if line.strip())

    @contextlib.contextmanager
    def capture(self):
        tail, original = self, sys.stdout

        class Tee:
            def write(self, text):
                tail.write(text)
                return original.write(text)

            def __getattr__(self, name):
                return getattr(original, name)

        class Handler(logging.Handler):
            def emit(self, record):
                tail.write(record.getMessage() + "\n")

        handler = Handler(logging.INFO)
        logging.getLogger().addHandler(handler)
        sys.stdout = Tee()
        try:
            yield self
        finally:
            sys.stdout = original
            logging.getLogger().removeHandler(handler)


def installerOutput(error: BaseException, printedLines: list[str] = ()) -> str:
    """Details of a failed install: the installer's last lines, then the traceback.

    Slicer's ``logProcessOutput`` raises CalledProcessError with the process' stdout as
    ``output``: a file object it has already read to the end (nothing left to read), not
    text; the lines it printed meanwhile are in ``printedLines``."""
    texts = list(printedLines)
    for value in (getattr(error, "output", None), getattr(error, "stderr", None)):
        if hasattr(value, "read"):  # a pipe: whatever is left in it, if it can still be read
            try:
                value = value.read()
            except (OSError, ValueError):
                value = None
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        if isinstance(value, str) and value.strip():
            texts.append(value.rstrip())
    lines = ["The installer's last lines:", *texts] if texts else []
    return "\n".join([*lines, "".join(traceback.format_exception(error))])
