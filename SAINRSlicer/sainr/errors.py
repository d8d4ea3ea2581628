"""Typed errors shared by the CLI, the Python API and the Slicer Logic.

Every error a user can cause derives from :class:`SainrError`; its message says what is wrong
and what to do. The CLI maps these to exit code 2 without a traceback, the Slicer panel shows
the message as is. Anything else is an internal error (a bug) and is reported as such.
"""

from __future__ import annotations


class SainrError(Exception):
    """A problem the user can fix (bad input, bad option, missing file)."""


class InputImageError(SainrError):
    """The input volume cannot be processed (wrong dimension, pixel type, values or geometry)."""


class SpacingError(SainrError):
    """The requested target spacing or factor is not possible for this volume."""


class AxisError(SainrError):
    """The through-plane (slice) axis cannot be determined unambiguously."""


class WeightsError(SainrError):
    """A weights file is missing, corrupt, of another architecture or fails its checksum."""


class OutputPathError(SainrError):
    """The output cannot be written where the user asked."""


class DeviceError(SainrError):
    """The requested compute device is not available."""


class ResourceError(SainrError):
    """Not enough memory for the run, even with the smallest working budget."""


class Cancelled(SainrError):
    """The run was cancelled by the user; nothing was written."""


def one_line(text: str) -> str:
    """``text`` on one line: messages from torch or ITK may span several, a user sees one."""
    return " ".join(text.split())
