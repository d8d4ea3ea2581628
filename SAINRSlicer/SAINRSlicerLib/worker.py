"""The background worker's entry point: ``python -m SAINRSlicerLib.worker MODULE ARGS...``
runs ``python -m MODULE ARGS...`` (the Logic runs ``sainr reduce``) and ends it when the
process that started it is gone (Slicer crashed or was killed), instead of computing on for
minutes (an adaptation can run 10,000 steps).

That process' id comes in the environment (``SAINRSLICER_PARENT_PID``). It is watched, not the
worker's own parent: in Slicer that parent is the PythonSlicer launcher, which outlives Slicer.
On Windows, where the Logic puts the worker in a Job object instead, nothing is watched here.
Imports nothing of Slicer or of this package: it runs in the subprocess.
"""

from __future__ import annotations

import os
import runpy
import sys
import threading
import time

PARENT_PID_VARIABLE = "SAINRSLICER_PARENT_PID"
#: Exit status when the parent is gone (nobody reads it; it tells it apart in a shell).
EXIT_PARENT_GONE = 3


def alive(pid: int) -> bool:
    """The process runs (POSIX): it exists and is not a zombie awaiting its parent."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc (macOS): existence is all we know
        return True


def watchParent(pid: int, interval: float = 0.5, end=os._exit) -> threading.Thread:
    """Call ``end(EXIT_PARENT_GONE)`` from a daemon thread once ``pid`` no longer runs
    (``os._exit``: no clean-up that could hang; the Logic removes its temporary files)."""

    def watch() -> None:
        while alive(pid):
            time.sleep(interval)
        end(EXIT_PARENT_GONE)

    thread = threading.Thread(target=watch, name="SAINRSlicer parent watch", daemon=True)
    thread.start()
    return thread


def main(argv: list[str]) -> None:
    """``argv``: the module to run and its arguments."""
    if not argv:
        raise SystemExit("usage: python -m SAINRSlicerLib.worker MODULE [ARGS...]")
    parent = os.environ.get(PARENT_PID_VARIABLE, "")
    if parent.isdigit() and os.name != "nt":
        watchParent(int(parent))
    module, *arguments = argv
    sys.argv = [module, *arguments]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
