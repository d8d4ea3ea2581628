"""Cancel stops all the work, also when the run's process is a launcher.

In Slicer the Logic starts PythonSlicer, a launcher that runs the real Python as its child and
waits for it. Slicer ships no psutil, so killing only the launcher left the worker computing and
writing into the (deleted, then re-created) temporary folder. Here a launcher of the same kind
(a Python script that starts ``python`` with its arguments and waits) runs the real CLI.
"""

from __future__ import annotations

import os
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
