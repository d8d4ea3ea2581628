"""SAINRSlicer: reduce the slice spacing of thick-slice MRI with SA-INR, inside 3D Slicer.

The module is a thin layer over the ``sainr`` core package that ships beside this file:

- the **Logic** writes the input node to a temporary NRRD, runs ``python -m sainr reduce`` in a
  background process (PythonSlicer in Slicer), streams its ``PROGRESS`` lines, and reads the
  result and the gating mask back into the scene. Nothing is added to the scene until the run
  has succeeded, so a cancelled or failed run leaves the scene as it was;
- the **Widget** wires the panel to the Logic and polls the run from a QTimer, so the GUI never
  waits for inference;
- the geometry preview (slice axis, output size) uses the core's torch-free ``geometry`` module
  in this process, so the panel works before PyTorch is installed.

torch is never imported here: in Slicer it comes from the PyTorch extension (PyTorchUtils) and
is only used by the subprocess. Outside Slicer (the PyPI package ``slicer-core``), the Logic
and the parameter node work on real MRML; only the panel needs the application.
"""

import collections
import html
import importlib
import importlib.metadata
import json
import logging
import math
import os
import pathlib
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import types
import typing
import unittest
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import slicer
import vtk
from slicer.util import VTKObservationMixin

try:
    import qt
    from slicer.i18n import tr as _
    from slicer.i18n import translate
    from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
    from slicer.ScriptedLoadableModule import (
        ScriptedLoadableModule,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
        ScriptedLoadableModuleWidget,
    )
except ImportError:
    # Headless (PyPI slicer-core: real MRML, no Qt). The Logic and the parameter node work as in
    # Slicer; the panel needs the application.

    def _(text: str) -> str:
        return text

    def translate(context: str, text: str) -> str:
        return text

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent
            self.moduleName = type(self).__name__

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            raise RuntimeError("the SAINRSlicer panel needs the 3D Slicer application")

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message: str, msec: int = 100) -> None:
            logging.info(message)

    class ScriptedLoadableModuleLogic:
        """The parts of Slicer's base class the Logic uses: the singleton parameter node."""

        def __init__(self, parent=None):
            self.moduleName = type(self).__name__.removesuffix("Logic")

        def getParameterNode(self):
            node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if node is None:
                node = slicer.vtkMRMLScriptedModuleNode()
                node.SetSingletonTag(self.moduleName)
                node.SetAttribute("ModuleName", self.moduleName)
                node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
                slicer.mrmlScene.AddNode(node)
            return node

    @dataclass(frozen=True)
    class WithinRange:
        minimum: float
        maximum: float

        def validate(self, value: float) -> None:
            if not self.minimum <= value <= self.maximum:
                raise ValueError(f"{value} is not within [{self.minimum}, {self.maximum}]")

    @dataclass(frozen=True)
    class Choice:
        choices: tuple

        def validate(self, value) -> None:
            if value not in self.choices:
                raise ValueError(f"{value!r} is not one of {self.choices}")

    class _HeadlessParameter:
        """One attribute of a headless parameter node wrapper, stored in the scripted module
        node exactly as Slicer's parameterNodeWrapper serializers store it (numbers, strings
        and paths as text, bools as "True"/"False", nodes as node references), so scenes
        saved headless open in Slicer with the same parameters."""

        _DEFAULTS: typing.ClassVar[dict] = {float: 0.0, int: 0, str: "", bool: False}

        def __init__(self, name: str, annotation, default):
            if typing.get_origin(annotation) is Annotated:
                self.type, *self.validators = typing.get_args(annotation)
            else:
                self.type, self.validators = annotation, []
            self.name = name
            self.isNode = issubclass(self.type, slicer.vtkMRMLNode)
            if default is not None or self.isNode:
                self.default = default
            else:
                self.default = self._DEFAULTS.get(self.type, self.type())

        def __get__(self, wrapper, owner=None):
            if wrapper is None:
                return self
            node = wrapper.parameterNode
            if self.isNode:
                return node.GetNodeReference(self.name)
            text = node.GetParameter(self.name)
            return text == "True" if self.type is bool else self.type(text)

        def __set__(self, wrapper, value) -> None:
            for validator in self.validators:
                validator.validate(value)
            node = wrapper.parameterNode
            if self.isNode:
                node.SetParameter(self.name, "")
                node.SetNodeReferenceID(self.name, value.GetID() if value is not None else None)
            elif self.type is bool:
                node.SetParameter(self.name, "True" if value else "False")
            else:
                node.SetParameter(self.name, str(value))

    def parameterNodeWrapper(cls):
        """Headless stand-in for slicer.parameterNodeWrapper (attribute access, defaults)."""
        hints = typing.get_type_hints(cls, include_extras=True)
        parameters = [_HeadlessParameter(n, h, cls.__dict__.get(n)) for n, h in hints.items()]
        for parameter in parameters:
            setattr(cls, parameter.name, parameter)

        def __init__(self, parameterNode):
            self.parameterNode = parameterNode
            for parameter in parameters:
                if not parameterNode.HasParameter(parameter.name):
                    parameter.__set__(self, parameter.default)

        cls.__init__ = __init__
        return cls


#: Folder of this file; the core package ``sainr`` lies beside it (repository and install tree).
MODULE_DIR = pathlib.Path(__file__).resolve().parent
DEVICES = ("auto", "cuda", "cpu")
DEFAULT_MODEL = "default"
#: Model choice meaning "the checkpoint in weightsPath".
WEIGHTS_FILE = "file"
#: Node reference role from a result volume to its gating-mask labelmap.
MASK_REFERENCE_ROLE = "SAINRSlicerGatingMask"
#: PyTorch versions the core supports (its pyproject.toml); installed through PyTorchUtils.
TORCH_REQUIREMENT = ">=2.1"
#: Adaptation steps the panel offers (sainr.adapt.AdaptConfig.steps is the default).
DEFAULT_ADAPT_STEPS = 200
MAX_ADAPT_STEPS = 10000
#: Stdout tags of the core's progress lines: ``ADAPT done total`` while it adapts the model to
#: the input (sainr.adapt.ADAPT_TAG), ``PROGRESS done total`` while it reconstructs.
ADAPT_TAG = "ADAPT"
PROGRESS_TAG = "PROGRESS"
#: Share of the progress bar given to adaptation when a run adapts first (the rest is the
#: reconstruction); the status line says which phase is running and its own time left.
ADAPT_PROGRESS_SHARE = 0.5
#: Slice views of SlicerLayoutSideBySideView: input left, output right.
COMPARE_VIEWS = ("Red", "Yellow")
#: View orientation that contains the slice axis, by the patient axis the slices are stacked on
#: (R-L: sagittal slices, A-P: coronal, S-I: axial). That is where thin slices show.
PERPENDICULAR_ORIENTATION = {0: "Coronal", 1: "Sagittal", 2: "Coronal"}

