"""Cancel stops all the work, also when the run's process is a launcher.

In Slicer the Logic starts PythonSlicer, a launcher that runs the real Python as its child and
waits for it. Slicer ships no psutil, so killing only the launcher left the worker computing and
writing into the (deleted, then re-created) temporary folder. Here a launcher of the same kind
(a Python script that starts ``python`` with its arguments and waits) runs the real CLI.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import psutil
import pytest

import slicer_scene
from slicer_scene import SAINRSlicerLib

KNEE = slicer_scene.REPO / "Testing" / "Data" / "knee_qdess_crop_1p5mm.nii.gz"

LAUNCHER = """#!{python}
import os, subprocess, sys
worker = subprocess.Popen([sys.executable, *sys.argv[1:]])
with open(os.environ["SAINR_TEST_WORKER_PID"], "w") as handle:
    handle.write(str(worker.pid))
sys.exit(worker.wait())
"""


def gone(pid: int) -> bool:
    """The process no longer runs (exited, or a zombie waiting to be reaped)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.skipif(os.name == "nt", reason="the launcher stand-in is a POSIX script")
def test_cancel_through_a_launcher_leaves_no_process_and_no_files(tmp_path, monkeypatch):
    launcher = tmp_path / "PythonSlicer"
    launcher.write_text(LAUNCHER.format(python=sys.executable))
    launcher.chmod(0o755)
    pidFile = tmp_path / "worker.pid"
    monkeypatch.setenv("SAINR_TEST_WORKER_PID", str(pidFile))
    monkeypatch.setattr(SAINRSlicerLib.run, "pythonExecutable", lambda: str(launcher))
    handles = slicer_scene.newScene()
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    array = slicer_scene.readArray(KNEE)[::2]  # 64 x 64 x 20 slices: seconds of work
    matrix = slicer_scene.ijkToRAS(np.eye(3), (0.3125, 0.3125, 3.0), (0, 0, 0))
    volume = slicer_scene.addVolume(handles.scene, array, matrix, "knee")
    nodes = handles.scene.GetNumberOfNodes()
    run = slicer_scene.SAINRSlicer.SAINRSlicerLogic().start(volume, 0.5, device="cpu")
    deadline = time.monotonic() + 300  # starting PyTorch on a busy 2-core machine is slow
    while run.poll() and run.fraction == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert run.running and 0 < run.fraction < 1  # the worker is computing
    worker = int(pidFile.read_text(encoding="utf-8"))
    assert worker != run.pid and not gone(worker)

    started = time.monotonic()
    run.cancel()
    while not (gone(worker) and gone(run.pid)) and time.monotonic() - started < 2:
        time.sleep(0.01)
    assert gone(worker) and gone(run.pid), "a process of the run survived Cancel"
    assert time.monotonic() - started < 2
    time.sleep(1.0)  # a surviving worker would re-create the folder and write its results
    assert not list(temp.iterdir())
    assert run.state == run.CANCELLED and handles.scene.GetNumberOfNodes() == nodes


# The worker ends when Slicer dies; cancel survives what Windows and slow kills do

SLEEPER = "import time\ntime.sleep(120)\n"

PARENT = """
import os, subprocess, sys
env = dict(os.environ, SAINRSLICER_PARENT_PID=str(os.getpid()))
worker = subprocess.Popen(
    [sys.executable, "-m", "SAINRSlicerLib.worker", "sleeper"], env=env, start_new_session=True
)
print(worker.pid, flush=True)
worker.wait()
"""


