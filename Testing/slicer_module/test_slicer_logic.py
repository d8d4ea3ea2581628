"""The Slicer module's Logic on real MRML (slicer-core, no Slicer application), with the
shipped default model: what a user of the panel or the Python console would notice.

One oblique, permuted, left-handed real knee volume (3 mm slices along index axis j) under a
parent transform is reduced once to 1 mm; most tests inspect that result. The other runs are
small: an existing output node, a failing and a cancelled run, the console example.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
import math
import pathlib
import re
import tempfile
import time

import numpy as np
import psutil
import pytest
import SimpleITK as sitk
import slicer
import vtk

import slicer_scene
from slicer_scene import SAINRSlicer

MASK_REFERENCE_ROLE = SAINRSlicer.MASK_REFERENCE_ROLE
SAINRSlicerError = SAINRSlicer.SAINRSlicerError
SAINRSlicerLogic = SAINRSlicer.SAINRSlicerLogic

KNEE = slicer_scene.REPO / "Testing" / "Data" / "knee_qdess_crop_1p5mm.nii.gz"
SLICE_SPACING = 3.0
IN_PLANE = 0.3125
TARGET = 1.0
N_SLICES = 12
#: floor((12 - 1) * 3.0 / 1.0) + 1 thin slices: the last one lies on the last acquired slice.
N_THIN = 34


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = (f(a) for a in (ax, ay, az) for f in (math.cos, math.sin))
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


#: Oblique and left-handed (j flipped), as DICOM-derived grids often are.
DIRECTIONS = rotation(0.3, -0.2, 0.25) @ np.diag([1.0, -1.0, 1.0])
ORIGIN = np.array([12.5, -30.25, 40.0])


def thick_knee_slices_on_j() -> np.ndarray:
    """Real knee, every second 1.5 mm slice (3 mm), 48 x 48 in-plane, slices on index axis j."""
    array = slicer_scene.readArray(KNEE)[::2][:N_SLICES, 8:56, 8:56]  # (k=slice, j, i)
    return np.ascontiguousarray(np.transpose(array, (1, 0, 2)))  # (k, j=slice, i)


def matrix_array(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def node_count(scene) -> int:
    return scene.GetNumberOfNodes()


@pytest.fixture(scope="module")
def reduced(tmp_path_factory):
    """The knee reduced to 1 mm once, in a scene with a study folder and a parent transform."""
    handles = slicer_scene.newScene()
    scene = handles.scene
    array = thick_knee_slices_on_j()
    spacing = (IN_PLANE, SLICE_SPACING, IN_PLANE)
    knee = slicer_scene.addVolume(
        scene, array, slicer_scene.ijkToRAS(DIRECTIONS, spacing, ORIGIN), "knee"
    )
    knee.GetDisplayNode().SetAutoWindowLevel(False)
    knee.GetDisplayNode().SetWindowLevel(1234.0, 567.0)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "table shift")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 5.0)
    transform.SetMatrixTransformToParent(shift)
    knee.SetAndObserveTransformNodeID(transform.GetID())
    shNode = scene.GetSubjectHierarchyNode()
    study = shNode.CreateStudyItem(shNode.CreateSubjectItem(shNode.GetSceneItemID(), "P"), "S")
    shNode.CreateItem(study, knee)

    before = {"array": array.copy(), "matrix": matrix_array(knee), "nodes": node_count(scene)}
    reports = []
    temp = tmp_path_factory.mktemp("temp")
    saved, tempfile.tempdir = tempfile.tempdir, str(temp)
    try:
        started = time.monotonic()
        output = SAINRSlicerLogic(handles.applicationLogic).process(
            knee, TARGET, progressCallback=lambda f, m: reports.append((f, m))
        )
        seconds = time.monotonic() - started
    finally:
        tempfile.tempdir = saved
    return dict(
        handles=handles,
        scene=scene,
        knee=knee,
        output=output,
        study=study,
        transform=transform,
        before=before,
        reports=reports,
        temp=temp,
        seconds=seconds,
    )


def test_output_grid_changes_only_the_slice_axis(reduced):
    output = reduced["output"]
    assert output.GetImageData().GetDimensions() == (48, N_THIN, 48)
    expected = np.eye(4)
    expected[:3, :3] = DIRECTIONS @ np.diag((IN_PLANE, TARGET, IN_PLANE))
    expected[:3, 3] = ORIGIN
    np.testing.assert_allclose(matrix_array(output), expected, atol=1e-9)


def test_every_thin_slice_lies_where_expected_in_patient_space(reduced):
    """Thin slice j at origin + j * 1 mm along the slice direction; thin slice 3m lies exactly
    on acquired slice m (corner-aligned grid, no half-voxel shift)."""
    output, knee = reduced["output"], reduced["knee"]
    out_matrix, in_matrix = matrix_array(output), matrix_array(knee)
    for j in range(N_THIN):
        centre = out_matrix @ [24, j, 24, 1]
        expected = ORIGIN + DIRECTIONS @ [24 * IN_PLANE, j * TARGET, 24 * IN_PLANE]
        np.testing.assert_allclose(centre[:3], expected, atol=1e-9)
    for m in range(N_SLICES):
        np.testing.assert_allclose(
            out_matrix @ [0, 3 * m, 0, 1], in_matrix @ [0, m, 0, 1], atol=1e-9
        )


def test_thin_slices_on_acquired_positions_show_the_acquired_anatomy(reduced):
    """Voxels landed in the right place: no axis swapped or flipped on the way through NRRD,
    the core (LPS) and back."""
    acquired = reduced["before"]["array"].astype(float)
    thin = slicer.util.arrayFromVolume(reduced["output"]).astype(float)
    for m in range(N_SLICES):
        correlation = np.corrcoef(acquired[:, m, :].ravel(), thin[:, 3 * m, :].ravel())[0, 1]
        assert correlation > 0.9, (m, correlation)


def test_result_is_named_displayed_and_placed_like_the_input(reduced):
    output, scene = reduced["output"], reduced["scene"]
    assert output.GetName() == "knee_SAINR_1mm"  # says it was synthesized by SA-INR
    assert slicer.util.arrayFromVolume(output).dtype == np.int16
    display = output.GetDisplayNode()
    assert (display.GetWindow(), display.GetLevel()) == (1234.0, 567.0)
    assert not display.GetAutoWindowLevel()
    assert output.GetTransformNodeID() == reduced["transform"].GetID()
    shNode = scene.GetSubjectHierarchyNode()
    assert shNode.GetItemParent(shNode.GetItemByDataNode(output)) == reduced["study"]


def test_gating_mask_is_a_labelmap_on_the_output_grid(reduced):
    output, scene = reduced["output"], reduced["scene"]
    mask = output.GetNodeReference(MASK_REFERENCE_ROLE)
    assert mask.IsA("vtkMRMLLabelMapVolumeNode") and mask.GetName() == "knee_SAINR_1mm_attention"
    assert mask.GetImageData().GetDimensions() == output.GetImageData().GetDimensions()
    np.testing.assert_array_equal(matrix_array(mask), matrix_array(output))
    values = slicer.util.arrayFromVolume(mask)
    assert set(np.unique(values)) <= {0, 1}
    assert mask.GetTransformNodeID() == reduced["transform"].GetID()
    shNode = scene.GetSubjectHierarchyNode()
    assert shNode.GetItemParent(shNode.GetItemByDataNode(mask)) == reduced["study"]


def test_input_node_and_scene_are_otherwise_unchanged(reduced):
    knee, before = reduced["knee"], reduced["before"]
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(knee), before["array"])
    np.testing.assert_array_equal(matrix_array(knee), before["matrix"])
    assert knee.GetStorageNode() is None  # the temporary NRRD left no trace on the node
    added = node_count(reduced["scene"]) - before["nodes"]
    assert added == 4  # output + mask, each with a display node
    assert not list(reduced["temp"].iterdir())  # the temporary folder is gone


def test_progress_reaches_one_with_percentages(reduced):
    fractions = [f for f, _ in reduced["reports"]]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("%" in message for _, message in reduced["reports"])
    assert reduced["reports"][-1][1].startswith("Done in")
    # the thickness the worker used, from its summary line, and where it came from
    assert re.search(r"Slice thickness \d[\d.]* mm \(\w", reduced["reports"][-1][1])


def test_compare_shows_input_left_output_right_cut_through_the_slice_axis(reduced):
    handles, knee, output = reduced["handles"], reduced["knee"], reduced["output"]
    scene = reduced["scene"]
    logic = SAINRSlicerLogic(handles.applicationLogic)
    layout = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    layout.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutConventionalView)
    red = scene.GetSingletonNode("Red", "vtkMRMLSliceNode")
    red_before = slicer.util.arrayFromVTKMatrix(red.GetSliceToRAS()).copy()

    snapshot = logic.showComparison(knee, output, showMask=True, maskOpacity=0.4)

    assert layout.GetViewArrangement() == slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView
    mask = output.GetNodeReference(MASK_REFERENCE_ROLE)
    expected = {"Red": (knee, None), "Yellow": (output, mask)}
    slice_direction = DIRECTIONS[:, 1]
    for name, (background, label) in expected.items():
        composite = scene.GetSingletonNode(name, "vtkMRMLSliceCompositeNode")
        assert composite.GetBackgroundVolumeID() == background.GetID()
        assert composite.GetForegroundVolumeID() is None
        assert composite.GetLabelVolumeID() == (label.GetID() if label else None)
        assert composite.GetLinkedControl()
        normal = slicer.util.arrayFromVTKMatrix(
            scene.GetSingletonNode(name, "vtkMRMLSliceNode").GetSliceToRAS()
        )[:3, 2]
        assert abs(normal @ slice_direction) < 1e-6  # the view plane contains the slice axis
    yellow = scene.GetSingletonNode("Yellow", "vtkMRMLSliceCompositeNode")
    assert yellow.GetLabelOpacity() == pytest.approx(0.4)

    logic.setMaskOverlay(output, False, 0.4)
    assert yellow.GetLabelVolumeID() is None

    logic.restoreLayout(snapshot)
    assert layout.GetViewArrangement() == slicer.vtkMRMLLayoutNode.SlicerLayoutConventionalView
    for name in ("Red", "Yellow"):
        composite = scene.GetSingletonNode(name, "vtkMRMLSliceCompositeNode")
        assert composite.GetBackgroundVolumeID() is None and not composite.GetLinkedControl()
    np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(red.GetSliceToRAS()), red_before)


def test_mask_overlay_colours_the_gated_voxels_in_the_output_view(reduced):
    """Rendered like Slicer's slice view (vtkMRMLSliceLogic blends the layers): the overlay
    changes exactly the pixels of gated voxels."""
    handles, knee, output = reduced["handles"], reduced["knee"], reduced["output"]
    logic = SAINRSlicerLogic(handles.applicationLogic)
    snapshot = logic.showComparison(knee, output, showMask=False, maskOpacity=1.0)
    plain = handles.sliceImage("Yellow", 200, 200)
    logic.setMaskOverlay(output, True, 1.0)
    overlaid = handles.sliceImage("Yellow", 200, 200)
    logic.restoreLayout(snapshot)
    changed = np.any(plain[..., :3] != overlaid[..., :3], axis=-1)
    assert 0 < changed.mean() < 1


@pytest.fixture
def small_scene():
    """A fresh scene with a small axial volume: 32 x 32 x 8 slices at 0.5 x 0.5 x 3 mm."""
    handles = slicer_scene.newScene()
    array = slicer_scene.readArray(KNEE)[::2][:8, 16:48, 16:48]
    matrix = slicer_scene.ijkToRAS(np.diag([-1.0, -1.0, 1.0]), (0.5, 0.5, 3.0), (0.0, 0.0, 0.0))
    volume = slicer_scene.addVolume(handles.scene, array, matrix, "small")
    return handles, volume


def test_existing_output_node_is_updated_in_place_and_its_mask_reused(small_scene):
    handles, volume = small_scene
    scene = handles.scene
    target = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "my result")
    logic = SAINRSlicerLogic()
    assert logic.process(volume, 1.5, outputVolume=target, device="cpu") is target
    assert target.GetName() == "my result"
    assert target.GetImageData().GetDimensions() == (32, 32, 15)
    mask = target.GetNodeReference(MASK_REFERENCE_ROLE)
    nodes = node_count(scene)
    logic.process(volume, 1.0, outputVolume=target, device="cpu")
    assert target.GetImageData().GetDimensions() == (32, 32, 22)
    assert target.GetNodeReference(MASK_REFERENCE_ROLE) is mask
    assert mask.GetImageData().GetDimensions() == (32, 32, 22)
    assert node_count(scene) == nodes


def test_impossible_target_raises_the_core_reason_and_adds_nothing(small_scene):
    handles, volume = small_scene
    nodes = node_count(handles.scene)
    with pytest.raises(SAINRSlicerError, match="not smaller than the current slice spacing 3 mm"):
        SAINRSlicerLogic().process(volume, 3.5)
    label = handles.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "seg")
    with pytest.raises(SAINRSlicerError, match="seg is a labelmap"):
        SAINRSlicerLogic().process(label, 1.0)
    assert node_count(handles.scene) == nodes + 1


def test_error_inside_the_process_reaches_the_caller_and_adds_nothing(small_scene, tmp_path):
    handles, volume = small_scene
    garbage = tmp_path / "weights.pt"
    garbage.write_bytes(b"not a checkpoint")
    nodes = node_count(handles.scene)
    with pytest.raises(SAINRSlicerError, match=r"weights\.pt is not a SA-INR checkpoint"):
        SAINRSlicerLogic().process(volume, 1.0, weights=str(garbage))
    assert node_count(handles.scene) == nodes


def test_core_notes_show_in_the_status_line(small_scene):
    """The core reports fallbacks (GPU out of memory: smaller chunks, then the CPU) as
    "note: ..." lines on stderr; the panel's status line shows the latest one."""
    _handles, volume = small_scene
    run = SAINRSlicerLogic().start(volume, 1.0)
    run.handleLine("stderr", "note: CUDA out of memory; retrying with smaller chunks")
    assert run.message.endswith("note: CUDA out of memory; retrying with smaller chunks")
    run.handleLine("stdout", "PROGRESS 5 20")
    assert run.fraction == 0.25 and "25 %" in run.message
    run.wait()
    # the run's own notes (e.g. where the slice thickness came from) follow the injected one
    assert run.notes[0] == "CUDA out of memory; retrying with smaller chunks"