CONSOLE_EXAMPLE = """\
import SAINRSlicer

logic = SAINRSlicer.SAINRSlicerLogic()
for volume in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
    if volume.IsA("vtkMRMLLabelMapVolumeNode"):
        continue
    try:
        output = logic.process(volume, targetSpacing=1.0)
    except SAINRSlicer.SAINRSlicerError as error:
        print(f"{volume.GetName()}: skipped ({error})")
    else:
        print(f"{volume.GetName()} -> {output.GetName()}")
"""


class SAINRSlicerError(RuntimeError):
    """A reduction that cannot start or did not finish; the message says why (for the panel)."""


def resourcePath(relativePath: str) -> pathlib.Path:
    """A file of the extension's Resources folder: beside this file in the install tree, at
    the repository root in a source checkout (which Slicer can load the module from, too)."""
    for base in (MODULE_DIR / "Resources", MODULE_DIR.parent / "Resources"):
        if (base / relativePath).exists():
            return base / relativePath
    raise FileNotFoundError(f"SAINRSlicer resource not found: Resources/{relativePath}")


def coreModule(name: str) -> types.ModuleType:
    """A torch-free module of the core (``geometry``, ``errors``).

    The ``sainr`` package imports torch only when its inference API is used, so the panel's
    geometry preview never loads PyTorch into Slicer's own process (which would block a later
    PyTorch install or upgrade until restart).
    """
    try:
        return importlib.import_module(f"sainr.{name}")
    except ImportError as exc:
        raise SAINRSlicerError(
            f"the SAINRSlicer core package 'sainr' is missing (expected in {MODULE_DIR}); "
            "reinstall the extension"
        ) from exc


def formatMillimetres(value: float) -> str:
    """'1.0', '0.75', '0.3125': at least one decimal, at most four (node names, labels)."""
    text = f"{value:.4f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def formatDuration(seconds: float) -> str:
    """Short human duration for progress messages: '8 s', '2 min 5 s', '1 h 3 min'."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def describeTorch(info: dict) -> str:
    """One line for the panel from :meth:`SAINRSlicerLogic.torchInfo`."""
    if info.get("error"):
        return _("PyTorch does not load: {error}").format(error=info["error"])
    if info.get("torch") is None:
        return _(
            "PyTorch is not installed: it is installed through the PyTorch extension at the first run."
        )
    text = _("PyTorch {version}").format(version=info["torch"])
    if info.get("gpus"):
        gpus = ", ".join(f"{gpu['name']} ({gpu['memoryGB']:.0f} GB)" for gpu in info["gpus"])
        return text + " · " + _("GPU: {gpus}").format(gpus=gpus)
    return text + " · " + _("no usable GPU: runs on the CPU (slower)")


def _inSlicerApplication() -> bool:
    return hasattr(slicer, "app")


def _installedTorchVersion() -> str | None:
    """torch's installed version, read from package metadata (torch is not imported)."""
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def _versionTuple(version: str) -> tuple[int, ...]:
    numbers = version.split("+")[0].split(".")
    return tuple(int(n) for n in numbers[:2] if n.isdigit())


def _pythonExecutable() -> str:
    """PythonSlicer in Slicer (same Python and packages, no GUI); this interpreter headless."""
    if not _inSlicerApplication():
        return sys.executable
    executable = shutil.which("PythonSlicer")
    if executable is None:
        raise SAINRSlicerError("PythonSlicer was not found next to Slicer; reinstall Slicer")
    return executable


