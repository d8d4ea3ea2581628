"""The panel and the extension's packaging, checked without the Slicer application.

The Widget itself needs Qt; what can go wrong between it and the .ui file (a renamed widget, a
wrong class, a binding Slicer's parameterNodeWrapper cannot make) is checked statically here,
as are the texts the panel shows and what CMake and the catalog entry ship and declare.
"""

from __future__ import annotations

import html
import io
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
WIDGET_FILE = slicer_scene.MODULE_DIR / "SAINRSlicerLib" / "widget.py"

#: Class each widget the Widget code uses must have (what the code calls on it depends on it).
EXPECTED_CLASSES = {
    "researchNoticeLabel": "QLabel",
    "inputSelector": "qMRMLNodeComboBox",
    "spacingLabel": "QLabel",
    "axisLabel": "QLabel",
    "targetSpacingSpinBox": "QDoubleSpinBox",
    "sliceThicknessSpinBox": "QDoubleSpinBox",
    "sliceThicknessSourceLabel": "QLabel",
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
    """Widgets the Widget code reaches: ``self.ui.NAME`` and the names it locks by list."""
    code = WIDGET_FILE.read_text(encoding="utf-8")
    return set(re.findall(r"self\.ui\.(\w+)", code)) | set(SAINRSlicerLib.widget.PARAMETER_WIDGETS)


def test_module_file_is_a_thin_shell():
    """Metadata, sample data, self-test; the panel lives in SAINRSlicerLib/widget.py."""
    assert len(MODULE_FILE.read_text(encoding="utf-8").splitlines()) <= 150
    assert SAINRSlicer.SAINRSlicerWidget is SAINRSlicerLib.widget.SAINRSlicerWidget


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


#: A pip run that fails as it does offline or behind a proxy.
FAILING_INSTALLER = (
    "import sys; print('Collecting torch'); "
    "print('ERROR: No matching distribution found for torch'); sys.exit(1)"
)


class FailingInstall(SAINRSlicer.SAINRSlicerLogic):
    """The PyTorch extension's install failing the way Slicer reports it: the installer runs
    through slicer.util.launchConsoleProcess and logProcessOutput, which prints each line and
    raises CalledProcessError whose ``output`` is the process' stdout, a file object it has
    already read to the end (not text)."""

    def installTorch(self) -> None:
        process = slicer.util.launchConsoleProcess(
            [sys.executable, "-c", FAILING_INSTALLER], useStartupEnvironment=False
        )
        slicer.util.logProcessOutput(process)


def test_a_failed_pytorch_install_reaches_the_panels_error_display(monkeypatch):
    monkeypatch.setattr(SAINRSlicerLib.logic, "installedTorchVersion", lambda: None)
    slicer_scene.newScene()
    with pytest.raises(SAINRSlicer.SAINRSlicerError) as raised:
        FailingInstall().ensureTorch()
    cause = raised.value.__cause__
    assert isinstance(cause, subprocess.CalledProcessError)
    assert hasattr(cause.output, "read") and not isinstance(cause.output, str)  # Slicer's shape

    shown, statuses = [], []
    with SAINRSlicerLib.panel.errorsShown("Cannot start:", lambda *report: shown.append(report)):
        FailingInstall().ensureTorch(statuses.append)
    assert statuses == ["Installing PyTorch through the PyTorch extension (several minutes)..."]
    ((message, details),) = shown
    assert message.startswith(
        "Cannot start: PyTorch could not be installed (the installer exited with status 1)"
    )
    assert "PyTorch Utils" in message and "AttributeError" not in message
    tail = details.split("Traceback")[0]
    assert "Collecting torch" in tail and "No matching distribution found for torch" in tail
    assert "CalledProcessError" in details  # the traceback


def test_installer_output_reads_text_bytes_and_pipes():
    output = SAINRSlicerLib.logic.installerOutput
    for given in ("pip says no", b"pip says no"):
        error = subprocess.CalledProcessError(1, ["pip"], output=given)
        assert "pip says no" in output(error)
    closed = io.StringIO("gone")
    closed.close()  # a pipe that cannot be read any more
    error = subprocess.CalledProcessError(1, ["pip"], output=closed, stderr=None)
    assert output(error, ["last line printed"]).startswith(
        "The installer's last lines:\nlast line printed"
    )


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


def test_catalog_entry_follows_the_index_schema_and_agrees_with_cmake():
    """The Extensions Index takes JSON entries only (it moved from .s4ext files): one entry,
    consistent with CMakeLists.txt, with a tier (1: experimental, as a research tool is)."""
    entry, cmake = catalog_entry(), extension_variables()
    assert not list(slicer_scene.REPO.glob("*.s4ext"))
    assert entry["$schema"] == CATALOG_SCHEMA
    assert CATALOG_REQUIRED <= set(entry) <= CATALOG_KEYS
    assert entry["category"] == cmake["CATEGORY"]
    assert entry["scm_url"] == cmake["HOMEPAGE"]
    assert (entry["scm_type"], entry["scm_revision"]) == ("git", "main")
    assert entry["build_dependencies"] == cmake["DEPENDS"].split()
    assert entry["build_subdirectory"] == "."
    assert entry["enabled"] is True
    assert entry["tier"] == 1
    project = re.search(
        r"project\((\w+)\)", (slicer_scene.REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    )
    assert project.group(1) == "SAINRSlicer"  # = the entry's file name


def test_readme_says_what_a_maintainer_must_do_to_submit():
    """The index's checks the code cannot meet alone: the repository's name and topic."""
    readme = " ".join((slicer_scene.REPO / "README.md").read_text(encoding="utf-8").split())
    section = readme[readme.index("## Submitting to the Extensions Index") :]
    for must in ('starts with "Slicer"', "3d-slicer-extension", "SAINRSlicer.json", "tier"):
        assert must in section, must


def test_contributors_and_citation_are_the_same_everywhere():
    """No person is named in the project's history or files: the contributors are its
    developers, the same in the module and CMake (the catalog reads CMake's)."""
    parent = types.SimpleNamespace()
    SAINRSlicer.SAINRSlicer(parent)
    assert parent.contributors == [extension_variables()["CONTRIBUTORS"]]
    assert parent.contributors == ["SAINRSlicer developers"]
    readme = (slicer_scene.REPO / "README.md").read_text(encoding="utf-8")
    citation = re.search(r"## How to cite\n\n(.*)", readme, re.S).group(1)
    for part in (
        "Spatial attention-based implicit neural representation for arbitrary reduction",
        "Medical Image Analysis (2024)",
        "doi:10.1016/j.media.2024.103158",
    ):
        assert part in " ".join(citation.split())
        assert part in " ".join(parent.acknowledgementText.split())


def test_sample_licence_is_stated_in_the_licence_file_and_readme():
    """The code is MIT; the bundled sample is CC BY-NC-SA 4.0, which LICENSE.txt must say."""
    licence = (slicer_scene.REPO / "LICENSE.txt").read_text(encoding="utf-8")
    readme = (slicer_scene.REPO / "README.md").read_text(encoding="utf-8")
    sample = (slicer_scene.REPO / "Resources" / "Sample" / "README.md").read_text("utf-8")
    assert licence.startswith("MIT License")
    assert "CC BY-NC-SA 4.0" in sample
    for text in (licence, readme):
        assert "CC BY-NC-SA 4.0" in text and "knee_qdess_sag_3mm.nii.gz" in text


def test_testing_folder_is_registered_with_ctest_as_in_the_template():
    module = slicer_scene.MODULE_DIR
    cmake = (module / "CMakeLists.txt").read_text(encoding="utf-8")
    testing = re.search(r"if\(BUILD_TESTING\)(.*?)endif\(\)", cmake, re.S).group(1)
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in testing
    assert "add_subdirectory(Testing)" in testing
    assert "add_subdirectory(Python)" in (module / "Testing" / "CMakeLists.txt").read_text()
    python = (module / "Testing" / "Python" / "CMakeLists.txt").read_text(encoding="utf-8")
    scripts = re.findall(r"slicer_add_python_unittest\(SCRIPT (\S+)\)", python)
    assert scripts and all((module / "Testing" / "Python" / s).is_file() for s in scripts)


def test_self_test_plans_and_skips_the_run_without_pytorch(monkeypatch):
    """ctest runs the self-test on build machines without PyTorch: it must not install it."""
    monkeypatch.setattr(SAINRSlicerLib.torchenv, "installedTorchVersion", lambda: None)
    monkeypatch.setattr(
        SAINRSlicerLib.torchenv, "installTorchThroughExtension", lambda: pytest.fail("installs")
    )
    scene = slicer_scene.newScene().scene
    SAINRSlicer.SAINRSlicerTest().runTest()
    assert scene.GetFirstNodeByName("knee_qdess_sag_3mm") is not None
    assert scene.GetFirstNodeByName("knee_qdess_sag_3mm_SAINR_1mm") is None