def test_adapting_first_shows_both_phases_and_saves_the_adapted_weights(small_scene, tmp_path):
    import torch

    from sainr.runtime.weights import load_model

    handles, volume = small_scene
    weights = tmp_path / "adapted.pt"
    reports = []
    output = SAINRSlicerLogic().process(
        volume,
        1.5,
        device="cpu",
        adaptSteps=3,
        saveAdaptedPath=str(weights),
        progressCallback=lambda f, m: reports.append((f, m)),
    )
    assert output.GetImageData().GetDimensions() == (32, 32, 15)
    fractions = [f for f, _ in reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    messages = [m for _, m in reports]
    adapting = [i for i, m in enumerate(messages) if m.startswith("Adapting to this volume")]
    reducing = [i for i, m in enumerate(messages) if m.startswith("Reducing spacing")]
    assert adapting and reducing and max(adapting) < min(reducing)
    assert all(f <= SAINRSlicer.ADAPT_PROGRESS_SHARE for f, m in reports if "Adapting" in m)
    assert "for 3 steps" in messages[-1]
    adapted, shipped = load_model(weights), load_model()
    assert any(
        not torch.equal(a, b)
        for a, b in zip(adapted.state_dict().values(), shipped.state_dict().values())
    )


def test_adaptation_progress_lines_fill_the_first_part_of_the_bar(small_scene):
    _handles, volume = small_scene
    run = SAINRSlicerLogic().start(volume, 1.0, adaptSteps=4)
    try:
        assert run.message.startswith("Starting")
        run.handleLine("stdout", "ADAPT 1 4")
        assert run.fraction == pytest.approx(SAINRSlicer.ADAPT_PROGRESS_SHARE / 4)
        assert run.message.startswith("Adapting to this volume: 1/4 steps")
        run.handleLine("stdout", "ADAPT 4 4")
        assert run.fraction == pytest.approx(SAINRSlicer.ADAPT_PROGRESS_SHARE)
        run.handleLine("stdout", "PROGRESS 10 40")
        share = SAINRSlicer.ADAPT_PROGRESS_SHARE
        assert run.fraction == pytest.approx(share + (1 - share) / 4)
        assert run.message.startswith("Reducing spacing: 25 %")
    finally:
        run.cancel()


def test_options_are_checked_before_anything_runs(small_scene, tmp_path):
    handles, volume = small_scene
    nodes = node_count(handles.scene)
    for device in ("gpu", "cuda:x", "CPU "):
        with pytest.raises(SAINRSlicerError, match="unknown device"):
            SAINRSlicerLogic().start(volume, 1.0, device=device)
    with pytest.raises(SAINRSlicerError, match="adaptSteps must be a whole number"):
        SAINRSlicerLogic().start(volume, 1.0, adaptSteps=-1)
    with pytest.raises(SAINRSlicerError, match="needs adaptSteps"):
        SAINRSlicerLogic().start(volume, 1.0, saveAdaptedPath=str(tmp_path / "w.pt"))
    assert node_count(handles.scene) == nodes


def _cancel_within_a_second_leaving_the_scene_as_it_was(run, scene, nodes: int) -> None:
    """Cancel a running reduction: the process is gone within a second, the state says the
    input is unchanged, no output folder or node was left behind."""
    started = time.monotonic()
    run.cancel()
    assert time.monotonic() - started < 1.0
    assert not psutil.pid_exists(run.pid)
    assert run.state == run.CANCELLED and "unchanged" in run.message
    assert not run.outputPath.parent.exists()
    assert node_count(scene) == nodes


def test_cancel_during_adaptation_stops_the_process_and_adds_nothing(small_scene, tmp_path):
    handles, volume = small_scene
    nodes = node_count(handles.scene)
    weights = tmp_path / "adapted.pt"
    run = SAINRSlicerLogic().start(
        volume, 1.0, adaptSteps=SAINRSlicer.MAX_ADAPT_STEPS, saveAdaptedPath=str(weights)
    )
    deadline = time.monotonic() + 60
    while run.poll() and run.adaptDone == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert run.running and run.phase == SAINRSlicer.ADAPT_TAG
    assert 0 < run.fraction < SAINRSlicer.ADAPT_PROGRESS_SHARE
    _cancel_within_a_second_leaving_the_scene_as_it_was(run, handles.scene, nodes)
    assert not list(tmp_path.iterdir())  # no adapted weights, no temporary file


def test_the_logic_speaks_the_cores_adaptation_protocol():
    from sainr.cli.reduce import ADAPT_TAG
    from sainr.train.adapt import AdaptConfig

    assert SAINRSlicer.ADAPT_TAG == ADAPT_TAG
    assert SAINRSlicer.DEFAULT_ADAPT_STEPS == AdaptConfig.steps


def test_cancel_mid_run_stops_the_process_within_a_second_and_adds_nothing():
    handles = slicer_scene.newScene()
    array = slicer_scene.readArray(KNEE)[::2]  # 64 x 64 x 20 slices: a few seconds of work
    matrix = slicer_scene.ijkToRAS(np.eye(3), (IN_PLANE, IN_PLANE, SLICE_SPACING), (0, 0, 0))
    volume = slicer_scene.addVolume(handles.scene, array, matrix, "knee")
    nodes = node_count(handles.scene)
    run = SAINRSlicerLogic().start(volume, 0.5)
    deadline = time.monotonic() + 60
    while run.poll() and run.fraction == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert run.running and 0 < run.fraction < 1
    _cancel_within_a_second_leaving_the_scene_as_it_was(run, handles.scene, nodes)
    assert not run.poll()


def test_parameters_survive_saving_and_loading_the_scene(tmp_path):
    handles = slicer_scene.newScene()
    scene = handles.scene
    knee = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "knee")
    result = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "knee_0.5mm")
    parameters = SAINRSlicerLogic().getParameterNode()
    assert (parameters.targetSpacing, parameters.device, parameters.model) == (
        1.0,
        "auto",
        "default",
    )
    parameters.inputVolume = knee
    parameters.resultVolume = result
    parameters.targetSpacing = 0.5
    parameters.device = "cuda:1"
    parameters.sliceThicknessMm = 2.5
    parameters.model = SAINRSlicer.WEIGHTS_FILE
    parameters.weightsPath = pathlib.Path("/data/my model.pt")
    parameters.showGatingMask = False
    parameters.maskOpacity = 0.3
    assert (parameters.adaptToVolume, parameters.adaptSteps) == (False, 200)
    parameters.adaptToVolume = True
    parameters.adaptSteps = 500
    with pytest.raises(ValueError):
        parameters.sliceThicknessMm = -1.0
    with pytest.raises(ValueError):
        parameters.adaptSteps = 0
    with pytest.raises(ValueError):
        parameters.targetSpacing = 50.0
    scene.SetURL(str(tmp_path / "scene.mrml"))
    assert scene.Commit()

    loaded = slicer_scene.newScene().scene
    loaded.SetURL(str(tmp_path / "scene.mrml"))
    assert loaded.Import()
    restored = SAINRSlicerLogic().getParameterNode()
    assert restored.parameterNode.GetScene() is loaded
    assert restored.inputVolume.GetName() == "knee"
    assert restored.resultVolume.GetName() == "knee_0.5mm"
    assert restored.outputVolume is None
    assert (restored.targetSpacing, restored.device, restored.model) == (0.5, "cuda:1", "file")
    assert restored.sliceThicknessMm == 2.5
    assert restored.weightsPath == pathlib.Path("/data/my model.pt")
    assert (restored.showGatingMask, restored.maskOpacity) == (False, 0.3)
    assert (restored.adaptToVolume, restored.adaptSteps) == (True, 500)