def _subprocessEnvironment() -> dict[str, str]:
    """This process' environment with the module folder first on PYTHONPATH, so that the
    ``sainr`` installed beside this file is the one that runs."""
    env = dict(os.environ)
    paths = [str(MODULE_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _noConsoleWindow() -> dict:
    """Popen options that keep Windows from opening a console window for the subprocess."""
    if os.name == "nt":
        return {"creationflags": subprocess.CREATE_NO_WINDOW}
    return {}


def _killProcessTree(process: subprocess.Popen) -> None:
    """Kill a process and everything it started, and wait (up to a second) until they are gone."""
    try:
        import psutil
    except ImportError:  # not every Slicer ships psutil; the core CLI starts no child processes
        process.kill()
        process.wait(timeout=1)
        return
    try:
        parent = psutil.Process(process.pid)
        members = [*parent.children(recursive=True), parent]
    except psutil.NoSuchProcess:
        members = []
    for member in members:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(members, timeout=1)
    process.wait(timeout=1)


def _pump(stream, name: str, lines: queue.Queue) -> None:
    """Reader thread: forward every line of a subprocess stream to the queue until EOF."""
    with stream:
        for line in stream:
            lines.put((name, line.rstrip("\r\n")))


def _writeVolume(volume, path: pathlib.Path) -> None:
    """Write a volume node to NRRD (its own IJK-to-RAS, not hardened) with a storage node that
    is not added to the scene, so the node's own storage settings stay untouched."""
    storage = slicer.vtkMRMLNRRDStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(False)
    if not storage.WriteData(volume):
        raise SAINRSlicerError(f"could not write {volume.GetName()} to a temporary file ({path})")


def _readVolume(path: pathlib.Path, volume):
    """Read a NRRD file into a node that is not (yet) in the scene; return the node.

    The NRRD storage node keeps the file's voxel order and IJK-to-RAS exactly (the archetype
    reader would flip left-handed grids), so the node gets the geometry the core computed.
    """
    storage = slicer.vtkMRMLNRRDStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(volume) or volume.GetImageData() is None:
        raise SAINRSlicerError(f"could not read the result file {path.name}")
    return volume


def _replaceVolumeContent(target, source) -> None:
    """Give ``target`` the voxels and IJK-to-RAS geometry of ``source`` (one Modified event)."""
    matrix = vtk.vtkMatrix4x4()
    source.GetIJKToRASMatrix(matrix)
    wasModifying = target.StartModify()
    target.SetIJKToRASMatrix(matrix)
    target.SetAndObserveImageData(source.GetImageData())
    target.EndModify(wasModifying)


def _copyWindowLevel(source, target) -> None:
    """Show ``target`` with the window/level and colour table of ``source``."""
    sourceDisplay, targetDisplay = source.GetDisplayNode(), target.GetDisplayNode()
    if sourceDisplay is None or targetDisplay is None:
        return
    targetDisplay.SetAutoWindowLevel(False)
    targetDisplay.SetWindowLevel(sourceDisplay.GetWindow(), sourceDisplay.GetLevel())
    targetDisplay.SetAndObserveColorNodeID(sourceDisplay.GetColorNodeID())


def _placeBeside(source, target) -> None:
    """Put ``target`` under the same subject hierarchy parent (study, folder) as ``source``."""
    shNode = source.GetScene().GetSubjectHierarchyNode()
    sourceItem = shNode.GetItemByDataNode(source)
    if not sourceItem:  # the input is not in the hierarchy (e.g. made by a script)
        return
    parent = shNode.GetItemParent(sourceItem)
    targetItem = shNode.GetItemByDataNode(target) or shNode.CreateItem(parent, target)
    shNode.SetItemParent(targetItem, parent)


def _ijkToRASDirections(volume) -> list[list[float]]:
    """3x3 direction cosines (columns = unit vectors of i, j, k in RAS) of a volume node."""
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASDirectionMatrix(matrix)
    return [[matrix.GetElement(row, column) for column in range(3)] for row in range(3)]


def _sliceView(scene, layoutName: str):
    """(slice node, slice composite node) of a slice view such as "Red"."""
    sliceNode = scene.GetSingletonNode(layoutName, "vtkMRMLSliceNode")
    compositeNode = slicer.vtkMRMLSliceLogic.GetSliceCompositeNode(sliceNode) if sliceNode else None
    if compositeNode is None:
        raise SAINRSlicerError(f"the {layoutName} slice view does not exist in this scene")
    return sliceNode, compositeNode


def _layoutNode(scene):
    layoutNode = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    if layoutNode is None:
        raise SAINRSlicerError("the scene has no layout node (no views to compare in)")
    return layoutNode


@dataclass(frozen=True)
class ReductionPlan:
    """What a reduction will do, computed by the core's geometry before anything runs."""

    inputSize: tuple[int, int, int]
    inputSpacing: tuple[float, float, float]
    axis: int
    axisLabel: str
    targetSpacing: float
    outputSize: tuple[int, int, int]

    @property
    def outputSpacing(self) -> tuple[float, float, float]:
        spacing = list(self.inputSpacing)
        spacing[self.axis] = self.targetSpacing
        return tuple(spacing)

    @property
    def factor(self) -> float:
        return self.inputSpacing[self.axis] / self.targetSpacing


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
    """The layout and the compare views as they were before :meth:`showComparison`."""

    layoutNode: object  # vtkMRMLLayoutNode
    arrangement: int
    views: dict[str, ViewState]


class ReductionRun:
    """One reduction in a background process.

    Call :meth:`poll` regularly (the panel does it from a QTimer, :meth:`wait` in a loop): it
    handles what the process printed (progress, notes, errors) and, once the process has
    succeeded, reads the result into the scene. :meth:`cancel` kills the process tree. The
    temporary folder is removed whichever way the run ends.

    With ``adaptSteps`` > 0 the process first adapts the model to the input (``ADAPT`` lines),
    then reconstructs (``PROGRESS`` lines): ``phase`` says which, ``fraction`` covers both.
    """

    RUNNING, SUCCEEDED, FAILED, CANCELLED = "running", "succeeded", "failed", "cancelled"

    def __init__(
        self,
        inputVolume,
        plan: ReductionPlan,
        outputVolume=None,
        maskVolume=None,
        device: str = "auto",
        weights: str | None = None,
        axis: int | None = None,
        adaptSteps: int = 0,
        saveAdaptedPath: str | None = None,
    ):
        self.inputVolume = inputVolume
        self.plan = plan
        self.outputVolume = outputVolume
        self.maskVolume = maskVolume
        self.adaptSteps = adaptSteps
        self.state = self.RUNNING
        self.fraction = 0.0
        self.phase: str | None = None  # ADAPT_TAG, then PROGRESS_TAG
        self.phaseFraction = 0.0
        self.adaptDone = 0
        self.notes: list[str] = []
        self.error: str | None = None
        self._coreMessage: str | None = None
        self._stderrTail: collections.deque[str] = collections.deque(maxlen=12)
        self._started = time.monotonic()
        self._finished: float | None = None
        self._progressStart: tuple[float, float] | None = None
        self._lines: queue.Queue = queue.Queue()
        self._tempDir = pathlib.Path(tempfile.mkdtemp(prefix="sainr-"))
        try:
            inputPath = self._tempDir / "input.nrrd"
            _writeVolume(inputVolume, inputPath)
            self._process = subprocess.Popen(
                self._command(inputPath, device, weights, axis, saveAdaptedPath),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                encoding="utf-8",
                errors="replace",
                env=_subprocessEnvironment(),
                **_noConsoleWindow(),
            )
        except BaseException:
            self._removeTempDir()
            raise
        self._readers = [
            threading.Thread(target=_pump, args=(stream, name, self._lines), daemon=True)
            for stream, name in ((self._process.stdout, "stdout"), (self._process.stderr, "stderr"))
        ]
        for reader in self._readers:
            reader.start()

    @property
    def outputPath(self) -> pathlib.Path:
        return self._tempDir / "output.nrrd"

    @property
    def maskPath(self) -> pathlib.Path:
        return self._tempDir / "mask.nrrd"

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def running(self) -> bool:
        return self.state == self.RUNNING

    def _command(
        self,
        inputPath: pathlib.Path,
        device: str,
        weights: str | None,
        axis: int | None,
        saveAdaptedPath: str | None,
    ) -> list[str]:
        command = [
            _pythonExecutable(),
            "-m",
            "sainr",
            "reduce",
            str(inputPath),
            str(self.outputPath),
            "--spacing",
            repr(float(self.plan.targetSpacing)),
            "--mask",
            str(self.maskPath),
            "--device",
            device,
            "--progress",
            "lines",
        ]
        if weights is not None:
            command += ["--weights", str(weights)]
        if axis is not None:
            command += ["--axis", str(axis)]
        if self.adaptSteps:
            command += ["--adapt-steps", str(self.adaptSteps)]
        if saveAdaptedPath is not None:
            command += ["--save-adapted", str(saveAdaptedPath)]
        return command

    def remainingSeconds(self) -> float | None:
        """Estimated seconds left in the current phase, from its progress rate since its first
        progress line."""
        if self._progressStart is None:
            return None
        startTime, startFraction = self._progressStart
        elapsed = time.monotonic() - startTime
        if self.phaseFraction <= startFraction or elapsed <= 0:
            return None
        return (1.0 - self.phaseFraction) * elapsed / (self.phaseFraction - startFraction)

    @property
    def message(self) -> str:
        """Status line for the panel or a progress callback."""
        if self.state == self.SUCCEEDED:
            text = _("Done in {time}: {name}, {slices} slices at {spacing} mm.").format(
                time=formatDuration(self._finished - self._started),
                name=self.outputVolume.GetName(),
                slices=self.plan.outputSize[self.plan.axis],
                spacing=formatMillimetres(self.plan.targetSpacing),
            )
            if self.adaptSteps:
                text += " " + _("Model adapted to the input for {steps} steps.").format(
                    steps=self.adaptSteps
                )
            return text
        if self.state == self.FAILED:
            return _("Failed: {reason}").format(reason=self.error)
        if self.state == self.CANCELLED:
            return _("Cancelled; the scene is unchanged.")
        remaining = self.remainingSeconds()
        if self.phase is None:
            text = _("Starting: loading PyTorch and the model...")
        elif self.phase == ADAPT_TAG:
            text = _("Adapting to this volume: {done}/{total} steps").format(
                done=self.adaptDone, total=self.adaptSteps
            )
            if remaining is not None:
                text += " · " + _("about {time} until the reconstruction").format(
                    time=formatDuration(remaining)
                )
        else:
            text = _("Reducing spacing: {percent} %").format(percent=int(100 * self.phaseFraction))
            if remaining is not None:
                text += " · " + _("about {time} left").format(time=formatDuration(remaining))
        if self.notes:
            text += " · " + _("note: {note}").format(note=self.notes[-1])
        return text

    def poll(self) -> bool:
        """Handle the process' new output; finish the run when the process has ended.
        Returns True while the run is still going."""
        if not self.running:
            return False
        self._drain()
        if self._process.poll() is None or any(reader.is_alive() for reader in self._readers):
            return True
        self._drain()
        self._finish()
        return False

    def wait(
        self, progressCallback: Callable[[float, str], None] | None = None, interval: float = 0.05
    ):
        """Block until the run ends. Returns the output node, or raises SAINRSlicerError with
        the reason. An exception meanwhile (Ctrl+C, an error in the callback) cancels the run."""
        reported = None
        try:
            while self.poll():
                if progressCallback is not None and (self.fraction, self.message) != reported:
                    reported = (self.fraction, self.message)
                    progressCallback(*reported)
                time.sleep(interval)
        except BaseException:
            self.cancel()
            raise
        if self.state != self.SUCCEEDED:
            raise SAINRSlicerError(self.error)
        if progressCallback is not None:
            progressCallback(1.0, self.message)
        return self.outputVolume

    def cancel(self) -> None:
        """Stop the process and its children now. The scene is not touched."""
        if not self.running:
            return
        _killProcessTree(self._process)
        for reader in self._readers:
            reader.join(timeout=1)
        self.state = self.CANCELLED
        self._removeTempDir()

    def _drain(self) -> None:
        while True:
            try:
                stream, line = self._lines.get_nowait()
            except queue.Empty:
                return
            self.handleLine(stream, line)

    def handleLine(self, stream: str, line: str) -> None:
        """Interpret one line of the core CLI's protocol: ``ADAPT done total`` (adaptation
        steps) and ``PROGRESS done total`` (reconstruction) on stdout; ``note: ...``,
        ``sainr: error: ...`` (user error) and ``sainr: ...`` (internal error) on stderr."""
        if stream == "stdout":
            parts = line.split()
            if (
                len(parts) == 3
                and parts[0] in (ADAPT_TAG, PROGRESS_TAG)
                and parts[1].isdigit()
                and parts[2].isdigit()
            ):
                if parts[0] == ADAPT_TAG:
                    self.adaptDone = int(parts[1])
                self._setProgress(parts[0], int(parts[1]) / max(int(parts[2]), 1))
            return
        self._stderrTail.append(line)
        if line.startswith("note: "):
            self.notes.append(line.removeprefix("note: "))
        elif line.startswith("sainr: error: "):
            self._coreMessage = line.removeprefix("sainr: error: ")
        elif line.startswith("sainr: "):
            self._coreMessage = line.removeprefix("sainr: ")

    def _setProgress(self, phase: str, fraction: float) -> None:
        """Progress within ``phase``; ``fraction`` of the whole run: adaptation fills the first
        ADAPT_PROGRESS_SHARE of it when the run adapts, the reconstruction the rest."""
        now = time.monotonic()
        # a new phase, or a restart within one (the core retrying with a smaller budget)
        if phase != self.phase or fraction < self.phaseFraction:
            self._progressStart = (now, fraction)
        self.phase, self.phaseFraction = phase, fraction
        share = ADAPT_PROGRESS_SHARE if self.adaptSteps else 0.0
        if phase == ADAPT_TAG:
            self.fraction = share * fraction
        else:
            self.fraction = share + (1.0 - share) * fraction

    def _failureMessage(self) -> str:
        if self._coreMessage:
            return self._coreMessage
        tail = " | ".join(line for line in self._stderrTail if line.strip())
        return f"the SA-INR process stopped with exit code {self._process.returncode}" + (
            f": {tail}" if tail else ""
        )

    def _finish(self) -> None:
        self._finished = time.monotonic()
        try:
            if self._process.returncode != 0:
                raise SAINRSlicerError(self._failureMessage())
            self._importResults()
        except Exception as error:
            self.state, self.error = self.FAILED, str(error)
            if not isinstance(error, SAINRSlicerError):
                raise
        else:
            self.fraction, self.state = 1.0, self.SUCCEEDED
        finally:
            self._removeTempDir()

    def _importResults(self) -> None:
        """Read the result files, then create or update the output and mask nodes."""
        image = _readVolume(self.outputPath, slicer.vtkMRMLScalarVolumeNode())
        mask = _readVolume(self.maskPath, slicer.vtkMRMLLabelMapVolumeNode())
        scene = self.inputVolume.GetScene()
        if self.outputVolume is None:
            name = f"{self.inputVolume.GetName()}_{formatMillimetres(self.plan.targetSpacing)}mm"
            self.outputVolume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        if self.maskVolume is None:
            self.maskVolume = self.outputVolume.GetNodeReference(MASK_REFERENCE_ROLE)
        if self.maskVolume is None:
            name = f"{self.outputVolume.GetName()}_gating"
            self.maskVolume = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", name)
        transformID = self.inputVolume.GetTransformNodeID()
        for target, source in ((self.outputVolume, image), (self.maskVolume, mask)):
            _replaceVolumeContent(target, source)
            if target.GetDisplayNode() is None:
                target.CreateDefaultDisplayNodes()
            target.SetAndObserveTransformNodeID(transformID)
            _placeBeside(self.inputVolume, target)
        _copyWindowLevel(self.inputVolume, self.outputVolume)
        self.outputVolume.SetNodeReferenceID(MASK_REFERENCE_ROLE, self.maskVolume.GetID())

    def _removeTempDir(self) -> None:
        shutil.rmtree(self._tempDir, ignore_errors=True)


#
# Module
#


class SAINRSlicer(ScriptedLoadableModule):
    """Module metadata (title, category, help) shown by Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SA-INR Reduce Spacing")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Filtering")]
        self.parent.dependencies = []  # PyTorch is installed on demand through PyTorchUtils
        self.parent.contributors = ["SAINRSlicer contributors"]
        self.parent.helpText = helpText()
        self.parent.acknowledgementText = _(
            "SA-INR: Wang et al., <i>Spatial attention-based implicit neural representation for "
            "arbitrary reduction of MRI slice spacing</i>, IEEE JBHI 2024. "
            "The bundled sample and model card list their data sources and licences."
        )


def helpText() -> str:
    """The module's help: what it does, how to use the panel, and the console API."""
    return (
        _(
            "<p>Reduce the slice spacing of thick-slice MRI (make thin slices between the acquired "
            "ones) with SA-INR, a spatial-attention implicit neural representation.</p>"
            "<p>Select the input volume; its spacing and detected slice axis are shown. Set the "
            "target slice spacing (or click <b>Isotropic</b>), then click <b>Reduce Spacing</b>. "
            "The output keeps the input's origin and orientation; only the spacing along the slice "
            "axis changes. <b>Compare</b> shows input and output side by side, cut perpendicular to "
            "the acquired slices, with the gating mask (where SA-INR used slice attention) as an "
            "overlay.</p>"
            "<p><b>Advanced · Adapt to this volume</b> first fine-tunes the model for the given "
            "number of steps on training pairs made from the volume's own in-plane detail, then "
            "reconstructs with it: slower, and it can help on contrasts unlike the training "
            "data.</p>"
            "<p>A GPU is used when PyTorch can use one (device <i>auto</i>); the CPU works too, "
            "more slowly. PyTorch is installed through the PyTorch extension at the first run. "
            "Needs 3D Slicer 5.10 or later (Python 3.12).</p>"
            "<p>From the Python console, for every image volume in the scene:</p>"
        )
        + f"<pre>{html.escape(CONSOLE_EXAMPLE)}</pre>"
    )


#
# Parameter node
#


@parameterNodeWrapper
class SAINRSlicerParameterNode:
    """The panel's settings, kept in the scene (they survive scene save and load).

    inputVolume: thick-slice volume. outputVolume: volume to overwrite, or None for a new one.
    resultVolume: the last result (what Compare and the mask overlay show). targetSpacing:
    output slice spacing in mm. device: auto, cuda or cpu. model: a shipped model name or
    "file" for weightsPath. showGatingMask, maskOpacity: the gating-mask overlay.
    adaptToVolume, adaptSteps: first fine-tune the model on the input for that many steps.
    """

    inputVolume: slicer.vtkMRMLScalarVolumeNode
    outputVolume: slicer.vtkMRMLScalarVolumeNode
    resultVolume: slicer.vtkMRMLScalarVolumeNode
    targetSpacing: Annotated[float, WithinRange(0.05, 20.0)] = 1.0
    device: Annotated[str, Choice(DEVICES)] = "auto"
    model: str = DEFAULT_MODEL
    weightsPath: pathlib.Path
    showGatingMask: bool = True
    maskOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    adaptToVolume: bool = False
    adaptSteps: Annotated[int, WithinRange(1, MAX_ADAPT_STEPS)] = DEFAULT_ADAPT_STEPS


#
# Widget
#


class SAINRSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: parameters bound to the parameter node, a run polled from a QTimer."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run: ReductionRun | None = None
        self._layoutSnapshot: LayoutSnapshot | None = None
        self._torchInfo: dict | None = None
        self._timer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(str(resourcePath("UI/SAINRSlicer.ui")))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SAINRSlicerLogic()

        self._populateModels()
        self.ui.progressBar.hide()
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.timeout.connect(self._onTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.clicked.connect(self.onApplyButton)
        self.ui.isotropicButton.clicked.connect(self.onIsotropicButton)
        self.ui.modelComboBox.currentIndexChanged.connect(self.onModelChanged)
        self.ui.compareButton.clicked.connect(self.onCompareButton)
        self.ui.restoreLayoutButton.clicked.connect(self.onRestoreLayoutButton)
        self.ui.showMaskCheckBox.toggled.connect(self._updateMaskOverlay)
        self.ui.maskOpacitySlider.valueChanged.connect(self._updateMaskOverlay)

        self.initializeParameterNode()
        self._startTorchProbe()

    def cleanup(self) -> None:
        """Called when the module is unloaded or the application closes."""
        if self._run is not None:
            self._run.cancel()
        if self._timer is not None:
            self._timer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        if self._run is not None:
            self._cancelRun()
        self._layoutSnapshot = None
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Use the scene's parameter node; pick the first image volume as input if none."""
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            volumes = [
                v
                for v in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                if not v.IsA("vtkMRMLLabelMapVolumeNode")
            ]
            if volumes:
                self._parameterNode.inputVolume = volumes[0]

    def setParameterNode(self, parameterNode) -> None:
        """Bind the panel to a parameter node (SlicerParameterName properties in the .ui)."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified
            )
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified
            )
            self._onParameterNodeModified()

    def _populateModels(self) -> None:
        combo = self.ui.modelComboBox
        for name, entry in self.logic.modelCatalog().items():
            combo.addItem(_("Bundled default") if name == DEFAULT_MODEL else name, name)
            combo.setItemData(combo.count - 1, entry.get("description", ""), qt.Qt.ToolTipRole)
        combo.addItem(_("Weights file"), WEIGHTS_FILE)

    def _selectedWeights(self) -> str | None:
        """The ``weights`` argument for the Logic: None (shipped default), a name or a file."""
        model = self._parameterNode.model
        if model == WEIGHTS_FILE:
            return str(self._parameterNode.weightsPath)
        return None if model == DEFAULT_MODEL else model

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        """Refresh what derives from the parameters: geometry preview, button states."""
        parameters = self._parameterNode
        if parameters is None:
            return
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        combo.currentIndex = max(combo.findData(parameters.model), 0)
        combo.blockSignals(wasBlocked)
        self.ui.weightsPathLineEdit.enabled = parameters.model == WEIGHTS_FILE and self._run is None
        self.ui.adaptStepsSpinBox.enabled = parameters.adaptToVolume and self._run is None

        problem = self._updateGeometryLabels(parameters.inputVolume, parameters.targetSpacing)
        if (
            problem is None
            and parameters.model == WEIGHTS_FILE
            and not parameters.weightsPath.is_file()
        ):
            problem = _("Choose a weights file (.pt).")
        if self._run is None:
            self.ui.applyButton.enabled = problem is None
            self.ui.applyButton.toolTip = problem or _("Run SA-INR in the background.")
        self.ui.compareButton.enabled = bool(parameters.inputVolume and parameters.resultVolume)
        self.ui.restoreLayoutButton.enabled = self._layoutSnapshot is not None

    def _updateGeometryLabels(self, volume, targetSpacing: float) -> str | None:
        """Show spacing, slice axis and output size; return why a run is impossible, or None."""
        if volume is None:
            for label in (self.ui.spacingLabel, self.ui.axisLabel, self.ui.outputSizeLabel):
                label.text = "-"
            return _("Select an input volume.")
        spacing = volume.GetSpacing()
        self.ui.spacingLabel.text = " × ".join(f"{s:.4g}" for s in spacing) + " mm (i × j × k)"
        try:
            self.ui.axisLabel.text = self.logic.sliceAxis(volume)[1]
        except SAINRSlicerError as error:
            self.ui.axisLabel.text = str(error)
        try:
            plan = self.logic.plan(volume, targetSpacing)
        except SAINRSlicerError as error:
            self.ui.outputSizeLabel.text = str(error)
            return str(error)
        self.ui.outputSizeLabel.text = _(
            "{size} voxels, {slices} slices at {spacing} mm ({factor:.3g}× finer)"
        ).format(
            size=" × ".join(str(n) for n in plan.outputSize),
            slices=plan.outputSize[plan.axis],
            spacing=formatMillimetres(plan.targetSpacing),
            factor=plan.factor,
        )
        return None

    def onIsotropicButton(self) -> None:
        """Target spacing = the finest in-plane spacing (rounded down to the spin box's step)."""
        with slicer.util.tryWithErrorDisplay(
            _("Cannot compute an isotropic spacing."), waitCursor=False
        ):
            spacing = self.logic.isotropicSpacing(self._parameterNode.inputVolume)
            scale = 10**self.ui.targetSpacingSpinBox.decimals
            self._parameterNode.targetSpacing = math.floor(spacing * scale) / scale

    def onModelChanged(self, index: int) -> None:
        self._parameterNode.model = self.ui.modelComboBox.itemData(index)

    def onApplyButton(self) -> None:
        """Start a run, or cancel the one in progress (the button reads Cancel then)."""
        if self._run is not None:
            self._cancelRun()
            return
        parameters = self._parameterNode
        try:
            with slicer.util.WaitCursor():
                self._run = self.logic.start(
                    parameters.inputVolume,
                    parameters.targetSpacing,
                    parameters.outputVolume,
                    parameters.device,
                    weights=self._selectedWeights(),
                    adaptSteps=parameters.adaptSteps if parameters.adaptToVolume else 0,
                )
        except (SAINRSlicerError, OSError) as error:
            self._showStatus(_("Cannot start: {reason}").format(reason=error), error=True)
            return
        self._setRunning(True)
        self._showStatus(self._run.message)
        self._timer.start()

    def _cancelRun(self) -> None:
        self._run.cancel()
        self._showStatus(self._run.message)
        self._endRun()

    def _onTimer(self) -> None:
        run = self._run
        with slicer.util.tryWithErrorDisplay(
            _("Reading the SA-INR result failed."), waitCursor=False
        ):
            if run.poll():
                self.ui.progressBar.value = int(100 * run.fraction)
                self._showStatus(run.message)
                return
        run.cancel()  # only does something if poll() failed: leave no process behind
        self._showStatus(run.message, error=run.state == ReductionRun.FAILED)
        self._endRun()
        if run.state == ReductionRun.SUCCEEDED:
            self._showResult(run.outputVolume, run.maskVolume)

    def _endRun(self) -> None:
        self._timer.stop()
        self._run = None
        self._setRunning(False)
        self._onParameterNodeModified()

    def _setRunning(self, running: bool) -> None:
        self.ui.applyButton.text = _("Cancel") if running else _("Reduce Spacing")
        self.ui.applyButton.enabled = True
        self.ui.progressBar.value = 0
        self.ui.progressBar.visible = running
        for widget in (
            self.ui.inputSelector,
            self.ui.targetSpacingSpinBox,
            self.ui.isotropicButton,
            self.ui.deviceComboBox,
            self.ui.modelComboBox,
            self.ui.weightsPathLineEdit,
            self.ui.adaptCheckBox,
            self.ui.adaptStepsSpinBox,
            self.ui.outputSelector,
        ):
            widget.enabled = not running

    def _showStatus(self, text: str, error: bool = False) -> None:
        self.ui.statusLabel.text = text
        self.ui.statusLabel.styleSheet = "color: #c62828" if error else ""

    def _showResult(self, outputVolume, maskVolume) -> None:
        """Show the new result in the slice views, with the mask overlay if it is on."""
        parameters = self.logic.getParameterNode()  # also when the panel was left meanwhile
        parameters.resultVolume = outputVolume
        showMask = parameters.showGatingMask
        slicer.util.setSliceViewerLayers(
            background=outputVolume,
            label=maskVolume if showMask else None,
            labelOpacity=parameters.maskOpacity,
            fit=True,
        )

    def _updateMaskOverlay(self) -> None:
        result = self._parameterNode.resultVolume if self._parameterNode else None
        if result is not None:
            self.logic.setMaskOverlay(
                result, self.ui.showMaskCheckBox.checked, self.ui.maskOpacitySlider.value
            )

    def onCompareButton(self) -> None:
        parameters = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Compare failed."), waitCursor=True):
            snapshot = self.logic.showComparison(
                parameters.inputVolume,
                parameters.resultVolume,
                showMask=parameters.showGatingMask,
                maskOpacity=parameters.maskOpacity,
            )
            if self._layoutSnapshot is None:  # keep the layout from before the first Compare
                self._layoutSnapshot = snapshot
            self.ui.restoreLayoutButton.enabled = True

    def onRestoreLayoutButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Restoring the layout failed."), waitCursor=False):
            self.logic.restoreLayout(self._layoutSnapshot)
        self._layoutSnapshot = None
        self.ui.restoreLayoutButton.enabled = False

    def _startTorchProbe(self) -> None:
        """Ask a subprocess what PyTorch and GPU are available (torch stays out of Slicer)."""

        def probe() -> None:
            self._torchInfo = self.logic.torchInfo()

        threading.Thread(target=probe, daemon=True).start()
        qt.QTimer.singleShot(500, self._showTorchInfo)

    def _showTorchInfo(self) -> None:
        if self._torchInfo is None:
            qt.QTimer.singleShot(500, self._showTorchInfo)
            return
        self.ui.deviceInfoLabel.text = describeTorch(self._torchInfo)


#
# Logic
#


_TORCH_PROBE = """\
import json
try:
    import torch
except ImportError:
    print(json.dumps({"torch": None}))
else:
    gpus = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            gpus.append({"name": props.name, "memoryGB": props.total_memory / 2**30})
    print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "gpus": gpus}))
"""


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
        if applicationLogic is None and _inSlicerApplication():
            applicationLogic = slicer.app.applicationLogic()
        self.applicationLogic = applicationLogic

    def getParameterNode(self) -> SAINRSlicerParameterNode:
        return SAINRSlicerParameterNode(super().getParameterNode())

    # Planning (core geometry, no torch)

    def coreGeometry(self, volume):
        """The core's Geometry (LPS, as SimpleITK reads the NRRD the subprocess gets) of a
        volume node: RAS -> LPS negates the first two rows of the direction and origin."""
        if volume is None:
            raise SAINRSlicerError(_("select an input volume"))
        if volume.IsA("vtkMRMLLabelMapVolumeNode"):
            raise SAINRSlicerError(
                _("{name} is a labelmap; choose an image volume").format(name=volume.GetName())
            )
        if volume.GetImageData() is None:
            raise SAINRSlicerError(_("{name} has no voxels").format(name=volume.GetName()))
        directions = _ijkToRASDirections(volume)
        flip = (-1.0, -1.0, 1.0)
        direction = tuple(flip[r] * directions[r][c] for r in range(3) for c in range(3))
        origin = tuple(f * o for f, o in zip(flip, volume.GetOrigin(), strict=True))
        size = tuple(volume.GetImageData().GetDimensions())
        return coreModule("geometry").Geometry(size, tuple(volume.GetSpacing()), origin, direction)

    def sliceAxis(self, volume, axis: int | None = None) -> tuple[int, str]:
        """(slice axis, description such as 'k (R-L, sagittal slices)') of a volume node."""
        geometry, errors = coreModule("geometry"), coreModule("errors")
        geom = self.coreGeometry(volume)
        try:
            axis = geometry.detect_slice_axis(geom.spacing, geom.direction, axis)
        except errors.SainrError as error:
            raise SAINRSlicerError(str(error)) from None
        return axis, geometry.axis_label(geom.direction, axis)

    def plan(self, volume, targetSpacing: float, axis: int | None = None) -> ReductionPlan:
        """What reducing ``volume`` to ``targetSpacing`` mm will produce; raises
        SAINRSlicerError with the core's reason when it is not possible."""
        geometry, errors = coreModule("geometry"), coreModule("errors")
        geom = self.coreGeometry(volume)
        try:
            axis = geometry.detect_slice_axis(geom.spacing, geom.direction, axis)
            target = geometry.resolve_target_spacing(geom, axis, targetSpacing)
            grid = geometry.slice_grid(geom.size[axis], geom.spacing[axis], target)
        except errors.SainrError as error:
            raise SAINRSlicerError(str(error)) from None
        outputSize = list(geom.size)
        outputSize[axis] = grid.n_hr
        return ReductionPlan(
            geom.size,
            geom.spacing,
            axis,
            geometry.axis_label(geom.direction, axis),
            target,
            tuple(outputSize),
        )

    def isotropicSpacing(self, volume) -> float:
        """The finest in-plane spacing: the target that gives isotropic voxels."""
        axis, _label = self.sliceAxis(volume)
        return min(s for a, s in enumerate(volume.GetSpacing()) if a != axis)

    # Running

    def ensureTorch(self) -> None:
        """Make sure PyTorch is installed for the subprocess; in Slicer, install it through
        the PyTorch extension (asks the user first)."""
        version = _installedTorchVersion()
        if version is not None:
            if _versionTuple(version) < _versionTuple(TORCH_REQUIREMENT.lstrip(">=")):
                raise SAINRSlicerError(
                    f"PyTorch {version} is older than SAINRSlicer needs ({TORCH_REQUIREMENT}); "
                    "update it in the PyTorch Utils module and restart Slicer"
                )
            return
        if not _inSlicerApplication():
            raise SAINRSlicerError(
                f"PyTorch is not installed in {sys.executable}; pip install 'torch{TORCH_REQUIREMENT}'"
            )
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            raise SAINRSlicerError(
                "SAINRSlicer needs the PyTorch extension: install 'PyTorch' from the Extensions "
                "Manager, restart Slicer and try again"
            ) from None
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
            askConfirmation=True, torchVersionRequirement=TORCH_REQUIREMENT
        )
        if torch is None:
            raise SAINRSlicerError("PyTorch was not installed; SAINRSlicer cannot run without it")

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
    ) -> ReductionRun:
        """Start a reduction in the background and return the run (see ReductionRun)."""
        if device not in DEVICES:
            raise SAINRSlicerError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
        if outputVolume is not None and outputVolume is inputVolume:
            raise SAINRSlicerError(_("the output volume must not be the input volume"))
        if isinstance(adaptSteps, bool) or not isinstance(adaptSteps, int) or adaptSteps < 0:
            raise SAINRSlicerError(f"adaptSteps must be a whole number >= 0, got {adaptSteps!r}")
        if saveAdaptedPath is not None and not adaptSteps:
            raise SAINRSlicerError("saving adapted weights needs adaptSteps > 0")
        plan = self.plan(inputVolume, targetSpacing, axis)
        self.ensureTorch()
        return ReductionRun(
            inputVolume, plan, outputVolume, maskVolume, device, weights, axis,
            adaptSteps, saveAdaptedPath,
        )  # fmt: skip

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
    ):
        """Reduce the slice spacing of ``inputVolume`` to ``targetSpacing`` mm and wait.

        outputVolume: scalar volume to overwrite; None creates ``<input>_<spacing>mm``.
        device: "auto" (GPU if usable, else CPU), "cuda" or "cpu".
        maskVolume: labelmap for the gating mask; None reuses the output's or creates one.
        progressCallback(fraction, message): called as the run progresses.
        weights: shipped model name or checkpoint file; None is the bundled default model.
        axis: slice axis (0, 1, 2 = i, j, k); detected (largest spacing) if None.
        adaptSteps: first fine-tune the model for this many steps on pairs made from the
        input's own in-plane detail (0: use the model as it is).
        saveAdaptedPath: also save the adapted weights to this .pt file (needs adaptSteps).

        Returns the output volume node; raises SAINRSlicerError with the reason on failure,
        in which case the scene is unchanged.
        """
        run = self.start(
            inputVolume, targetSpacing, outputVolume, device, maskVolume, weights, axis,
            adaptSteps, saveAdaptedPath,
        )  # fmt: skip
        return run.wait(progressCallback)

    # Models and devices

    def modelCatalog(self) -> dict[str, dict]:
        """Shipped models (name -> entry of Resources/Models/models.json); empty if none."""
        try:
            path = resourcePath("Models/models.json")
        except FileNotFoundError:
            return {}
        return json.loads(path.read_text())["models"]

    def torchInfo(self, timeout: float = 120.0) -> dict:
        """PyTorch version and GPUs as the subprocess sees them, without importing torch here:
        {"torch": version or None, "cuda": build or None, "gpus": [{"name", "memoryGB"}]}, or
        {"torch": None, "error": reason} when the check itself fails."""
        try:
            result = subprocess.run(
                [_pythonExecutable(), "-c", _TORCH_PROBE],
                capture_output=True,
                text=True,
                timeout=timeout,
                env=_subprocessEnvironment(),
                **_noConsoleWindow(),
            )
        except (SAINRSlicerError, OSError, subprocess.TimeoutExpired) as error:
            return {"torch": None, "error": str(error)}
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines()
            return {
                "torch": None,
                "error": lines[-1] if lines else f"exit code {result.returncode}",
            }
        return json.loads(result.stdout.strip().splitlines()[-1])

    # Display

    def compareOrientation(self, volume) -> str:
        """Slice view orientation perpendicular to the acquired slices (contains the slice axis)."""
        axis, _label = self.sliceAxis(volume)
        directions = _ijkToRASDirections(volume)
        patientAxis = max(range(3), key=lambda row: abs(directions[row][axis]))
        return PERPENDICULAR_ORIENTATION[patientAxis]

    def showComparison(
        self, inputVolume, outputVolume, showMask: bool = True, maskOpacity: float = 0.5
    ) -> LayoutSnapshot:
        """Side-by-side layout, linked views: input left, output right (with the gating mask
        as label layer), cut perpendicular to the acquired slices. Returns what
        :meth:`restoreLayout` needs to put the views back."""
        if inputVolume is None or outputVolume is None:
            raise SAINRSlicerError(_("Compare needs an input and a result volume"))
        scene = outputVolume.GetScene()
        layoutNode = _layoutNode(scene)
        arrangement = layoutNode.GetViewArrangement()
        layoutNode.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView)
        views = {name: self._viewState(scene, name) for name in COMPARE_VIEWS}
        snapshot = LayoutSnapshot(layoutNode, arrangement, views)
        orientation = self.compareOrientation(inputVolume)
        for name, volume in zip(COMPARE_VIEWS, (inputVolume, outputVolume), strict=True):
            sliceNode, compositeNode = _sliceView(scene, name)
            compositeNode.SetBackgroundVolumeID(volume.GetID())
            compositeNode.SetForegroundVolumeID(None)
            compositeNode.SetLabelVolumeID(None)
            compositeNode.SetLinkedControl(True)
            sliceNode.SetOrientation(orientation)
            sliceNode.RotateToVolumePlane(outputVolume)
        self.setMaskOverlay(outputVolume, showMask, maskOpacity)
        if self.applicationLogic is not None:
            for name in COMPARE_VIEWS:
                self.applicationLogic.GetSliceLogicByLayoutName(name).FitSliceToAll()
        return snapshot

    def restoreLayout(self, snapshot: LayoutSnapshot) -> None:
        """Put the compare views and the layout back as they were before showComparison."""
        scene = snapshot.layoutNode.GetScene()
        for name, state in snapshot.views.items():
            sliceNode, compositeNode = _sliceView(scene, name)
            compositeNode.SetBackgroundVolumeID(state.backgroundID)
            compositeNode.SetForegroundVolumeID(state.foregroundID)
            compositeNode.SetLabelVolumeID(state.labelID)
            compositeNode.SetLabelOpacity(state.labelOpacity)
            compositeNode.SetLinkedControl(state.linked)
            sliceNode.GetSliceToRAS().DeepCopy(state.sliceToRAS)
            sliceNode.UpdateMatrices()
        snapshot.layoutNode.SetViewArrangement(snapshot.arrangement)

    def setMaskOverlay(self, outputVolume, visible: bool, opacity: float) -> None:
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

    @staticmethod
    def _viewState(scene, name: str) -> ViewState:
        sliceNode, compositeNode = _sliceView(scene, name)
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


