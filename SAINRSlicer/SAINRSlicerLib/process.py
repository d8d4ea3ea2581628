"""The background process of a run: started in a process group of its own, stopped whole, and
never left running when Slicer is gone.

In Slicer the subprocess is PythonSlicer, a launcher that starts the real Python as its child;
killing only the launcher leaves the worker computing and writing files. So the process starts
a new session (POSIX: its own process group, killed with one ``killpg``) or a new process group
(Windows: ``taskkill /T`` ends the tree), without psutil, which Slicer does not ship.

If Slicer itself dies (crash, killed), nobody cancels: on POSIX the worker
(:mod:`SAINRSlicerLib.worker`) watches Slicer's process id and ends itself; on Windows the
process is put in a Job object that Windows closes with Slicer's handles, ending every process
in it.
"""

from __future__ import annotations

import ctypes
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading

from .core import MODULE_DIR, SAINRSlicerError, coreModule
from .framework import inSlicerApplication
from .worker import PARENT_PID_VARIABLE

_WINDOWS = os.name == "nt"
#: ``python -m WORKER_MODULE MODULE ARGS...`` runs ``python -m MODULE ARGS...`` under a watch.
WORKER_MODULE = "SAINRSlicerLib.worker"
#: subprocess.CREATE_NO_WINDOW (the constant exists only on Windows).
_CREATE_NO_WINDOW = 0x08000000


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
    ``sainr`` installed beside the module is the one that runs), unbuffered UTF-8 output (read
    as UTF-8 here, whatever the system's code page), plus ``extra``."""
    env = dict(os.environ)
    paths = [str(MODULE_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    env.update(extra or {})
    return env


def noConsoleWindow() -> dict:
    """Popen options that keep Windows from opening a console window for a subprocess."""
    return {"creationflags": _CREATE_NO_WINDOW} if _WINDOWS else {}


def startProcess(command: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, object]:
    """Start ``command`` with text pipes for stdout and stderr, as the leader of a process
    group that :func:`killProcessTree` can end with everything it starts, told to watch this
    process, with the core's allocator settings for inference (:mod:`sainr.runtime.heap`,
    glibc reads them at start-up; ``env`` may override them). Returns the process and its Job
    object handle (Windows; None elsewhere), which :func:`closeJob` closes."""
    heap = coreModule("runtime.heap").environment()
    if _WINDOWS:
        group = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | _CREATE_NO_WINDOW}
    else:
        group = {"start_new_session": True}
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
        env={**heap, **env, PARENT_PID_VARIABLE: str(os.getpid())},
        **group,
    )
    return process, jobKillingWithSlicer(process)


def killProcessTree(process: subprocess.Popen, timeout: float = 1.0) -> bool:
    """Kill a process started by :func:`startProcess` and every process it started (also
    when it has already exited), then wait up to ``timeout`` s for it. Returns whether it
    ended in time; raises nothing when ``taskkill`` is missing or the wait times out."""
    if _WINDOWS:
        try:
            subprocess.run(
                ["taskkill", "/F", "/T", "/PID", str(process.pid)],
                capture_output=True,
                timeout=10,
                **noConsoleWindow(),
            )
        except (OSError, subprocess.SubprocessError):  # taskkill missing, hanging or refused
            pass
        if process.poll() is None:  # at least the process itself (the job ends the rest)
            process.kill()
    else:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:  # the group is gone already
            pass
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


class _BasicLimits(ctypes.Structure):  # JOBOBJECT_BASIC_LIMIT_INFORMATION
    _fields_ = [
        ("PerProcessUserTimeLimit", ctypes.c_int64),
        ("PerJobUserTimeLimit", ctypes.c_int64),
        ("LimitFlags", ctypes.c_uint32),
        ("MinimumWorkingSetSize", ctypes.c_size_t),
        ("MaximumWorkingSetSize", ctypes.c_size_t),
        ("ActiveProcessLimit", ctypes.c_uint32),
        ("Affinity", ctypes.c_size_t),
        ("PriorityClass", ctypes.c_uint32),
        ("SchedulingClass", ctypes.c_uint32),
    ]


class JobLimits(ctypes.Structure):  # JOBOBJECT_EXTENDED_LIMIT_INFORMATION
    _fields_ = [
        ("BasicLimitInformation", _BasicLimits),
        ("IoInfo", ctypes.c_uint64 * 6),  # IO_COUNTERS
        ("ProcessMemoryLimit", ctypes.c_size_t),
        ("JobMemoryLimit", ctypes.c_size_t),
        ("PeakProcessMemoryUsed", ctypes.c_size_t),
        ("PeakJobMemoryUsed", ctypes.c_size_t),
    ]


JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE = 0x2000
_JOB_OBJECT_EXTENDED_LIMIT_INFORMATION = 9


def jobKillingWithSlicer(process: subprocess.Popen):
    """Windows: a Job object holding ``process`` (and what it starts) that ends them all when
    its last handle closes: :func:`closeJob`, or Windows itself when Slicer dies. None on
    other systems, or when Windows refuses (the run still works; only the crash guard is
    missing)."""
    if not _WINDOWS:
        return None
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.CreateJobObjectW.restype = ctypes.c_void_p
    job = kernel32.CreateJobObjectW(None, None)
    if not job:
        return None
    limits = JobLimits()
    limits.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
    configured = kernel32.SetInformationJobObject(
        ctypes.c_void_p(job),
        _JOB_OBJECT_EXTENDED_LIMIT_INFORMATION,
        ctypes.byref(limits),
        ctypes.sizeof(limits),
    )
    handle = ctypes.c_void_p(int(process._handle))  # noqa: SLF001 - Popen's process handle
    if not configured or not kernel32.AssignProcessToJobObject(ctypes.c_void_p(job), handle):
        kernel32.CloseHandle(ctypes.c_void_p(job))
        return None
    return job


def closeJob(job) -> None:
    """Close a handle from :func:`jobKillingWithSlicer` (ends what still runs in the job)."""
    if job is not None and _WINDOWS:
        ctypes.WinDLL("kernel32").CloseHandle(ctypes.c_void_p(job))


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