@pytest.mark.skipif(os.name == "nt", reason="Windows ends the worker through a Job object")
def test_worker_ends_itself_when_slicer_is_killed(tmp_path):
    """Slicer killed (SIGKILL: no clean-up, no Cancel) while its worker runs in a session of
    its own: the worker notices within a second or two and exits."""
    (tmp_path / "sleeper.py").write_text(SLEEPER)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(slicer_scene.MODULE_DIR), str(tmp_path)])
    slicer_stand_in = subprocess.Popen(
        [sys.executable, "-c", PARENT], env=env, stdout=subprocess.PIPE, text=True
    )
    worker = int(slicer_stand_in.stdout.readline())
    time.sleep(0.5)
    assert not gone(worker)  # running under the watch
    slicer_stand_in.kill()
    slicer_stand_in.wait()
    deadline = time.monotonic() + 5
    while not gone(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(worker), "the worker outlived the process that started it"


def test_the_run_starts_its_worker_under_the_watch(tmp_path):
    handles = slicer_scene.newScene()
    matrix = slicer_scene.ijkToRAS(np.eye(3), (0.5, 0.5, 3.0), (0, 0, 0))
    array = np.zeros((8, 16, 16), np.int16)
    volume = slicer_scene.addVolume(handles.scene, array, matrix, "v")
    run = slicer_scene.SAINRSlicer.SAINRSlicerLogic().start(volume, 1.0, device="cpu")
    try:
        command = run.log.splitlines()[0].split()
        assert command[1:5] == ["-m", "SAINRSlicerLib.worker", "sainr", "reduce"]
        environment = psutil.Process(run.pid).environ()
        assert environment["SAINRSLICER_PARENT_PID"] == str(os.getpid())
        assert environment["PYTHONIOENCODING"] == "utf-8"
    finally:
        run.cancel()


class SlowToDie:
    """A process whose wait() times out after the kill (stuck in the kernel, e.g. on I/O)."""

    pid = 2**22 + 12345  # no such process group: killpg finds nothing

    def __init__(self, real):
        self.real = real

    def poll(self):
        return None

    def kill(self):
        pass

    def wait(self, timeout=None):
        raise subprocess.TimeoutExpired("worker", timeout)


def test_cancel_ends_the_run_even_when_the_process_does_not_die_in_time():
    handles = slicer_scene.newScene()
    matrix = slicer_scene.ijkToRAS(np.eye(3), (0.5, 0.5, 3.0), (0, 0, 0))
    volume = slicer_scene.addVolume(handles.scene, np.zeros((8, 16, 16), np.int16), matrix, "v")
    nodes = handles.scene.GetNumberOfNodes()
    run = slicer_scene.SAINRSlicer.SAINRSlicerLogic().start(volume, 1.0, device="cpu")
    real = run._process
    run._process = SlowToDie(real)
    try:
        run.cancel()  # raised TimeoutExpired before, leaving the panel's button on Cancel
        assert run.state == run.CANCELLED and not run.running
        assert "did not end within a second" in run.log
        assert handles.scene.GetNumberOfNodes() == nodes
    finally:
        SAINRSlicerLib.process.killProcessTree(real)


def test_windows_kill_survives_a_missing_taskkill(monkeypatch):
    """Windows without taskkill on PATH (or taskkill hanging): the process itself is still
    killed and nothing raises. Simulated here with the Windows branch and no taskkill."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    monkeypatch.setattr(SAINRSlicerLib.process, "_WINDOWS", True)
    monkeypatch.setattr(SAINRSlicerLib.process, "_CREATE_NO_WINDOW", 0)  # a Windows-only flag
    monkeypatch.setenv("PATH", "")  # no taskkill anywhere
    assert SAINRSlicerLib.process.killProcessTree(process, timeout=5)
    assert process.returncode is not None


def test_job_object_layout_is_windows_x64s_and_harmless_elsewhere():
    """JOBOBJECT_EXTENDED_LIMIT_INFORMATION is 144 bytes on 64-bit Windows; a wrong layout
    would make SetInformationJobObject fail (and the crash guard silently missing)."""
    import ctypes

    process = SAINRSlicerLib.process
    if ctypes.sizeof(ctypes.c_void_p) == 8:
        assert ctypes.sizeof(process.JobLimits) == 144
    if os.name != "nt":
        assert process.jobKillingWithSlicer(None) is None
        process.closeJob(None)