#
# Test
#


class SAINRSlicerTest(ScriptedLoadableModuleTest):
    """Self-test for Slicer (Developer mode: Reload and Test, or ctest): reduces the bundled
    thick-slice knee sample with the bundled model and checks the result."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_ReduceSpacingOfSample()

    def test_ReduceSpacingOfSample(self) -> None:
        import numpy as np

        self.delayDisplay("Loading the bundled sample")
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()  # the reader of slicer.util.loadVolume
        storage.SetFileName(str(resourcePath("Sample/knee_qdess_sag_3mm.nii.gz")))
        volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "knee_qdess_sag_3mm")
        self.assertTrue(storage.ReadData(volume))
        volume.CreateDefaultDisplayNodes()
        before = slicer.util.arrayFromVolume(volume).copy()

        logic = SAINRSlicerLogic()
        logic.ensureTorch()
        plan = logic.plan(volume, 1.0)
        self.assertEqual(plan.axisLabel, "k (R-L, sagittal slices)")
        self.delayDisplay("Reducing 3 mm slices to 1 mm")
        output = logic.process(volume, 1.0)

        self.assertEqual(output.GetName(), "knee_qdess_sag_3mm_1.0mm")
        self.assertEqual(output.GetImageData().GetDimensions(), plan.outputSize)
        np.testing.assert_allclose(output.GetSpacing(), plan.outputSpacing, atol=1e-6)
        np.testing.assert_allclose(output.GetOrigin(), volume.GetOrigin(), atol=1e-6)
        inputDirections, outputDirections = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        volume.GetIJKToRASDirectionMatrix(inputDirections)
        output.GetIJKToRASDirectionMatrix(outputDirections)
        np.testing.assert_allclose(
            slicer.util.arrayFromVTKMatrix(outputDirections),
            slicer.util.arrayFromVTKMatrix(inputDirections),
            atol=1e-9,
        )
        values = slicer.util.arrayFromVolume(output)
        self.assertTrue(np.isfinite(values).all())
        self.assertGreater(values.std(), 0)
        mask = output.GetNodeReference(MASK_REFERENCE_ROLE)
        self.assertTrue(mask.IsA("vtkMRMLLabelMapVolumeNode"))
        self.assertEqual(mask.GetImageData().GetDimensions(), plan.outputSize)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), before)
        self.delayDisplay("Test passed")
