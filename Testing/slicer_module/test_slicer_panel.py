"""The panel's own code (SAINRSlicerLib/widget.py) run without Qt: Slicer's widget base class
is skipped and each .ui widget is a plain object holding the properties the code sets
(enabled, text, ...). The Logic, the parameter node, the scene and the installer's failure
are real; what is checked is what a user of the panel would see.
"""

from __future__ import annotations

import types
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import slicer
from test_slicer_logic import DicomFolderDatabase, write_dicom_slices
from test_slicer_ui import EXPECTED_CLASSES, FailingInstall

import slicer_scene
from slicer_scene import SAINRSlicerLib

widget_module = SAINRSlicerLib.widget
NOT_INSTALLED = (
    "PyTorch is not installed: it is installed through the PyTorch extension at the first run."
)


class UiWidget:
    """A .ui widget's properties as the panel reads and sets them (no Qt behind them)."""

    def __init__(self):
        self.enabled, self.visible, self.checked = True, True, False
        self.text = self.toolTip = self.styleSheet = ""
        self.value, self.currentIndex, self.decimals, self.count = 0, 0, 4, 0
        self.lines: list[str] = []

    def blockSignals(self, block: bool) -> bool:
        return False

    def findData(self, data) -> int:
        return 0

    def clear(self) -> None:
        self.lines.clear()

    def appendPlainText(self, line: str) -> None:
        self.lines.append(line)


class Timer:
    def start(self):
        pass

    def stop(self):
        pass


@pytest.fixture
def panel(monkeypatch):
    """The panel on a fresh scene with a small thick-slice input, PyTorch not installed."""
    monkeypatch.setattr(
        SAINRSlicerLib.framework.ScriptedLoadableModuleWidget,
        "__init__",
        lambda self, parent=None: None,
    )
    shown = []
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kw: shown.append((text, kw)))
    monkeypatch.setattr(SAINRSlicerLib.logic, "installedTorchVersion", lambda: None)
    handles = slicer_scene.newScene()
    matrix = slicer_scene.ijkToRAS(np.eye(3), (0.5, 0.5, 3.0), (0, 0, 0))
    volume = slicer_scene.addVolume(handles.scene, np.zeros((8, 16, 16), np.int16), matrix, "v")
    widget = widget_module.SAINRSlicerWidget()
    widget.ui = types.SimpleNamespace(**{name: UiWidget() for name in EXPECTED_CLASSES})
    widget.ui.deviceInfoLabel.text = NOT_INSTALLED
    widget._timer = Timer()
    widget.logic = SAINRSlicerLib.logic.SAINRSlicerLogic()
    widget._parameterNode = widget.logic.getParameterNode()
    widget._parameterNode.inputVolume = volume
    widget._onParameterNodeModified()
    return types.SimpleNamespace(widget=widget, ui=widget.ui, volume=volume, shown=shown)


def test_apply_and_the_parameters_are_locked_while_pytorch_installs(panel):
    widget, ui = panel.widget, panel.ui
    assert ui.applyButton.enabled
    during, installs = [], []

    class WatchedInstall(FailingInstall):
        def installTorch(self) -> None:
            installs.append(1)
            locked = ("applyButton", *widget_module.PARAMETER_WIDGETS)
            during.append({name: getattr(ui, name).enabled for name in locked})
            during.append(ui.deviceInfoLabel.text)
            widget.onApplyButton()  # a second click while the installer runs
            super().installTorch()

    widget.logic = WatchedInstall()
    widget.onApplyButton()

    locked, deviceLine = during
    assert not any(locked.values()), locked
    assert deviceLine.startswith("Installing PyTorch")
    assert len(installs) == 1  # the second click started no second install
    # after the failed install every line recovers and the panel is usable again
    assert ui.deviceInfoLabel.text == NOT_INSTALLED
    assert ui.applyButton.enabled and ui.applyButton.text != "Cancel"
    assert all(getattr(ui, name).enabled for name in ("inputSelector", "outputSelector"))
    assert ui.statusLabel.text.startswith("Cannot start: PyTorch could not be installed")
    assert ui.statusLabel.styleSheet  # in red
    ((message, options),) = panel.shown
    assert "No matching distribution found for torch" in options["detailedText"]
    assert "AttributeError" not in message + options["detailedText"]
    assert widget._run is None


def test_thickness_is_prefilled_from_dicom_and_a_typed_value_becomes_the_users(
    panel, tmp_path, monkeypatch
):
    widget, ui, scene = panel.widget, panel.ui, panel.volume.GetScene()
    parameters = widget._parameterNode
    assert (parameters.sliceThicknessMm, parameters.sliceThicknessSource) == (0.0, "auto")
    assert ui.sliceThicknessSourceLabel.text == "estimated when you run"

    uids = write_dicom_slices(tmp_path / "series", "2.5")
    monkeypatch.setattr(
        slicer, "dicomDatabase", DicomFolderDatabase(tmp_path / "series"), raising=False
    )
    loaded = slicer_scene.addVolume(
        scene,
        np.zeros((8, 16, 16), np.int16),
        slicer_scene.ijkToRAS(np.eye(3), (0.5, 0.5, 3.0), (0, 0, 0)),
        "from DICOM",
    )
    loaded.SetAttribute("DICOM.instanceUIDs", " ".join(uids))
    parameters.inputVolume = loaded
    widget._onParameterNodeModified()
    assert (parameters.sliceThicknessMm, parameters.sliceThicknessSource) == (2.5, "dicom")
    assert ui.sliceThicknessSourceLabel.text == "from DICOM"

    parameters.sliceThicknessMm = 2.0  # the user types a value
    widget._onParameterNodeModified()
    assert parameters.sliceThicknessSource == "user"
    assert ui.sliceThicknessSourceLabel.text == "your value"

    parameters.sliceThicknessMm = 0.0  # typed back to 0, shown as "Automatic"
    widget._onParameterNodeModified()
    assert ui.sliceThicknessSourceLabel.text == "estimated when you run"

    parameters.inputVolume = panel.volume  # another input: filled in afresh
    widget._onParameterNodeModified()
    assert (parameters.sliceThicknessMm, parameters.sliceThicknessSource) == (0.0, "auto")