def readme_console_example() -> str:
    """The Python block of the README's 3D Slicer section that follows "From the Python
    console", exactly as written there."""
    readme = (slicer_scene.REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## 3D Slicer") :]
    section = section[section.index("From the Python console") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_console_example_runs_as_written():
    handles = slicer_scene.newScene()
    scene = handles.scene
    array = slicer_scene.readArray(KNEE)[::2][:6, 24:40, 24:40]
    slicer_scene.addVolume(
        scene, array, slicer_scene.ijkToRAS(np.eye(3), (0.5, 0.5, 3.0), (0, 0, 0)), "thick"
    )
    slicer_scene.addVolume(
        scene, array, slicer_scene.ijkToRAS(np.eye(3), (1.0, 1.0, 1.0), (0, 0, 0)), "iso"
    )
    scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "segmentation")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(readme_console_example(), {"slicer": slicer})
    lines = printed.getvalue().splitlines()
    assert lines[0] == "thick -> thick_SAINR_1mm"
    assert lines[1].startswith("iso: skipped (cannot tell the slice axis")
    assert len(lines) == 2
    output = scene.GetFirstNodeByName("thick_SAINR_1mm")
    assert output.GetImageData().GetDimensions() == (16, 16, 16)


def test_the_help_shows_the_readme_console_example():
    assert readme_console_example() == SAINRSlicer.CONSOLE_EXAMPLE


def test_readme_documents_process_with_its_real_signature():
    """The README's ``process(...)`` line lists the parameters in the code's order with the
    code's defaults (it once documented outputVolume third, where a callback was)."""
    readme = " ".join((slicer_scene.REPO / "README.md").read_text(encoding="utf-8").split())
    documented = re.search(r"`process\((.*?)\)`", readme).group(1)
    signature = inspect.signature(SAINRSlicerLogic.process)
    actual = [
        name if p.default is inspect.Parameter.empty else f"{name}={p.default!r}"
        for name, p in signature.parameters.items()
        if name != "self"
    ]
    assert documented.replace('"', "'").split(", ") == actual


def test_self_test_passes_on_a_crop_of_the_sample(monkeypatch, tmp_path):
    """Slicer's self-test (SAINRSlicerTest), run headless on the central 48 x 48 columns of
    the bundled sample (all 40 slices; the full sample takes a minute on one CPU thread)."""
    sample = SAINRSlicer.resourcePath("Sample/knee_qdess_sag_3mm.nii.gz")
    crop = tmp_path / sample.name
    sitk.WriteImage(sitk.ReadImage(str(sample))[72:120, 72:120, :], str(crop))
    find = SAINRSlicer.resourcePath
    monkeypatch.setattr(
        SAINRSlicer, "resourcePath", lambda path: crop if path.startswith("Sample/") else find(path)
    )
    slicer_scene.newScene()
    SAINRSlicer.SAINRSlicerTest().runTest()
    output = slicer.mrmlScene.GetFirstNodeByName("knee_qdess_sag_3mm_SAINR_1mm")
    assert output.GetImageData().GetDimensions() == (48, 48, 118)


def test_torch_probe_reports_the_subprocess_torch():
    import torch

    info = SAINRSlicerLogic().torchInfo()
    assert info["torch"] == torch.__version__
    assert len(info["gpus"]) == torch.cuda.device_count()
    assert torch.__version__ in SAINRSlicer.describeTorch(info)


# Planning: the Logic plans through the core's planning, on the image the subprocess reads


def _core_plan(volume, target: float, tmp_path):
    """What the subprocess plans of the grid: the core's plan_grid on the NRRD the run writes."""
    from sainr.planning import plan_grid

    path = tmp_path / f"{volume.GetID()}.nrrd"
    slicer_scene.SAINRSlicerLib.sceneio.writeVolume(volume, path)
    image = sitk.ReadImage(str(path))
    return image, plan_grid(image, target)


PLAN_CASES = {
    # name: (array shape (k, j, i), spacing (i, j, k), directions, target mm)
    "oblique, left-handed, slices on j": ((48, 12, 48), (0.3125, 3.0, 0.3125), DIRECTIONS, 1.0),
    "axial, flipped": ((8, 32, 32), (0.5, 0.5, 3.0), np.diag([-1.0, -1.0, 1.0]), 0.7),
    "target not below the slice spacing": ((8, 32, 32), (0.5, 0.5, 3.0), np.eye(3), 3.5),
    "nearly isotropic": ((16, 16, 16), (1.0, 1.0, 1.1), np.eye(3), 0.5),
    "beyond 20x": ((8, 16, 16), (0.5, 0.5, 3.0), np.eye(3), 0.1),
    "output too large": ((17, 1000, 1000), (0.2, 0.2, 5.0), np.eye(3), 0.25),
    "single slice": ((1, 32, 32), (0.5, 0.5, 3.0), np.eye(3), 1.0),
}
#: The cases that can be reduced; the core refuses the others.
PLANNED = ("oblique, left-handed, slices on j", "axial, flipped")


@pytest.mark.parametrize("case", PLAN_CASES)
def test_logic_and_core_plan_identically(case, tmp_path):
    """Same image (voxel type, grid in LPS), same slice axis and output grid, or the same
    refusal in the same words (reworded for the panel where the core names a CLI option)."""
    shape, spacing, directions, target = PLAN_CASES[case]
    handles = slicer_scene.newScene()
    node = handles.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "v")
    slicer.util.updateVolumeFromArray(node, np.zeros(shape, np.int16))
    node.SetIJKToRASMatrix(slicer_scene.ijkToRAS(directions, spacing, ORIGIN))
    logic = SAINRSlicerLogic()
    core_image, core, core_error = None, None, None
    try:
        core_image, core = _core_plan(node, target, tmp_path)
    except Exception as error:  # noqa: BLE001 - the refusal itself is compared below
        core_error = error
    assert (core is None) == (case not in PLANNED), core_error if core is None else core
    logic_image = logic.coreImage(node)
    if core_image is not None:
        assert logic_image.GetPixelID() == core_image.GetPixelID()
        assert logic_image.GetSize() == core_image.GetSize()
        for get in ("GetSpacing", "GetOrigin", "GetDirection"):
            np.testing.assert_allclose(
                getattr(logic_image, get)(), getattr(core_image, get)(), atol=1e-9
            )
    if core is None:
        with pytest.raises(SAINRSlicerError) as refused:
            logic.plan(node, target)
        assert str(refused.value) == slicer_scene.SAINRSlicerLib.core.panelWording(str(core_error))
        assert "--" not in str(refused.value)
        return
    axis, geometry = core.axis, core.output
    plan = logic.plan(node, target)
    assert plan.axis == axis
    assert plan.outputSize == geometry.size
    np.testing.assert_allclose(plan.outputSpacing, geometry.spacing, atol=1e-12)


