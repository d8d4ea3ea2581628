"""The panel and the extension's packaging, checked without the Slicer application.

The Widget itself needs Qt; what can go wrong between it and the .ui file (a renamed widget, a
wrong class, a binding Slicer's parameterNodeWrapper cannot make) is checked statically here,
as are the texts the panel shows and what CMake and the .s4ext file ship and declare.
"""

from __future__ import annotations

import html
import json
import pathlib
import re
import struct
import subprocess
import sys
import types
import typing
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import slicer

import slicer_scene
from slicer_scene import SAINRSlicer, SAINRSlicerLib

UI_FILE = slicer_scene.REPO / "Resources" / "UI" / "SAINRSlicer.ui"
MODULE_FILE = slicer_scene.MODULE_DIR / "SAINRSlicer.py"

#: Class each widget the Widget code uses must have (what the code calls on it depends on it).
EXPECTED_CLASSES = {
    "inputSelector": "qMRMLNodeComboBox",
    "spacingLabel": "QLabel",
    "axisLabel": "QLabel",
    "targetSpacingSpinBox": "QDoubleSpinBox",
    "sliceThicknessSpinBox": "QDoubleSpinBox",
    "isotropicButton": "QPushButton",
    "outputSizeLabel": "QLabel",
    "deviceComboBox": "QComboBox",
    "deviceInfoLabel": "QLabel",
    "modelComboBox": "QComboBox",
    "weightsPathLineEdit": "ctkPathLineEdit",
    "adaptCheckBox": "QCheckBox",
    "adaptStepsSpinBox": "QSpinBox",
    "outputSelector": "qMRMLNodeComboBox",
    "applyButton": "QPushButton",
    "progressBar": "QProgressBar",
    "statusLabel": "QLabel",
    "showMaskCheckBox": "QCheckBox",
    "maskOpacitySlider": "ctkSliderWidget",
    "compareButton": "QPushButton",
    "restoreLayoutButton": "QPushButton",
    "logTextEdit": "QPlainTextEdit",
}

#: (widget class, parameter type) pairs Slicer's parameterNodeWrapper GUI connectors accept
#: (Base/Python/slicer/parameterNodeWrapper/guiConnectors.py; they match the exact class).
CONNECTABLE = {
    ("QCheckBox", bool),
    ("QPushButton", bool),
    ("QSpinBox", int),
    ("QSlider", int),
    ("QDoubleSpinBox", float),
    ("ctkSliderWidget", float),
    ("QComboBox", str),
    ("QLineEdit", str),
    ("ctkPathLineEdit", pathlib.Path),
    ("qMRMLNodeComboBox", slicer.vtkMRMLNode),
}


def widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI_FILE).getroot().iter("widget")}


def used_names() -> set[str]:
    return set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text(encoding="utf-8")))


def parameter_hints() -> dict[str, object]:
    return typing.get_type_hints(SAINRSlicer.SAINRSlicerParameterNode, include_extras=True)


def bindings() -> dict[str, ET.Element]:
    """Parameter name -> widget, from the SlicerParameterName properties."""
    found = {}
    for widget in widgets().values():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                found[prop.findtext("string")] = widget
    return found


def test_every_widget_the_code_uses_exists_with_the_right_class():
    ui = widgets()
    assert used_names() == set(EXPECTED_CLASSES)
    for name, cls in EXPECTED_CLASSES.items():
        assert name in ui, f"{name} is used by the Widget but missing in the .ui"
        assert ui[name].get("class") == cls, name


def test_root_is_a_mrml_widget_and_custom_widgets_are_declared():
    root = ET.parse(UI_FILE).getroot()
    assert root.find("widget").get("class") == "qMRMLWidget"
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    assert {c for c in used if c.startswith(("ctk", "qMRML"))} <= declared
    receivers = {c.findtext("receiver") for c in root.iter("connection")}
    assert receivers == {"inputSelector", "outputSelector"}  # both get the scene