def test_a_run_passes_only_the_users_thickness_and_selects_its_output(panel, monkeypatch):
    widget, parameters = panel.widget, panel.widget._parameterNode
    monkeypatch.setattr(SAINRSlicerLib.logic, "installedTorchVersion", lambda: "2.13.0")
    monkeypatch.setattr(slicer.util, "WaitCursor", lambda: __import__("contextlib").nullcontext())
    widget._startRun()
    run = widget._run
    try:
        assert "--slice-thickness" not in run.log  # automatic: the CLI chooses
        assert parameters.outputVolume is run.outputVolume  # selected up front
        assert run.outputVolume.GetName() == "v_SAINR_1mm"
        assert panel.ui.applyButton.text == "Cancel"
    finally:
        widget._cancelRun()
    assert parameters.outputVolume is None  # the cancelled run's node is gone
    parameters.sliceThicknessMm = 1.5
    widget._onParameterNodeModified()
    widget._startRun()
    try:
        assert "--slice-thickness 1.5" in widget._run.log
    finally:
        widget._cancelRun()


def test_a_torch_check_that_answers_nothing_is_an_error_not_a_spinner(monkeypatch, tmp_path):
    """PythonSlicer printing nothing (or no JSON) used to leave "Checking PyTorch..." forever."""
    for output in ("", "not json"):
        fake = tmp_path / "PythonSlicer"
        fake.write_text(f"#!/bin/sh\necho '{output}'\n")
        fake.chmod(0o755)
        monkeypatch.setattr(
            SAINRSlicerLib.torchenv, "pythonExecutable", lambda fake=fake: str(fake)
        )
        info = SAINRSlicerLib.torchenv.probeTorch(timeout=30)
        assert info["torch"] is None and info["error"]
        assert SAINRSlicerLib.panel.describeTorch(info).startswith("PyTorch does not load: ")
        assert output in info["details"]


def test_research_notice_and_help_say_the_output_is_synthesized():
    panel = SAINRSlicerLib.panel
    assert panel.RESEARCH_NOTICE.startswith("For research use only, not for diagnosis.")
    help = panel.helpText()
    assert panel.RESEARCH_NOTICE in help
    assert "also sharpens them" in help  # the acquired slices are not kept unchanged
    readme = " ".join((slicer_scene.REPO / "README.md").read_text(encoding="utf-8").split())
    assert "Research use only, not for diagnosis." in readme


def test_tooltips_and_help_carry_no_measured_figures():
    """Benchmark figures (dB, CPU types, seconds per step) mean nothing to a clinician and
    go stale; the tooltips say what a choice trades in words."""
    import re

    root = ET.parse(slicer_scene.REPO / "Resources" / "UI" / "SAINRSlicer.ui").getroot()
    ui = " ".join(  # what the panel shows: texts and tooltips
        prop.findtext("string") or ""
        for prop in root.iter("property")
        if prop.get("name") in ("text", "toolTip", "specialValueText", "noneDisplay")
    )
    panel = SAINRSlicerLib.panel
    texts = " ".join([ui, panel.helpText(), *panel.MODEL_DESCRIPTIONS.values()])
    for pattern in (
        r"\d\s*dB",
        r"\d-core",
        r"\d+(\.\d+)? s per step",
        r"\d+ to \d+(\.\d+)? minutes",
    ):
        assert not re.search(pattern, texts), pattern
    for name in ("gating", "Gating", "i × j × k"):
        assert name not in ui
    assert "Attention mask" in ui


def test_a_scene_saved_with_a_model_no_longer_shipped_runs_the_default(panel):
    """The panel offers every shipped model; a scene that chose one the catalog no longer
    lists gets the default, not a run that fails on an unknown model."""
    combo = panel.ui.modelComboBox
    choices = [*panel.widget.logic.modelCatalog(), widget_module.WEIGHTS_FILE]
    assert {"default", "fast"} <= set(choices)
    combo.count = len(choices)
    combo.findData = lambda data: choices.index(data) if data in choices else -1
    panel.widget._parameterNode.model = "retired"
    panel.widget._onParameterNodeModified()
    assert panel.widget._parameterNode.model == widget_module.DEFAULT_MODEL
    assert panel.widget._selectedWeights() is None
    panel.widget._parameterNode.model = "fast"
    panel.widget._onParameterNodeModified()
    assert panel.widget._parameterNode.model == "fast"
    assert panel.widget._selectedWeights() == "fast"