@pytest.mark.parametrize("axis", [None, 1], ids=["detected axis", "named axis"])
def test_the_worker_plans_the_grid_the_logic_planned(axis, tmp_path):
    """The subprocess plans again only because it is another process: on the file the run
    writes, with the arguments the run passes, its plan holds the Logic's plan of the grid
    bit for bit (an oblique, left-handed grid), plus the voxel scan and the thickness."""
    from sainr.cli import build_parser
    from sainr.cli.common import options_of, target_of
    from sainr.io.read import read_volume
    from sainr.planning import plan_reduction

    handles = slicer_scene.newScene()
    spacing = (IN_PLANE, SLICE_SPACING, IN_PLANE)
    node = slicer_scene.addVolume(
        handles.scene,
        thick_knee_slices_on_j(),
        slicer_scene.ijkToRAS(DIRECTIONS, spacing, ORIGIN),
        "knee",
    )
    plan = SAINRSlicerLogic().plan(node, 0.7, axis)
    path = tmp_path / "input.nrrd"
    slicer_scene.SAINRSlicerLib.sceneio.writeVolume(node, path)
    arguments = slicer_scene.SAINRSlicerLib.run.workerArguments(plan)
    args = build_parser().parse_args(["reduce", str(path), "out.nrrd", *arguments])
    worker = plan_reduction(read_volume(path), target_of(args), options_of(args))
    assert worker.thickness is not None and worker.nonfinite == 0
    assert dataclasses.replace(worker, thickness=None, nonfinite=None) == plan.core


