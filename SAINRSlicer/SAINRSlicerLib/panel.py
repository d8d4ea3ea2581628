"""What the panel shows, kept out of the Qt code so it can be tested: the help, the research-use
notice, the PyTorch line, the device and model choices, where the slice thickness came from,
and how any error becomes a message with details for the error display."""

from __future__ import annotations

import contextlib
import html
import traceback
from collections.abc import Callable, Iterator

from .core import SAINRSlicerError
from .framework import _

#: Lines the panel's log view keeps (older ones scroll out).
LOG_VIEW_LINES = 2000

#: Shown at the top of the panel and in the README.
RESEARCH_NOTICE = _(
    "For research use only, not for diagnosis. The thin slices are synthesized by a neural "
    "network, and the acquired slices are sharpened too: the output is not the scanner's data."
)

#: What each shipped model trades, for the model box (other models show their catalog text).
MODEL_DESCRIPTIONS = {
    "default": _(
        "Bundled default: told or estimated slice thickness; trained on knee and brain MRI."
    ),
}

#: The panel's words for where the slice thickness came from (logic.THICKNESS_* keys).
THICKNESS_SOURCE_TEXT = {
    "dicom": _("from DICOM"),
    "auto": _("estimated when you run"),
    "user": _("your value"),
}

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


def helpText() -> str:
    """The module's help: what it does, what it does not, how to use the panel, the console."""
    return (
        _(
            "<p>Reduce the slice spacing of thick-slice MRI: SA-INR, a neural network, "
            "synthesizes thin slices between the acquired ones.</p>"
            "<p><b>{notice}</b></p>"
            "<p>Select the input volume; its spacing and slice direction are shown. Set the "
            "target slice spacing (or click <b>Isotropic</b>), then click <b>Reduce Spacing</b>. "
            "The result is a new volume named <i>&lt;input&gt;_SAINR_&lt;spacing&gt;mm</i>; the "
            "next run overwrites it unless you choose <i>Create new volume</i> again. It keeps "
            "the input's position and orientation; only the spacing between slices changes. "
            "The model does not keep the acquired slices as they were: it also sharpens them, "
            "because real thick slices are blurred across their thickness. <b>Compare</b> shows "
            "input and output side by side, cut across the acquired slices, with the attention "
            "mask as an overlay.</p>"
            "<p><b>Slice thickness</b> is how thick the acquired slices are. It is read from "
            "the DICOM series when the volume was loaded from DICOM; otherwise it is "
            "<i>Automatic</i> and chosen when the run starts (from the file's header, else "
            "estimated from the image). The line beside it says where the value comes from; "
            "type a value to use yours.</p>"
            "<p><b>Advanced · Adapt to this volume</b> first fine-tunes the model on the "
            "volume's own in-plane detail, then reconstructs with it: slower, and it can help "
            "on contrasts unlike the training data.</p>"
            "<p>A GPU is used when PyTorch can use one (device <i>Automatic</i>); the CPU works "
            "too, more slowly. At the first run PyTorch is installed through the PyTorch "
            "extension (several minutes; Slicer asks first; the panel waits meanwhile). "
            "<b>Log</b> shows the run's messages. Needs 3D Slicer 5.10 or later.</p>"
            "<p>From the Python console, for every image volume in the scene:</p>"
        ).format(notice=RESEARCH_NOTICE)
        + f"<pre>{html.escape(CONSOLE_EXAMPLE)}</pre>"
    )


def modelDescription(name: str, entry: dict) -> str:
    """Tooltip of a model choice: what it trades, in plain words."""
    return MODEL_DESCRIPTIONS.get(name, entry.get("description", ""))


def thicknessSourceText(source: str, lastRun: tuple[float, str] | None = None) -> str:
    """The line beside the slice thickness: where the value comes from; for an automatic one,
    what the last run of this input used (``lastRun``: value in mm, its source in words)."""
    text = THICKNESS_SOURCE_TEXT.get(source, "")
    if source == "auto" and lastRun is not None:
        text += " · " + _("last run: {value} mm ({source})").format(
            value=f"{lastRun[0]:.4g}", source=lastRun[1]
        )
    return text


def describeTorch(info: dict) -> str:
    """One line for the panel from :meth:`SAINRSlicerLogic.torchInfo`."""
    if info.get("error"):
        return _("PyTorch does not load: {error}").format(error=info["error"])
    if "torch" not in info:
        return _("PyTorch check failed: no answer")
    if info.get("torch") is None:
        return _(
            "PyTorch is not installed: it is installed through the PyTorch extension at the first run."
        )
    text = _("PyTorch {version}").format(version=info["torch"])
    if info.get("gpus"):
        gpus = ", ".join(f"{gpu['name']} ({gpu['memoryGB']:.0f} GB)" for gpu in info["gpus"])
        return text + " · " + _("GPU: {gpus}").format(gpus=gpus)
    if info.get("mps"):
        return text + " · " + _("Apple GPU (MPS) available; runs on the CPU unless chosen")
    return text + " · " + _("no usable GPU: runs on the CPU (slower)")


def deviceChoices(info: dict | None) -> list[tuple[str, str]]:
    """(label, device) pairs for the device box: automatic, the CPU, each CUDA GPU by name,
    and Apple's MPS where PyTorch has it (opt-in: not every operation runs there)."""
    choices = [(_("Automatic (GPU if usable, else CPU)"), "auto"), (_("CPU"), "cpu")]
    for index, gpu in enumerate((info or {}).get("gpus", [])):
        label = _("GPU {index}: {name} ({memory:.0f} GB)").format(
            index=index, name=gpu["name"], memory=gpu["memoryGB"]
        )
        choices.append((label, f"cuda:{index}"))
    if (info or {}).get("mps"):
        choices.append((_("Apple GPU (MPS)"), "mps"))
    return choices


def failureReport(action: str, error: BaseException) -> tuple[str, str]:
    """(message, details) for the error display. A SAINRSlicerError says what to do and
    carries its own details (the run's log, the installer's output); any other exception is
    a bug or an environment problem: its type and text, with the traceback as details."""
    if isinstance(error, SAINRSlicerError):
        return f"{action} {error}", error.details
    message = f"{action} {type(error).__name__}: {error}"
    return message, "".join(traceback.format_exception(error))


@contextlib.contextmanager
def errorsShown(action: str, show: Callable[[str, str], None]) -> Iterator[None]:
    """Run the block; any exception (not only the expected ones) is passed to
    ``show(message, details)`` (the panel: status line and error dialog) instead of ending in
    the Python console, where a panel user would never see it."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - every failure must reach the panel
        show(*failureReport(action, error))