@pytest.mark.parametrize("parameter", sorted(bindings()))
def test_bound_widgets_can_be_connected_by_the_parameter_node_wrapper(parameter):
    hints = parameter_hints()
    assert parameter in hints, f"the .ui binds {parameter}, which the parameter node lacks"
    hint = hints[parameter]
    base, extras = (
        (typing.get_args(hint)[0], typing.get_args(hint)[1:])
        if (typing.get_origin(hint) is typing.Annotated)
        else (hint, ())
    )
    if isinstance(base, type) and issubclass(base, slicer.vtkMRMLNode):
        base = slicer.vtkMRMLNode
    cls = bindings()[parameter].get("class")
    assert (cls, base) in CONNECTABLE
    if cls == "ctkSliderWidget":  # the connector refuses unbounded floats
        assert any(isinstance(e, SAINRSlicerLib.framework.WithinRange) for e in extras)


def test_input_selector_offers_image_volumes_only():
    ui = widgets()
    props = {p.get("name"): p for p in ui["inputSelector"].findall("property")}
    assert props["nodeTypes"].findtext("stringlist/string") == "vtkMRMLScalarVolumeNode"
    assert props["showChildNodeTypes"].findtext("bool") == "false"  # no labelmaps
    output = {p.get("name"): p for p in ui["outputSelector"].findall("property")}
    for flag in ("noneEnabled", "addEnabled", "renameEnabled"):
        assert output[flag].findtext("bool") == "true"


def test_adaptation_is_an_advanced_option_whose_steps_match_the_parameter():
    ui = widgets()
    advanced = ui["advancedCollapsibleButton"]
    names = {w.get("name") for w in advanced.iter("widget")}
    assert {"adaptCheckBox", "adaptStepsSpinBox"} <= names
    assert advanced.find("property[@name='collapsed']").findtext("bool") == "true"
    spin = {
        p.get("name"): p.findtext("number") for p in ui["adaptStepsSpinBox"].findall("property")
    }
    hint = parameter_hints()["adaptSteps"]
    (limits,) = typing.get_args(hint)[1:]
    assert (int(spin["minimum"]), int(spin["maximum"])) == (limits.minimum, limits.maximum)
    assert int(spin["value"]) == SAINRSlicer.DEFAULT_ADAPT_STEPS


def test_panel_needs_the_application_but_the_logic_does_not():
    with pytest.raises(RuntimeError, match="needs the 3D Slicer application"):
        SAINRSlicer.SAINRSlicerWidget()
    slicer_scene.newScene()
    assert SAINRSlicer.SAINRSlicerLogic().getParameterNode().targetSpacing == 1.0


