"""The module's side of the ``sainr`` core: where it lies, its torch-free modules, the error
the module raises, and the core's messages reworded for the panel."""

from __future__ import annotations

import importlib
import pathlib
import re
import sys
import types

#: Folder of SAINRSlicer.py; the core package ``sainr`` lies beside it (repository and install
#: tree), and so does this library.
MODULE_DIR = pathlib.Path(__file__).resolve().parents[1]

#: The core speaks to command-line users; the panel's user has fields, not options.
_PANEL_WORDING = (
    (re.compile(r"use --device cpu"), "choose CPU as the device"),
    (re.compile(r"name it with --axis 0\|1\|2"), "give axis=0, 1 or 2 in the Python console"),
    (re.compile(r",? or force it \(--force\)"), ""),
    (re.compile(r" or allow replacing them by 0 \(--nan-to-zero\)"), " in the volume first"),
    (re.compile(r"--slice-thickness"), "the slice thickness"),
    (re.compile(r"--adapt-steps"), "the adaptation steps"),
    (re.compile(r" \(--[a-z-]+\)"), ""),
)


class SAINRSlicerError(RuntimeError):
    """A reduction that cannot start or did not finish. The message says why, in the panel's
    words; ``details`` holds what helps to diagnose it (the run's log, an installer's output)."""

    def __init__(self, message: str, details: str = ""):
        super().__init__(message)
        self.details = details


def panelWording(message: str) -> str:
    """A core message with its command-line advice said in terms of the panel."""
    for pattern, replacement in _PANEL_WORDING:
        message = pattern.sub(replacement, message)
    return message


def resourcePath(relativePath: str) -> pathlib.Path:
    """A file of the extension's Resources folder, found as the core finds its own
    (:func:`sainr.io.resources.resource_path`: install tree, then source checkout)."""
    return coreModule("io.resources").resource_path(relativePath)


def coreModule(name: str) -> types.ModuleType:
    """A torch-free module of the core (``planning``, ``geometry``, ``errors``, ``protocol``,
    ``request``, ``resources``).

    The ``sainr`` package imports torch only when its inference API is used, so planning in
    the panel never loads PyTorch into Slicer's own process (which would block a later PyTorch
    install or upgrade until restart).
    """
    try:
        return importlib.import_module(f"sainr.{name}")
    except ImportError as exc:
        raise SAINRSlicerError(
            f"the SAINRSlicer core package 'sainr' is missing (expected in {MODULE_DIR}); "
            "reinstall the extension"
        ) from exc


#: Packages that Reload must import afresh with SAINRSlicer.py (Slicer reloads only that file).
RELOADED_PACKAGES = ("SAINRSlicerLib", "sainr")


def forgetLibraryModules() -> list[str]:
    """Drop the library and the core from ``sys.modules`` so that reloading the module file
    imports their current code (Reload in Developer mode). Returns the names dropped."""
    names = [
        name
        for name in sys.modules
        if any(name == p or name.startswith(p + ".") for p in RELOADED_PACKAGES)
    ]
    for name in names:
        del sys.modules[name]
    return names
