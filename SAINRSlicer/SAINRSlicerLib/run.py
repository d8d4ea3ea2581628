"""One reduction in a background process: what it will do, its progress, its log, its end.

The process is ``python -m sainr reduce`` on a temporary NRRD of the input (PythonSlicer in
Slicer). Its ``PROGRESS``/``ADAPT`` lines drive the progress; every other line goes to the
run's log; the result is read into the scene only once the process has succeeded, so a
cancelled or failed run leaves the scene as it was.
"""

from __future__ import annotations

import collections
import pathlib
import queue
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import slicer

from .core import SAINRSlicerError, coreModule, panelWording
from .framework import _, processEvents
from .process import (
    WORKER_MODULE,
    closeJob,
    killProcessTree,
    pythonExecutable,
    readLines,
    startProcess,
)
from .sceneio import (
    MASK_REFERENCE_ROLE,
    copyWindowLevel,
    placeBeside,
    readVolume,
    replaceVolumeContent,
    writeVolume,
)

_protocol = coreModule("protocol")
PROGRESS_TAG, ADAPT_TAG = _protocol.PROGRESS_TAG, _protocol.ADAPT_TAG
#: Share of the progress bar given to adaptation when a run adapts first (the rest is the
#: reconstruction); the status line says which phase is running and its own time left.
ADAPT_PROGRESS_SHARE = 0.5
#: Lines of a run's log kept for the error details (the panel's log view keeps its own).
LOG_TAIL = 200
#: Node attributes of an output node this module created: the name it gave the node (a node
#: still so named is renamed when reused for another spacing) and the input it was made from.
AUTO_NAME_ATTRIBUTE = "SAINRSlicer.AutoName"
SOURCE_ATTRIBUTE = "SAINRSlicer.InputVolumeID"
#: The worker's summary line names the slice thickness it used: "(3 mm thick)", possibly
#: followed by where it came from: "(2.1 mm thick, estimated)".
_THICKNESS_IN_SUMMARY = re.compile(r"(\d+(?:\.\d*)?) mm thick(?:[,;:] *([^),]*))?")
#: What the panel says about where the thickness came from (the core's word when it names one).
THICKNESS_SOURCE_WORDS = {"user": "your value", "dicom": "from DICOM", "auto": "automatic"}


def formatMillimetres(value: float) -> str:
    """'1.0', '0.75', '0.3125': at least one decimal, at most four (node names, labels)."""
    text = f"{value:.4f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def spacingForName(value: float) -> str:
    """'1', '0.5', '0.3125': the spacing as node names show it."""
    return formatMillimetres(value).removesuffix(".0")


def outputName(inputName: str, spacing: float) -> str:
    """Name of a new output node: it says the volume was synthesized by SA-INR, e.g.
    'knee_SAINR_1mm'."""
    return f"{inputName}_SAINR_{spacingForName(spacing)}mm"


def nameAutomatically(node, name: str, scene) -> None:
    """Give ``node`` a unique name based on ``name`` (unless it already has that one) and
    remember it, so that a later reuse can tell whether the user renamed the node."""
    if node.GetAttribute(AUTO_NAME_ATTRIBUTE) == node.GetName() == name:
        return
    taken = scene.GetNodesByName(name)
    clash = any(taken.GetItemAsObject(i) is not node for i in range(taken.GetNumberOfItems()))
    unique = scene.GenerateUniqueName(name) if clash else name
    node.SetName(unique)
    node.SetAttribute(AUTO_NAME_ATTRIBUTE, unique)


def isAutoNamed(node) -> bool:
    """The node still has the name this module gave it (the user did not rename it)."""
    return node is not None and node.GetAttribute(AUTO_NAME_ATTRIBUTE) == node.GetName()