# Slice thickness: from the panel's field through the Logic to the subprocess


def test_slice_thickness_reaches_the_subprocess(small_scene, tmp_path):
    """The adapted weights record the thickness the CLI used: 1.5 mm of 3 mm slices = 0.5."""
    import torch

    _handles, volume = small_scene
    weights = tmp_path / "adapted.pt"
    run = SAINRSlicerLogic().start(
        volume, 1.5, device="cpu", adaptSteps=1, saveAdaptedPath=str(weights), sliceThicknessMm=1.5
    )
    run.wait()
    assert "--slice-thickness 1.5" in run.log
    meta = torch.load(weights, map_location="cpu", weights_only=True)["meta"]
    assert meta["adapted"]["thickness"] == pytest.approx(0.5)


def test_invalid_slice_thickness_is_refused_by_the_cli_in_panel_words(small_scene):
    handles, volume = small_scene
    nodes = node_count(handles.scene)
    with pytest.raises(
        SAINRSlicerError, match="slice thickness must be a positive number"
    ) as refused:
        SAINRSlicerLogic().process(volume, 1.5, device="cpu", adaptSteps=1, sliceThicknessMm=-1.0)
    assert "--" not in str(refused.value)
    assert "--slice-thickness -1.0" in refused.value.details  # the run's log, for the dialog
    assert node_count(handles.scene) == nodes


