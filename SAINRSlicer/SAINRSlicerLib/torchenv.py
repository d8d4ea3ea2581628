"""PyTorch for the subprocess: which version is installed, what it can use, and installing it.

torch is never imported in Slicer's own process: the probe runs in a subprocess, and the
installed version is read from package metadata. In Slicer, torch is installed through the
PyTorch extension (PyTorchUtils), which picks the wheel for the machine's GPU.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess

from .core import SAINRSlicerError, coreModule
from .framework import _, inSlicerApplication
from .process import noConsoleWindow, pythonExecutable, subprocessEnvironment

_PROBE = """\
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
    mps = hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "gpus": gpus,
                      "mps": mps}))
"""


def torchRequirement() -> str:
    """The PyTorch versions the core supports, e.g. ">=2.1"."""
    return coreModule("protocol").TORCH_REQUIREMENT


def installedTorchVersion() -> str | None:
    """torch's installed version, read from package metadata (torch is not imported)."""
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def versionTuple(version: str) -> tuple[int, ...]:
    """(major, minor) of a version such as "2.5.1+cu121" or ">=2.1"."""
    numbers = version.lstrip("<>=!~ ").split("+")[0].split(".")
    return tuple(int(n) for n in numbers[:2] if n.isdigit())


def probeTorch(timeout: float = 120.0) -> dict:
    """PyTorch as the subprocess sees it: {"torch": version or None, "cuda": build or None,
    "gpus": [{"name", "memoryGB"}], "mps": bool}, or {"torch": None, "error": reason,
    "details": what it printed} when the check itself fails or answers nothing usable."""
    try:
        result = subprocess.run(
            [pythonExecutable(), "-c", _PROBE],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=subprocessEnvironment(),
            **noConsoleWindow(),
        )
    except (SAINRSlicerError, OSError, subprocess.TimeoutExpired) as error:
        return {"torch": None, "error": str(error)}
    lines = result.stderr.strip().splitlines()
    if result.returncode != 0:
        return {
            "torch": None,
            "error": lines[-1] if lines else f"exit code {result.returncode}",
            "details": result.stderr,
        }
    try:
        info = json.loads(result.stdout.strip().splitlines()[-1])
        if not isinstance(info, dict) or "torch" not in info:
            raise ValueError(info)
    except (IndexError, ValueError):  # printed nothing, or not the probe's JSON
        return {
            "torch": None,
            "error": _("the PyTorch check gave no usable answer"),
            "details": f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}",
        }
    return info


def installTorchThroughExtension() -> None:
    """Install PyTorch with the PyTorch extension (it asks the user first). Headless, there is
    no extension: the message says what to install."""
    requirement = torchRequirement()
    if not inSlicerApplication():
        raise SAINRSlicerError(
            _("PyTorch is not installed; install torch{requirement} with pip.").format(
                requirement=requirement
            )
        )
    try:
        import PyTorchUtils
    except ModuleNotFoundError:
        raise SAINRSlicerError(
            _(
                "SAINRSlicer needs the PyTorch extension: install 'PyTorch' from the Extensions "
                "Manager, restart Slicer and try again."
            )
        ) from None
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
        askConfirmation=True, torchVersionRequirement=requirement
    )
    if torch is None:
        raise SAINRSlicerError(_("PyTorch was not installed; SAINRSlicer cannot run without it."))