def test_geometry_preview_keeps_torch_out_of_slicers_process():
    """Spacing, slice axis and output size come from the core's geometry without importing
    torch (which would slow the panel and block a later PyTorch install until restart)."""
    code = f"""
import sys
sys.path.insert(0, {str(slicer_scene.REPO / "Testing")!r})
import numpy as np
import slicer_scene
scene = slicer_scene.newScene().scene
matrix = slicer_scene.ijkToRAS(np.eye(3), (0.5, 0.5, 3.0), (0, 0, 0))
volume = slicer_scene.addVolume(scene, np.zeros((8, 16, 16), np.int16), matrix, "v")
plan = slicer_scene.SAINRSlicer.SAINRSlicerLogic().plan(volume, 1.0)
print(plan.outputSize, plan.axisLabel, "torch" in sys.modules)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "(16, 16, 22) k (S-I, axial slices) False"


def test_help_shows_the_console_example():
    assert html.escape(SAINRSlicer.CONSOLE_EXAMPLE) in SAINRSlicer.helpText()


@pytest.mark.parametrize(
    "info, expected",
    [
        (
            {"torch": "2.5.1+cu121", "gpus": [{"name": "NVIDIA RTX A4000", "memoryGB": 15.7}]},
            "PyTorch 2.5.1+cu121 · GPU: NVIDIA RTX A4000 (16 GB)",
        ),
        (
            {"torch": "2.13.0+cpu", "gpus": []},
            "PyTorch 2.13.0+cpu · no usable GPU: runs on the CPU (slower)",
        ),
        (
            {"torch": None},
            "PyTorch is not installed: it is installed through the PyTorch extension at the first run.",
        ),
        (
            {"torch": None, "error": "OSError: libcudnn.so.9 missing"},
            "PyTorch does not load: OSError: libcudnn.so.9 missing",
        ),
    ],
)
def test_device_line_says_what_pytorch_can_use(info, expected):
    assert SAINRSlicer.describeTorch(info) == expected


@pytest.mark.parametrize(
    "value, text",
    [
        (1.0, "1.0"),
        (0.75, "0.75"),
        (0.5, "0.5"),
        (2.0, "2.0"),
        (0.3125, "0.3125"),
        (1 / 3, "0.3333"),
    ],
)
def test_spacing_in_node_names(value, text):
    assert SAINRSlicer.formatMillimetres(value) == text


@pytest.mark.parametrize("seconds, text", [(8.4, "8 s"), (125, "2 min 5 s"), (3780, "1 h 3 min")])
def test_remaining_time_wording(seconds, text):
    assert SAINRSlicer.formatDuration(seconds) == text


def test_log_view_is_a_collapsed_section_and_thickness_matches_its_parameter():
    ui = widgets()
    log = ui["logCollapsibleButton"]
    assert log.find("property[@name='collapsed']").findtext("bool") == "true"
    assert "logTextEdit" in {w.get("name") for w in log.iter("widget")}
    spin = {
        p.get("name"): p.findtext("double") for p in ui["sliceThicknessSpinBox"].findall("property")
    }
    (limits,) = typing.get_args(parameter_hints()["sliceThicknessMm"])[1:]
    assert (float(spin["minimum"]), float(spin["maximum"])) == (limits.minimum, limits.maximum)


def test_devices_offered_are_auto_cpu_each_gpu_by_name_and_mps():
    panel = SAINRSlicerLib.panel
    assert [d for _, d in panel.deviceChoices(None)] == ["auto", "cpu"]
    info = {
        "torch": "2.5.1+cu121",
        "gpus": [
            {"name": "NVIDIA RTX A4000", "memoryGB": 15.7},
            {"name": "NVIDIA T4", "memoryGB": 14.6},
        ],
        "mps": False,
    }
    choices = panel.deviceChoices(info)
    assert [d for _, d in choices] == ["auto", "cpu", "cuda:0", "cuda:1"]
    assert choices[3][0] == "GPU 1: NVIDIA T4 (15 GB)"
    mac = panel.deviceChoices({"torch": "2.5.1", "gpus": [], "mps": True})
    assert mac[-1] == ("Apple GPU (MPS)", "mps")
    every = [d for _, d in choices + mac]
    assert all(SAINRSlicerLib.logic.DEVICE_PATTERN.fullmatch(d) for d in every)


def test_core_advice_is_reworded_for_the_panel():
    wording = SAINRSlicerLib.core.panelWording
    assert (
        wording("CUDA was requested but no usable GPU is visible; use --device cpu")
        == "CUDA was requested but no usable GPU is visible; choose CPU as the device"
    )
    assert wording(
        "target spacing 0.1 mm is a 30.0x reduction of 3 mm (limit 20x); use a "
        "larger spacing or force it (--force)"
    ).endswith("use a larger spacing")
    assert "--" not in wording("--slice-thickness must be a positive number, got -1.0")


class FailingInstall(SAINRSlicer.SAINRSlicerLogic):
    """The PyTorch extension's pip run failing, as it does offline or behind a proxy."""

    def installTorch(self) -> None:
        raise subprocess.CalledProcessError(
            1, ["pip", "install", "torch"], output="ERROR: No matching distribution found for torch"
        )


def test_a_failed_pytorch_install_reaches_the_panels_error_display(monkeypatch):
    monkeypatch.setattr(SAINRSlicerLib.logic, "installedTorchVersion", lambda: None)
    slicer_scene.newScene()
    shown, statuses = [], []
    with SAINRSlicerLib.panel.errorsShown("Cannot start:", lambda *report: shown.append(report)):
        FailingInstall().ensureTorch(statuses.append)
    assert statuses == ["Installing PyTorch through the PyTorch extension (several minutes)..."]
    ((message, details),) = shown
    assert message.startswith(
        "Cannot start: PyTorch could not be installed (the installer exited with status 1)."
    )
    assert "No matching distribution found for torch" in details
    assert "CalledProcessError" in details  # the traceback