def test_slice_spacing_is_the_default_slice_thickness(small_scene):
    _handles, volume = small_scene
    assert SAINRSlicerLogic().sliceSpacing(volume) == pytest.approx(3.0)


def test_a_missing_device_is_refused_in_panel_words(small_scene):
    """The CLI tells a shell user to "use --device cpu"; the panel's user reads what to choose."""
    import torch

    if torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    handles, volume = small_scene
    nodes = node_count(handles.scene)
    with pytest.raises(SAINRSlicerError) as refused:
        SAINRSlicerLogic().process(volume, 1.5, device="mps")
    assert str(refused.value) == "MPS was requested but is not available; choose CPU as the device"
    assert node_count(handles.scene) == nodes


# Output nodes: made up front, reused, renamed, unique; a deleted node stops the run


def test_output_is_made_up_front_reused_renamed_for_the_spacing_and_unique(small_scene):
    handles, volume = small_scene
    scene = handles.scene
    scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "small_SAINR_1.5mm")  # name taken
    logic = SAINRSlicerLogic()
    run = logic.start(volume, 1.5, device="cpu")
    first = run.outputVolume  # exists before the run ends: a panel selects it at once
    assert first.GetScene() is scene and first.GetName() == "small_SAINR_1.5mm_1"
    assert first.GetImageData() is None
    run.wait()
    mask = first.GetNodeReference(MASK_REFERENCE_ROLE)
    assert mask.GetName() == "small_SAINR_1.5mm_1_attention"
    nodes = node_count(scene)

    assert logic.process(volume, 1.0, first, "cpu") is first  # reused: nothing added
    assert node_count(scene) == nodes
    assert first.GetImageData().GetDimensions() == (32, 32, 22)
    assert first.GetName() == "small_SAINR_1mm"  # renamed for the new spacing
    assert first.GetNodeReference(MASK_REFERENCE_ROLE) is mask
    assert mask.GetName() == "small_SAINR_1mm_attention"

    first.SetName("keep this name")  # a name the user gave stays
    run = logic.start(volume, 0.75, first, "cpu")
    run.cancel()
    assert first.GetName() == "keep this name" and first.GetScene() is scene
    assert node_count(scene) == nodes


