"""What the panel shows, kept out of the Qt code so it can be tested: the PyTorch line, the
device choices, and how any error becomes a message with details for the error display."""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Callable, Iterator

from .core import SAINRSlicerError
from .framework import _

#: Lines the panel's log view keeps (older ones scroll out).
LOG_VIEW_LINES = 2000


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