def formatDuration(seconds: float) -> str:
    """Short human duration for progress messages: '8 s', '2 min 5 s', '1 h 3 min'."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


@dataclass(frozen=True)
class ReductionPlan:
    """What a reduction will do, as the core's planning computed it before anything runs:
    ``core``, the core's plan of the grid (:class:`sainr.planning.ReductionPlan`), as the
    panel reads it."""

    core: Any

    @property
    def inputSize(self) -> tuple[int, int, int]:
        return self.core.input.size

    @property
    def inputSpacing(self) -> tuple[float, float, float]:
        return self.core.input.spacing

    @property
    def axis(self) -> int:
        return self.core.axis

    @property
    def axisLabel(self) -> str:
        return self.core.axis_label

    @property
    def targetSpacing(self) -> float:
        return self.core.spacing_out

    @property
    def outputSize(self) -> tuple[int, int, int]:
        return self.core.output.size

    @property
    def outputSpacing(self) -> tuple[float, float, float]:
        return self.core.output.spacing

    @property
    def factor(self) -> float:
        return self.core.factor


def workerArguments(plan: ReductionPlan) -> list[str]:
    """What the subprocess needs of the plan to plan the same grid on the file the run
    writes: the target spacing (exactly: ``repr``) and the slice axis when one was named
    (else it detects the same one on the same grid)."""
    arguments = ["--spacing", repr(float(plan.targetSpacing))]
    axis = plan.core.target.axis
    return arguments + (["--axis", str(axis)] if axis is not None else [])


class ReductionRun:
    """One reduction in a background process.

    Call :meth:`poll` regularly (the panel does it from a QTimer, :meth:`wait` in a loop): it
    handles what the process printed (progress, notes, errors) and, once the process has
    succeeded, reads the result into the scene. :meth:`cancel` kills the process and all it
    started. The temporary folder is removed whichever way the run ends.

    With ``adaptSteps`` > 0 the process first adapts the model to the input (``ADAPT`` lines),
    then reconstructs (``PROGRESS`` lines): ``phase`` says which, ``fraction`` covers both.
    """

    RUNNING, SUCCEEDED, FAILED, CANCELLED = "running", "succeeded", "failed", "cancelled"

    def __init__(
        self,
        inputVolume,
        plan: ReductionPlan,
        options: list[str],
        outputVolume=None,
        maskVolume=None,
        adaptSteps: int = 0,
        environment: dict[str, str] | None = None,
        thicknessSource: str = "auto",
    ):
        """``options``: further ``sainr reduce`` options (device, weights, ...);
        ``environment``: the subprocess' environment; ``thicknessSource``: where the
        ``--slice-thickness`` in ``options`` came from ("user", "dicom"; "auto": none given).

        Without ``outputVolume`` the output node is created now, named for the input and the
        spacing (``<input>_SAINR_<spacing>mm``), so that a panel can select it at once; it is
        removed again when the run does not succeed."""
        self.inputVolume = inputVolume
        self.plan = plan
        self.maskVolume = maskVolume
        self.thicknessSource = thicknessSource
        self.sliceThickness: float | None = None  # the one the worker used (its summary)
        self.sliceThicknessNote: str | None = None  # where it came from, if the worker says
        self.adaptSteps = adaptSteps
        self.state = self.RUNNING
        self.fraction = 0.0
        self.phase: str | None = None  # ADAPT_TAG, then PROGRESS_TAG
        self.phaseFraction = 0.0
        self.adaptDone = 0
        self.notes: list[str] = []
        self.error: str | None = None
        self._coreMessage: str | None = None
        self._log: collections.deque[str] = collections.deque(maxlen=LOG_TAIL)
        self._newLog: list[str] = []
        self._started = time.monotonic()
        self._finished: float | None = None
        self._progressStart: tuple[float, float] | None = None
        self._lines: queue.Queue = queue.Queue()
        self._job = None
        self._tempDir = pathlib.Path(tempfile.mkdtemp(prefix="sainr-"))
        self.outputVolume, self._createdOutput = outputVolume, outputVolume is None
        try:
            inputPath = self._tempDir / "input.nrrd"
            writeVolume(inputVolume, inputPath)
            scene = inputVolume.GetScene()
            name = outputName(inputVolume.GetName(), plan.targetSpacing)
            if self._createdOutput:
                self.outputVolume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
            if self._createdOutput or isAutoNamed(self.outputVolume):
                nameAutomatically(self.outputVolume, name, scene)
            self.outputVolume.SetAttribute(SOURCE_ATTRIBUTE, inputVolume.GetID())
            command = self._command(inputPath, options)
            self._logLine(" ".join(command))
            self._process, self._job = startProcess(command, environment)
        except BaseException:
            self._removeCreatedOutput()
            self._removeTempDir()
            raise
        self._readers = readLines(self._process, self._lines)

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

    @property
    def log(self) -> str:
        """The run's messages so far (the latest LOG_TAIL lines), one per line."""
        return "\n".join(self._log)

    def takeNewLogLines(self) -> list[str]:
        """The log lines added since the last call (for a log view that appends)."""
        lines, self._newLog = self._newLog, []
        return lines

    def _command(self, inputPath: pathlib.Path, options: list[str]) -> list[str]:
        return [
            pythonExecutable(),
            "-m",
            WORKER_MODULE,  # runs "-m sainr reduce ...", and ends it if Slicer dies
            "sainr",
            "reduce",
            str(inputPath),
            str(self.outputPath),
            *workerArguments(self.plan),
            "--mask",
            str(self.maskPath),
            "--progress",
            "lines",
            *options,
        ]

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
            if self.sliceThickness is not None:
                text += " " + _("Slice thickness {value} mm ({source}).").format(
                    value=f"{self.sliceThickness:.4g}", source=self.sliceThicknessSourceText
                )
            if self.adaptSteps:
                text += " " + _("Model adapted to the input for {steps} steps.").format(
                    steps=self.adaptSteps
                )
            return text
        if self.state == self.FAILED:
            return _("Failed: {reason}").format(reason=self.error)
        if self.state == self.CANCELLED:
            if self.error:  # stopped by something else than the user's Cancel
                return _("Stopped: {reason}").format(reason=self.error)
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

    @property
    def sliceThicknessSourceText(self) -> str:
        """Where the slice thickness came from, in the panel's words."""
        if self.thicknessSource == "auto" and self.sliceThicknessNote:
            return self.sliceThicknessNote
        return _(THICKNESS_SOURCE_WORDS.get(self.thicknessSource, self.thicknessSource))

    def deletedNode(self) -> str | None:
        """Which of the run's volumes was removed from the scene meanwhile, or None."""
        for role, node in ((_("input"), self.inputVolume), (_("output"), self.outputVolume)):
            if node is not None and node.GetScene() is None:
                return _("the {role} volume {name} was deleted during the run").format(
                    role=role, name=node.GetName()
                )
        return None

    def poll(self) -> bool:
        """Handle the process' new output; finish the run when the process has ended.
        Returns True while the run is still going. A run whose input or output node was
        deleted meanwhile is stopped as if cancelled, with the reason in ``error``."""
        if not self.running:
            return False
        deleted = self.deletedNode()
        if deleted is not None:
            self.cancel(reason=deleted + "; " + _("nothing was added to the scene"))
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
        """Block until the run ends (the Slicer GUI keeps repainting meanwhile). Returns the
        output node, or raises SAINRSlicerError with the reason and the log as details. An
        exception meanwhile (Ctrl+C, an error in the callback) cancels the run."""
        reported = None
        try:
            while self.poll():
                if progressCallback is not None and (self.fraction, self.message) != reported:
                    reported = (self.fraction, self.message)
                    progressCallback(*reported)
                processEvents()
                time.sleep(interval)
        except BaseException:
            self.cancel()
            raise
        if self.state != self.SUCCEEDED:
            raise SAINRSlicerError(self.error or self.message, self.log)
        if progressCallback is not None:
            progressCallback(1.0, self.message)
        return self.outputVolume

    def cancel(self, reason: str | None = None) -> None:
        """Stop the process and everything it started, now, and undo what the run added to
        the scene (the output node it created). ``reason``: why, when not the user's Cancel.
        The run ends as cancelled even when the process does not end at once."""
        if not self.running:
            return
        self.state, self.error = self.CANCELLED, reason
        try:
            if not killProcessTree(self._process):
                self._logLine(_("The SA-INR process did not end within a second of Cancel."))
            for reader in self._readers:
                reader.join(timeout=1)
        finally:
            closeJob(self._job)
            self._removeCreatedOutput()
            self._logLine(self.message)
            self._removeTempDir()

    def _drain(self) -> None:
        while True:
            try:
                stream, line = self._lines.get_nowait()
            except queue.Empty:
                return
            self.handleLine(stream, line)

    def _logLine(self, line: str) -> None:
        self._log.append(line)
        self._newLog.append(line)

    def handleLine(self, stream: str, line: str) -> None:
        """Interpret one line of the core CLI's protocol: ``ADAPT done total`` (adaptation
        steps) and ``PROGRESS done total`` (reconstruction) on stdout; ``note: ...``,
        ``sainr: error: ...`` (user error) and ``sainr: ...`` (internal error) on stderr.
        Every line but the progress ones goes to the log."""
        parts = line.split()
        if (
            stream == "stdout"
            and len(parts) == 3
            and parts[0] in (ADAPT_TAG, PROGRESS_TAG)
            and parts[1].isdigit()
            and parts[2].isdigit()
        ):
            if parts[0] == ADAPT_TAG:
                self.adaptDone = int(parts[1])
            self._setProgress(parts[0], int(parts[1]) / max(int(parts[2]), 1))
            return
        self._logLine(line)
        if stream != "stderr":
            return
        summary = _THICKNESS_IN_SUMMARY.search(line)
        if summary is not None and not line.startswith(("note: ", "sainr: ")):
            self.sliceThickness = float(summary.group(1))
            self.sliceThicknessNote = (summary.group(2) or "").strip() or None
        if line.startswith("note: "):
            self.notes.append(line.removeprefix("note: "))
        elif line.startswith("sainr: error: "):
            self._coreMessage = panelWording(line.removeprefix("sainr: error: "))
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
        tail = [line for line in list(self._log)[-12:] if line.strip()]
        return f"the SA-INR process stopped with exit code {self._process.returncode}" + (
            f": {' | '.join(tail)}" if tail else ""
        )

    def _finish(self) -> None:
        self._finished = time.monotonic()
        try:
            if self._process.returncode != 0:
                raise SAINRSlicerError(self._failureMessage())
            self._importResults()
        except Exception as error:
            self.state, self.error = self.FAILED, str(error)
            self._removeCreatedOutput()
            self._logLine(self.message)
            if not isinstance(error, SAINRSlicerError):
                raise
        else:
            self.fraction, self.state = 1.0, self.SUCCEEDED
            self._logLine(self.message)
        finally:
            closeJob(self._job)
            self._removeTempDir()

    def _importResults(self) -> None:
        """Read the result files, then create or update the output and mask nodes."""
        image = readVolume(self.outputPath, slicer.vtkMRMLScalarVolumeNode())
        mask = readVolume(self.maskPath, slicer.vtkMRMLLabelMapVolumeNode())
        scene = self.inputVolume.GetScene()
        if self.maskVolume is None:
            self.maskVolume = self.outputVolume.GetNodeReference(MASK_REFERENCE_ROLE)
        maskName = f"{self.outputVolume.GetName()}_attention"
        if self.maskVolume is None:
            self.maskVolume = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", maskName)
            nameAutomatically(self.maskVolume, maskName, scene)
        elif isAutoNamed(self.maskVolume):
            nameAutomatically(self.maskVolume, maskName, scene)
        transformID = self.inputVolume.GetTransformNodeID()
        for target, source in ((self.outputVolume, image), (self.maskVolume, mask)):
            replaceVolumeContent(target, source)
            if target.GetDisplayNode() is None:
                target.CreateDefaultDisplayNodes()
            target.SetAndObserveTransformNodeID(transformID)
            placeBeside(self.inputVolume, target)
        copyWindowLevel(self.inputVolume, self.outputVolume)
        self.outputVolume.SetNodeReferenceID(MASK_REFERENCE_ROLE, self.maskVolume.GetID())

    def _removeCreatedOutput(self) -> None:
        """Remove the output node this run created (a run that did not succeed adds nothing)."""
        node = self.outputVolume
        if self._createdOutput and node is not None and node.GetScene() is not None:
            node.GetScene().RemoveNode(node)

    def _removeTempDir(self) -> None:
        shutil.rmtree(self._tempDir, ignore_errors=True)