@pytest.mark.parametrize("deleted", ["input", "output"])
def test_deleting_a_node_during_the_run_stops_it_with_a_message(small_scene, deleted):
    handles, volume = small_scene
    scene = handles.scene
    nodes = node_count(scene)
    run = SAINRSlicerLogic().start(volume, 1.0, device="cpu")
    node = volume if deleted == "input" else run.outputVolume
    name = node.GetName()
    scene.RemoveNode(node)
    started = time.monotonic()
    assert not run.poll()
    assert time.monotonic() - started < 1.5
    assert run.state == run.CANCELLED
    assert run.message == (
        f"Stopped: the {deleted} volume {name} was deleted during the run; "
        "nothing was added to the scene"
    )
    assert not psutil.pid_exists(run.pid) or psutil.Process(run.pid).status() == "zombie"
    assert not run.outputPath.parent.exists()
    assert run.outputVolume.GetScene() is None  # the output made up front is gone too
    assert node_count(scene) == nodes - (deleted == "input")
    with pytest.raises(SAINRSlicerError, match="was deleted during the run"):
        run.wait()


def test_resolved_thickness_is_read_from_the_workers_summary(small_scene):
    _handles, volume = small_scene
    run = SAINRSlicerLogic().start(volume, 1.0, device="cpu")
    try:
        run.handleLine(
            "stderr",
            "input.nrrd: axis k (S-I, axial slices), 8 slices at 3 mm (2.1 mm thick, "
            "estimated) -> 22 at 1 mm, gated 4 % (cpu) -> output.nrrd",
        )
        assert (run.sliceThickness, run.sliceThicknessSourceText) == (2.1, "estimated")
        run.handleLine("stderr", "input.nrrd: ... 8 slices at 3 mm (3 mm thick) -> 22 ...")
        assert (run.sliceThickness, run.sliceThicknessSourceText) == (3.0, "automatic")
    finally:
        run.cancel()