def test_an_unexpected_exception_reaches_the_panels_error_display():
    """A bug (here a wrong argument type deep in the core) is shown with its traceback, not
    only printed in the Python console."""
    handles = slicer_scene.newScene()
    matrix = slicer_scene.ijkToRAS(np.eye(3), (0.5, 0.5, 3.0), (0, 0, 0))
    volume = slicer_scene.addVolume(handles.scene, np.ones((8, 16, 16), np.int16), matrix, "v")
    shown = []
    with SAINRSlicerLib.panel.errorsShown("Cannot start:", lambda *report: shown.append(report)):
        SAINRSlicer.SAINRSlicerLogic().plan(volume, "one millimetre")
    ((message, details),) = shown
    assert message.startswith("Cannot start: TypeError: ")
    assert "Traceback" in details and "request.py" in details


def test_reload_imports_the_library_and_the_core_afresh():
    """Slicer's Reload re-executes SAINRSlicer.py only; the module drops its library and the
    core from sys.modules first, so edited library code is what runs after Reload."""
    code = f"""
import importlib, sys
sys.path.insert(0, {str(slicer_scene.REPO / "Testing")!r})
import slicer_scene
module = slicer_scene.SAINRSlicer
old = module.SAINRSlicerLogic
dropped = module.forgetLibraryModules()
module = importlib.reload(module)
print(module.SAINRSlicerLogic is not old, "SAINRSlicerLib.logic" in dropped,
      "sainr.protocol" in dropped, sys.modules["SAINRSlicerLib.logic"].SAINRSlicerLogic is module.SAINRSlicerLogic)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["True"] * 4


# Extension packaging


def cmake_list(name: str) -> list[str]:
    text = (slicer_scene.MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    block = re.search(rf"set\({name}\n(.*?)\n  \)", text, re.S).group(1)
    return [line.strip().replace("${MODULE_NAME}", "SAINRSlicer") for line in block.splitlines()]


def extension_variables() -> dict[str, str]:
    text = (slicer_scene.REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    return dict(re.findall(r'set\(EXTENSION_(\w+) "([^"]*)"\)', text))


def s4ext() -> dict[str, str]:
    lines = (slicer_scene.REPO / "SAINRSlicer.s4ext").read_text(encoding="utf-8").splitlines()
    pairs = (line.split(" ", 1) for line in lines if line.strip() and not line.startswith("#"))
    return {key: value for key, value in pairs}


def test_every_library_and_core_file_is_installed_with_the_module():
    module = slicer_scene.MODULE_DIR
    on_disk = {
        str(p.relative_to(module)).replace("\\", "/")
        for package in ("SAINRSlicerLib", "sainr")
        for p in (module / package).rglob("*.py")
    }
    listed = cmake_list("MODULE_PYTHON_SCRIPTS")
    assert listed[0] == "SAINRSlicer.py"
    assert set(listed[1:]) == on_disk
    assert len(listed) == len(set(listed))


def test_every_shipped_resource_exists_including_the_catalog_models():
    resources = slicer_scene.REPO / "Resources"
    listed = cmake_list("MODULE_RESOURCES")
    for resource in listed:
        assert (resources / resource).is_file(), resource
    catalog = json.loads((resources / "Models" / "models.json").read_text(encoding="utf-8"))[
        "models"
    ]
    for entry in catalog.values():
        assert f"Models/{entry['file']}" in listed
    assert "Sample/knee_qdess_sag_3mm.nii.gz" in listed  # the self-test reduces it


def test_s4ext_agrees_with_cmake():
    cmake, index = extension_variables(), s4ext()
    assert index["depends"] == cmake["DEPENDS"] == "PyTorch"
    assert index["category"] == cmake["CATEGORY"] == "Filtering"
    assert index["homepage"] == cmake["HOMEPAGE"] == index["scmurl"]
    assert index["scm"] == "git"
    for key in ("iconurl", "screenshoturls", "description", "contributors"):
        cmake_key = {"iconurl": "ICONURL", "screenshoturls": "SCREENSHOTURLS"}.get(key, key.upper())
        assert index[key] == cmake[cmake_key], key


def test_icon_and_screenshots_named_by_the_urls_exist():
    raw = "https://raw.githubusercontent.com/sainrslicer/SAINRSlicer/main/"
    urls = [extension_variables()["ICONURL"], *extension_variables()["SCREENSHOTURLS"].split()]
    for url in urls:
        assert url.startswith(raw)
        assert (slicer_scene.REPO / url.removeprefix(raw)).is_file(), url
    header = (slicer_scene.REPO / "Resources" / "Icons" / "SAINRSlicer.png").read_bytes()[:24]
    assert struct.unpack(">II", header[16:24]) == (128, 128)  # PNG IHDR width, height


def catalog_entry() -> dict:
    return json.loads((slicer_scene.REPO / "SAINRSlicer.json").read_text(encoding="utf-8"))


#: Keys of the Extensions Index entry schema (Slicer/Slicer Schemas/
#: slicer-extension-catalog-entry-schema-v1.0.1.json): required, then the others it allows.
CATALOG_SCHEMA = "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json#"
CATALOG_REQUIRED = {"$schema", "category", "scm_url"}
CATALOG_KEYS = CATALOG_REQUIRED | {
    "scm_revision",
    "scm_type",
    "build_dependencies",
    "build_subdirectory",
    "enabled",
    "tier",
}


def test_catalog_entry_follows_the_index_schema_and_agrees_with_s4ext_and_cmake():
    entry, index, cmake = catalog_entry(), s4ext(), extension_variables()
    assert entry["$schema"] == CATALOG_SCHEMA
    assert CATALOG_REQUIRED <= set(entry) <= CATALOG_KEYS
    assert entry["category"] == index["category"] == cmake["CATEGORY"]
    assert entry["scm_url"] == index["scmurl"] == cmake["HOMEPAGE"]
    assert entry["scm_revision"] == index["scmrevision"]
    assert entry["scm_type"] == index["scm"]
    assert entry["build_dependencies"] == index["depends"].split() == cmake["DEPENDS"].split()
    assert entry["build_subdirectory"] == index["build_subdirectory"]
    assert entry["enabled"] is (index["enabled"] == "1")
    repository = entry["scm_url"].rsplit("/", 1)[-1]
    assert "slicer" in repository.lower()  # the index's repository-name check
    project = re.search(
        r"project\((\w+)\)", (slicer_scene.REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    )
    assert project.group(1) == "SAINRSlicer"  # = the entry's file name


def test_contributors_and_citation_are_the_same_everywhere():
    parent = types.SimpleNamespace()
    SAINRSlicer.SAINRSlicer(parent)
    assert (
        parent.contributors == [extension_variables()["CONTRIBUTORS"]] == [s4ext()["contributors"]]
    )
    readme = (slicer_scene.REPO / "README.md").read_text(encoding="utf-8")
    citation = re.search(r"## How to cite\n\n(.*)", readme, re.S).group(1)
    for part in (
        "Spatial attention-based implicit neural representation for arbitrary reduction",
        "Medical Image Analysis (2024)",
        "doi:10.1016/j.media.2024.103158",
    ):
        assert part in " ".join(citation.split())
        assert part in " ".join(parent.acknowledgementText.split())


def test_self_test_plans_and_skips_the_run_without_pytorch(monkeypatch):
    """ctest runs the self-test on build machines without PyTorch: it must not install it."""
    monkeypatch.setattr(SAINRSlicerLib.torchenv, "installedTorchVersion", lambda: None)
    monkeypatch.setattr(
        SAINRSlicerLib.torchenv, "installTorchThroughExtension", lambda: pytest.fail("installs")
    )
    scene = slicer_scene.newScene().scene
    SAINRSlicer.SAINRSlicerTest().runTest()
    assert scene.GetFirstNodeByName("knee_qdess_sag_3mm") is not None
    assert scene.GetFirstNodeByName("knee_qdess_sag_3mm_1.0mm") is None
