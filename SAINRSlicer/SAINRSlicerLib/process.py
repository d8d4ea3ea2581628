"""The background process of a run: started in a process group of its own, stopped whole.

In Slicer the subprocess is PythonSlicer, a launcher that starts the real Python as its child;
killing only the launcher leaves the worker computing and writing files. So the process starts
a new session (POSIX: its own process group, killed with one ``killpg``) or a new process group
(Windows: ``taskkill /T`` ends the tree), without psutil, which Slicer does not ship.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading

from .core import MODULE_DIR, SAINRSlicerError
from .framework import inSlicerApplication

_WINDOWS = os.name == "nt"


def pythonExecutable() -> str:
    """PythonSlicer in Slicer (same Python and packages, no GUI); this interpreter headless."""
    if not inSlicerApplication():
        return sys.executable
    executable = shutil.which("PythonSlicer")
    if executable is None:
        raise SAINRSlicerError("PythonSlicer was not found next to Slicer; reinstall Slicer")
    return executable


def subprocessEnvironment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process' environment with the module folder first on PYTHONPATH (so that the
    ``sainr`` installed beside the module is the one that runs), unbuffered output, plus
    ``extra``."""
    env = dict(os.environ)
    paths = [str(MODULE_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def noConsoleWindow() -> dict:
    """Popen options that keep Windows from opening a console window for a subprocess."""
    return {"creationflags": subprocess.CREATE_NO_WINDOW} if _WINDOWS else {}


def startProcess(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start ``command`` with text pipes for stdout and stderr, as the leader of a process
    group that :func:`killProcessTree` can end with everything it starts."""
    if _WINDOWS:
        group = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW}
    else:
        group = {"start_new_session": True}
    return subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=env,
        **group,
    )


def killProcessTree(process: subprocess.Popen, timeout: float = 1.0) -> None:
    """Kill a process started by :func:`startProcess` and every process it started (also
    when it has already exited), then wait up to ``timeout`` s for it."""
    if _WINDOWS:
        subprocess.run(
            ["taskkill", "/F", "/T", "/PID", str(process.pid)],
            capture_output=True,
            **noConsoleWindow(),
        )
        if process.poll() is None:  # taskkill missing or refused: at least the process itself
            process.kill()
    else:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:  # the group is gone already
            pass
    process.wait(timeout=timeout)


def readLines(process: subprocess.Popen, lines: queue.Queue) -> list[threading.Thread]:
    """Start one reader thread per output stream; each puts ``(stream name, line)`` on
    ``lines`` until the stream ends. Returns the threads."""

    def pump(stream, name: str) -> None:
        with stream:
            for line in stream:
                lines.put((name, line.rstrip("\r\n")))

    readers = [
        threading.Thread(target=pump, args=(stream, name), daemon=True)
        for stream, name in ((process.stdout, "stdout"), (process.stderr, "stderr"))
    ]
    for reader in readers:
        reader.start()
    return readers