# Slice thickness from the DICOM series a volume was loaded from


class DicomFolderDatabase:
    """A real, minimal DICOM database: DICOM files in a folder, indexed by SOPInstanceUID,
    answering the two calls of Slicer's ctkDICOMDatabase that the module uses
    (``fileForInstance``, ``fileValue`` with tags written as "gggg,eeee")."""

    def __init__(self, folder: pathlib.Path):
        self.files = {}
        for path in folder.glob("*.dcm"):
            self.files[self._read(path).GetMetaData("0008|0018").strip()] = path

    @staticmethod
    def _read(path):
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        return reader

    def fileForInstance(self, uid: str) -> str:
        return str(self.files.get(uid, ""))

    def fileValue(self, fileName: str, tag: str) -> str:
        if not fileName:
            return ""
        reader = self._read(fileName)
        key = tag.replace(",", "|").lower()
        return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""


def write_dicom_slices(folder: pathlib.Path, thickness: str | None) -> list[str]:
    """Two MR slices as DICOM files (SimpleITK/GDCM); returns their SOPInstanceUIDs."""
    folder.mkdir()
    uids = []
    for index in range(2):
        image = sitk.Image(8, 8, sitk.sitkInt16)
        uid = f"1.2.826.0.1.3680043.8.498.{index + 1}"
        tags = {"0008|0018": uid, "0008|0060": "MR", "0020|0013": str(index + 1)}
        if thickness is not None:
            tags["0018|0050"] = thickness
        for key, value in tags.items():
            image.SetMetaData(key, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"slice{index}.dcm"))
        writer.Execute(image)
        uids.append(uid)
    return uids


def test_a_dicom_loaded_volume_gets_its_slice_thickness_from_the_tag(
    small_scene, tmp_path, monkeypatch
):
    _handles, volume = small_scene
    uids = write_dicom_slices(tmp_path / "series", "2.5")
    database = DicomFolderDatabase(tmp_path / "series")
    logic = SAINRSlicerLogic()
    assert logic.sliceThicknessSuggestion(volume, database) == (0.0, "auto")  # not from DICOM
    volume.SetAttribute("DICOM.instanceUIDs", " ".join(uids))  # as Slicer's DICOM module sets
    assert logic.sliceThicknessSuggestion(volume, database) == (2.5, "dicom")
    assert logic.dicomSliceThickness(volume) is None  # no DICOM database (slicer-core)

    monkeypatch.setattr(slicer, "dicomDatabase", database, raising=False)
    run = logic.start(volume, 1.0, device="cpu")  # thickness not given: the tag's
    run.cancel()
    assert "--slice-thickness 2.5" in run.log and run.thicknessSource == "dicom"
    run = logic.start(volume, 1.0, device="cpu", sliceThicknessMm=1.5)  # the user's wins
    run.cancel()
    assert "--slice-thickness 1.5" in run.log and "2.5" not in run.log


def test_without_a_thickness_tag_the_cli_chooses(small_scene, tmp_path, monkeypatch):
    """No tag (or no DICOM): no --slice-thickness, so the command line's automatic choice
    applies."""
    _handles, volume = small_scene
    uids = write_dicom_slices(tmp_path / "series", None)
    monkeypatch.setattr(
        slicer, "dicomDatabase", DicomFolderDatabase(tmp_path / "series"), raising=False
    )
    volume.SetAttribute("DICOM.instanceUIDs", " ".join(uids))
    run = SAINRSlicerLogic().start(volume, 1.0, device="cpu")
    run.cancel()
    assert "--slice-thickness" not in run.log and run.thicknessSource == "auto"
