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
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import slicer

from .core import SAINRSlicerError, coreModule, panelWording
from .framework import _, processEvents
from .process import killProcessTree, pythonExecutable, readLines, startProcess
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


@dataclass(frozen=True)
class ReductionPlan:
    """What a reduction will do, as the core's planning computed it before anything runs."""

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
    ):
        """``options``: further ``sainr reduce`` options (device, weights, ...);
        ``environment``: the subprocess' environment."""
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
        self._log: collections.deque[str] = collections.deque(maxlen=LOG_TAIL)
        self._newLog: list[str] = []
        self._started = time.monotonic()
        self._finished: float | None = None
        self._progressStart: tuple[float, float] | None = None
        self._lines: queue.Queue = queue.Queue()
        self._tempDir = pathlib.Path(tempfile.mkdtemp(prefix="sainr-"))
        try:
            inputPath = self._tempDir / "input.nrrd"
            writeVolume(inputVolume, inputPath)
            command = self._command(inputPath, options)
            self._logLine(" ".join(command))
            self._process = startProcess(command, environment)
        except BaseException:
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
            "sainr",
            "reduce",
            str(inputPath),
            str(self.outputPath),
            "--spacing",
            repr(float(self.plan.targetSpacing)),
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
            raise SAINRSlicerError(self.error, self.log)
        if progressCallback is not None:
            progressCallback(1.0, self.message)
        return self.outputVolume

    def cancel(self) -> None:
        """Stop the process and everything it started, now. The scene is not touched."""
        if not self.running:
            return
        killProcessTree(self._process)
        for reader in self._readers:
            reader.join(timeout=1)
        self.state = self.CANCELLED
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
            self._logLine(self.message)
            if not isinstance(error, SAINRSlicerError):
                raise
        else:
            self.fraction, self.state = 1.0, self.SUCCEEDED
            self._logLine(self.message)
        finally:
            self._removeTempDir()

    def _importResults(self) -> None:
        """Read the result files, then create or update the output and mask nodes."""
        image = readVolume(self.outputPath, slicer.vtkMRMLScalarVolumeNode())
        mask = readVolume(self.maskPath, slicer.vtkMRMLLabelMapVolumeNode())
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
            replaceVolumeContent(target, source)
            if target.GetDisplayNode() is None:
                target.CreateDefaultDisplayNodes()
            target.SetAndObserveTransformNodeID(transformID)
            placeBeside(self.inputVolume, target)
        copyWindowLevel(self.inputVolume, self.outputVolume)
        self.outputVolume.SetNodeReferenceID(MASK_REFERENCE_ROLE, self.maskVolume.GetID())

    def _removeTempDir(self) -> None:
        shutil.rmtree(self._tempDir, ignore_errors=True)
