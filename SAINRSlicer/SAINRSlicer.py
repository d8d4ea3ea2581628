"""SAINRSlicer: reduce the slice spacing of thick-slice MRI with SA-INR, inside 3D Slicer.

This file is the module's shell, as Slicer expects it: the module description (and its Sample
Data entry), the panel (Widget) and the self-test. The work is done by the library beside it,
``SAINRSlicerLib`` (Logic, background run, scene I/O, views), which drives the ``sainr`` core
package in a subprocess, so torch is never imported in Slicer's own process.

Outside Slicer (the PyPI package ``slicer-core``), the Logic and the parameter node work on real
MRML; only the panel needs the application.
"""

import html
import math
import sys
import threading

import slicer
import vtk
from SAINRSlicerLib.core import SAINRSlicerError, resourcePath
from SAINRSlicerLib.framework import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
    _,
    inSlicerApplication,
    processEvents,
    translate,
)
from SAINRSlicerLib.logic import (
    DEFAULT_ADAPT_STEPS,
    DEFAULT_MODEL,
    MAX_ADAPT_STEPS,
    WEIGHTS_FILE,
    SAINRSlicerLogic,
    SAINRSlicerParameterNode,
)
from SAINRSlicerLib.panel import LOG_VIEW_LINES, describeTorch, deviceChoices, errorsShown
from SAINRSlicerLib.run import (
    ADAPT_PROGRESS_SHARE,
    ADAPT_TAG,
    ReductionRun,
    formatDuration,
    formatMillimetres,
)
from SAINRSlicerLib.sceneio import MASK_REFERENCE_ROLE
from SAINRSlicerLib.views import COMPARE_VIEWS
from slicer.util import VTKObservationMixin

__all__ = [
    "ADAPT_PROGRESS_SHARE",
    "ADAPT_TAG",
    "COMPARE_VIEWS",
    "CONSOLE_EXAMPLE",
    "DEFAULT_ADAPT_STEPS",
    "MASK_REFERENCE_ROLE",
    "MAX_ADAPT_STEPS",
    "SAINRSlicer",
    "SAINRSlicerError",
    "SAINRSlicerLogic",
    "SAINRSlicerParameterNode",
    "SAINRSlicerTest",
    "SAINRSlicerWidget",
    "WEIGHTS_FILE",
    "describeTorch",
    "formatDuration",
    "formatMillimetres",
    "helpText",
    "resourcePath",
]

#: Packages that Reload must import afresh with this file (Slicer reloads only this file).
RELOADED_PACKAGES = ("SAINRSlicerLib", "sainr")
#: The bundled thick-slice sample, offered in the Sample Data module.
SAMPLE_FILE = "knee_qdess_sag_3mm.nii.gz"
SAMPLE_NAME = "knee_qdess_sag_3mm"

CONSOLE_EXAMPLE = """\
import SAINRSlicer

logic = SAINRSlicer.SAINRSlicerLogic()
for volume in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
    if volume.IsA("vtkMRMLLabelMapVolumeNode"):
        continue
    try:
        output = logic.process(volume, targetSpacing=1.0)
    except SAINRSlicer.SAINRSlicerError as error:
        print(f"{volume.GetName()}: skipped ({error})")
    else:
        print(f"{volume.GetName()} -> {output.GetName()}")
"""


def forgetLibraryModules() -> list[str]:
    """Drop the library and the core from ``sys.modules`` so that reloading this file imports
    their current code (Reload in Developer mode). Returns the names dropped."""
    names = [
        name
        for name in sys.modules
        if any(name == p or name.startswith(p + ".") for p in RELOADED_PACKAGES)
    ]
    for name in names:
        del sys.modules[name]
    return names


#
# Module
#


class SAINRSlicer(ScriptedLoadableModule):
    """Module metadata (title, category, help) shown by Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SA-INR Reduce Spacing")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Filtering")]
        self.parent.dependencies = []  # PyTorch is installed on demand through PyTorchUtils
        self.parent.contributors = ["SAINRSlicer developers"]
        self.parent.helpText = helpText()
        self.parent.acknowledgementText = _(
            "SA-INR: Wang X., et al., <i>Spatial attention-based implicit neural representation "
            "for arbitrary reduction of MRI slice spacing</i>, Medical Image Analysis (2024), "
            "doi:10.1016/j.media.2024.103158. "
            "The bundled sample and model card list their data sources and licences."
        )
        if inSlicerApplication():
            slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData() -> None:
    """Offer the bundled thick-slice knee in the Sample Data module (read from the extension's
    own Resources folder: no download, works offline)."""
    import SampleData

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="SAINRSlicer",
        sampleName=SAMPLE_NAME,
        thumbnailFileName=str(resourcePath("Icons/SAINRSlicer.png")),
        uris=resourcePath(f"Sample/{SAMPLE_FILE}").as_uri(),
        fileNames=SAMPLE_FILE,
        nodeNames=SAMPLE_NAME,
        loadFileType="VolumeFile",
    )


def helpText() -> str:
    """The module's help: what it does, how to use the panel, and the console API."""
    return (
        _(
            "<p>Reduce the slice spacing of thick-slice MRI (make thin slices between the acquired "
            "ones) with SA-INR, a spatial-attention implicit neural representation.</p>"
            "<p>Select the input volume; its spacing and detected slice axis are shown. Set the "
            "target slice spacing (or click <b>Isotropic</b>), then click <b>Reduce Spacing</b>. "
            "The output keeps the input's origin and orientation; only the spacing along the slice "
            "axis changes. <b>Compare</b> shows input and output side by side, cut perpendicular to "
            "the acquired slices, with the gating mask (where SA-INR used slice attention) as an "
            "overlay.</p>"
            "<p><b>Advanced · Adapt to this volume</b> first fine-tunes the model for the given "
            "number of steps on training pairs made from the volume's own in-plane detail, then "
            "reconstructs with it: slower, and it can help on contrasts unlike the training "
            "data.</p>"
            "<p><b>Slice thickness</b> is filled in with the input's slice spacing; give the "
            "acquired thickness when the slices are thinner than their spacing (gaps).</p>"
            "<p>A GPU is used when PyTorch can use one (device <i>Automatic</i>); each GPU can "
            "be chosen by name, and the CPU works too, more slowly. At the first run PyTorch "
            "is installed through the PyTorch extension (several minutes; Slicer asks first). "
            "<b>Log</b> shows the run's messages. Needs 3D Slicer 5.10 or later.</p>"
            "<p>From the Python console, for every image volume in the scene:</p>"
        )
        + f"<pre>{html.escape(CONSOLE_EXAMPLE)}</pre>"
    )


#
# Widget
#


class SAINRSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: parameters bound to the parameter node, a run polled from a QTimer."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run: ReductionRun | None = None
        self._layoutSnapshot = None
        self._torchInfo: dict | None = None
        self._thicknessInputID: str | None = None  # input the slice thickness was filled for
        self._timer = None

    def setup(self) -> None:
        import qt

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(str(resourcePath("UI/SAINRSlicer.ui")))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SAINRSlicerLogic()

        self._populateModels()
        self._populateDevices()
        self.ui.progressBar.hide()
        self.ui.logTextEdit.maximumBlockCount = LOG_VIEW_LINES
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.timeout.connect(self._onTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.clicked.connect(self.onApplyButton)
        self.ui.isotropicButton.clicked.connect(self.onIsotropicButton)
        self.ui.modelComboBox.currentIndexChanged.connect(self.onModelChanged)
        self.ui.deviceComboBox.currentIndexChanged.connect(self.onDeviceChanged)
        self.ui.compareButton.clicked.connect(self.onCompareButton)
        self.ui.restoreLayoutButton.clicked.connect(self.onRestoreLayoutButton)
        self.ui.showMaskCheckBox.toggled.connect(self._updateMaskOverlay)
        self.ui.maskOpacitySlider.valueChanged.connect(self._updateMaskOverlay)

        self.initializeParameterNode()
        self._startTorchProbe()

    def cleanup(self) -> None:
        """Called when the module is unloaded or the application closes."""
        if self._run is not None:
            self._run.cancel()
        if self._timer is not None:
            self._timer.stop()
        self.removeObservers()

    def onReload(self) -> None:
        """Developer mode Reload: stop a run, then import the library and core afresh too."""
        if self._run is not None:
            self._run.cancel()
        forgetLibraryModules()
        ScriptedLoadableModuleWidget.onReload(self)

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        if self._run is not None:
            self._cancelRun()
        self._layoutSnapshot = None
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Use the scene's parameter node; pick the first image volume as input if none."""
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            volumes = [
                v
                for v in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                if not v.IsA("vtkMRMLLabelMapVolumeNode")
            ]
            if volumes:
                self._parameterNode.inputVolume = volumes[0]

    def setParameterNode(self, parameterNode) -> None:
        """Bind the panel to a parameter node (SlicerParameterName properties in the .ui)."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified
            )
        self._parameterNode = parameterNode
        if self._parameterNode:
            # a thickness already filled in (or typed, and saved with the scene) stays
            volume = parameterNode.inputVolume
            filled = volume is not None and parameterNode.sliceThicknessMm > 0
            self._thicknessInputID = volume.GetID() if filled else None
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified
            )
            self._onParameterNodeModified()

    def _populateModels(self) -> None:
        import qt

        combo = self.ui.modelComboBox
        for name, entry in self.logic.modelCatalog().items():
            combo.addItem(_("Bundled default") if name == DEFAULT_MODEL else name, name)
            combo.setItemData(combo.count - 1, entry.get("description", ""), qt.Qt.ToolTipRole)
        combo.addItem(_("Weights file"), WEIGHTS_FILE)

    def _populateDevices(self) -> None:
        """Automatic and CPU, then each GPU and MPS once the PyTorch probe has answered."""
        combo = self.ui.deviceComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for label, device in deviceChoices(self._torchInfo):
            combo.addItem(label, device)
        combo.blockSignals(wasBlocked)
        if not self._parameterNode:
            return
        if self._torchInfo is not None and combo.findData(self._parameterNode.device) < 0:
            self._parameterNode.device = "auto"  # a GPU of a scene saved on another machine
        self._onParameterNodeModified()

    def _selectedWeights(self) -> str | None:
        """The ``weights`` argument for the Logic: None (shipped default), a name or a file."""
        model = self._parameterNode.model
        if model == WEIGHTS_FILE:
            return str(self._parameterNode.weightsPath)
        return None if model == DEFAULT_MODEL else model

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        """Refresh what derives from the parameters: geometry preview, button states."""
        parameters = self._parameterNode
        if parameters is None:
            return
        for combo, value in (
            (self.ui.modelComboBox, parameters.model),
            (self.ui.deviceComboBox, parameters.device),
        ):
            wasBlocked = combo.blockSignals(True)
            combo.currentIndex = max(combo.findData(value), 0)
            combo.blockSignals(wasBlocked)
        self.ui.weightsPathLineEdit.enabled = parameters.model == WEIGHTS_FILE and self._run is None
        self.ui.adaptStepsSpinBox.enabled = parameters.adaptToVolume and self._run is None
        self._fillSliceThickness(parameters)

        problem = self._updateGeometryLabels(parameters.inputVolume, parameters.targetSpacing)
        if (
            problem is None
            and parameters.model == WEIGHTS_FILE
            and not parameters.weightsPath.is_file()
        ):
            problem = _("Choose a weights file (.pt).")
        if self._run is None:
            self.ui.applyButton.enabled = problem is None
            self.ui.applyButton.toolTip = problem or _("Run SA-INR in the background.")
        self.ui.compareButton.enabled = bool(parameters.inputVolume and parameters.resultVolume)
        self.ui.restoreLayoutButton.enabled = self._layoutSnapshot is not None

    def _fillSliceThickness(self, parameters) -> None:
        """When the input changes, fill in its slice spacing as the slice thickness."""
        volume = parameters.inputVolume
        volumeID = volume.GetID() if volume is not None else None
        if volumeID == self._thicknessInputID:
            return
        self._thicknessInputID = volumeID
        if volume is None:
            return
        try:
            parameters.sliceThicknessMm = round(self.logic.sliceSpacing(volume), 4)
        except (SAINRSlicerError, ValueError):  # no slice axis, or out of the field's range
            parameters.sliceThicknessMm = 0.0

    def _updateGeometryLabels(self, volume, targetSpacing: float) -> str | None:
        """Show spacing, slice axis and output size; return why a run is impossible, or None."""
        if volume is None:
            for label in (self.ui.spacingLabel, self.ui.axisLabel, self.ui.outputSizeLabel):
                label.text = "-"
            return _("Select an input volume.")
        spacing = volume.GetSpacing()
        self.ui.spacingLabel.text = " × ".join(f"{s:.4g}" for s in spacing) + " mm (i × j × k)"
        try:
            self.ui.axisLabel.text = self.logic.sliceAxis(volume)[1]
        except SAINRSlicerError as error:
            self.ui.axisLabel.text = str(error)
        try:
            plan = self.logic.plan(volume, targetSpacing)
        except SAINRSlicerError as error:
            self.ui.outputSizeLabel.text = str(error)
            return str(error)
        self.ui.outputSizeLabel.text = _(
            "{size} voxels, {slices} slices at {spacing} mm ({factor:.3g}× finer)"
        ).format(
            size=" × ".join(str(n) for n in plan.outputSize),
            slices=plan.outputSize[plan.axis],
            spacing=formatMillimetres(plan.targetSpacing),
            factor=plan.factor,
        )
        return None

    def onIsotropicButton(self) -> None:
        """Target spacing = the finest in-plane spacing (rounded down to the spin box's step)."""
        with errorsShown(_("Cannot compute an isotropic spacing:"), self._showError):
            spacing = self.logic.isotropicSpacing(self._parameterNode.inputVolume)
            scale = 10**self.ui.targetSpacingSpinBox.decimals
            self._parameterNode.targetSpacing = math.floor(spacing * scale) / scale

    def onModelChanged(self, index: int) -> None:
        self._parameterNode.model = self.ui.modelComboBox.itemData(index)

    def onDeviceChanged(self, index: int) -> None:
        if index >= 0:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index)

    def onApplyButton(self) -> None:
        """Start a run, or cancel the one in progress (the button reads Cancel then)."""
        if self._run is not None:
            self._cancelRun()
            return
        with errorsShown(_("Cannot start:"), self._showError):
            self._startRun()

    def _startRun(self) -> None:
        parameters = self._parameterNode
        self.ui.logTextEdit.clear()
        if self.logic.ensureTorch(self._showInstalling):
            self._startTorchProbe()  # the PyTorch line and the GPUs have changed
        with slicer.util.WaitCursor():
            self._run = self.logic.start(
                parameters.inputVolume,
                parameters.targetSpacing,
                parameters.outputVolume,
                parameters.device,
                weights=self._selectedWeights(),
                adaptSteps=parameters.adaptSteps if parameters.adaptToVolume else 0,
                sliceThicknessMm=parameters.sliceThicknessMm or None,
            )
        self._setRunning(True)
        self._showStatus(self._run.message)
        self._appendLog()
        self._timer.start()

    def _showInstalling(self, message: str) -> None:
        """The minutes-long PyTorch install: say so before the installer takes over."""
        self._showStatus(message)
        self.ui.deviceInfoLabel.text = message
        processEvents()

    def _cancelRun(self) -> None:
        self._run.cancel()
        self._showStatus(self._run.message)
        self._appendLog()
        self._endRun()

    def _onTimer(self) -> None:
        run = self._run
        pollFailed = True
        with errorsShown(_("Reading the SA-INR result failed:"), self._showError):
            if run.poll():
                self.ui.progressBar.value = int(100 * run.fraction)
                self._showStatus(run.message)
                self._appendLog()
                return
            pollFailed = False
        run.cancel()  # only does something if poll() failed: leave no process behind
        self._appendLog()
        if run.state == ReductionRun.FAILED and not pollFailed:
            self._showError(run.message, run.log)
        elif not pollFailed:
            self._showStatus(run.message)
        self._endRun()
        if run.state == ReductionRun.SUCCEEDED:
            self._showResult(run.outputVolume, run.maskVolume)

    def _appendLog(self) -> None:
        for line in self._run.takeNewLogLines():
            self.ui.logTextEdit.appendPlainText(line)

    def _endRun(self) -> None:
        self._timer.stop()
        self._run = None
        self._setRunning(False)
        self._onParameterNodeModified()

    def _setRunning(self, running: bool) -> None:
        self.ui.applyButton.text = _("Cancel") if running else _("Reduce Spacing")
        self.ui.applyButton.enabled = True
        self.ui.progressBar.value = 0
        self.ui.progressBar.visible = running
        for widget in (
            self.ui.inputSelector,
            self.ui.targetSpacingSpinBox,
            self.ui.isotropicButton,
            self.ui.sliceThicknessSpinBox,
            self.ui.deviceComboBox,
            self.ui.modelComboBox,
            self.ui.weightsPathLineEdit,
            self.ui.adaptCheckBox,
            self.ui.adaptStepsSpinBox,
            self.ui.outputSelector,
        ):
            widget.enabled = not running

    def _showStatus(self, text: str, error: bool = False) -> None:
        self.ui.statusLabel.text = text
        self.ui.statusLabel.styleSheet = "color: #c62828" if error else ""

    def _showError(self, message: str, details: str) -> None:
        """Any failure: in red in the status line, and in Slicer's error dialog with details
        (the run's log, an installer's output or a traceback)."""
        self._showStatus(message, error=True)
        slicer.util.errorDisplay(message, detailedText=details or None)

    def _showResult(self, outputVolume, maskVolume) -> None:
        """Show the new result in the slice views, with the mask overlay if it is on."""
        parameters = self.logic.getParameterNode()  # also when the panel was left meanwhile
        parameters.resultVolume = outputVolume
        showMask = parameters.showGatingMask
        slicer.util.setSliceViewerLayers(
            background=outputVolume,
            label=maskVolume if showMask else None,
            labelOpacity=parameters.maskOpacity,
            fit=True,
        )

    def _updateMaskOverlay(self) -> None:
        result = self._parameterNode.resultVolume if self._parameterNode else None
        if result is not None:
            self.logic.setMaskOverlay(
                result, self.ui.showMaskCheckBox.checked, self.ui.maskOpacitySlider.value
            )

    def onCompareButton(self) -> None:
        parameters = self._parameterNode
        with errorsShown(_("Compare failed:"), self._showError):
            snapshot = self.logic.showComparison(
                parameters.inputVolume,
                parameters.resultVolume,
                showMask=parameters.showGatingMask,
                maskOpacity=parameters.maskOpacity,
            )
            if self._layoutSnapshot is None:  # keep the layout from before the first Compare
                self._layoutSnapshot = snapshot
            self.ui.restoreLayoutButton.enabled = True

    def onRestoreLayoutButton(self) -> None:
        with errorsShown(_("Restoring the layout failed:"), self._showError):
            self.logic.restoreLayout(self._layoutSnapshot)
        self._layoutSnapshot = None
        self.ui.restoreLayoutButton.enabled = False

    def _startTorchProbe(self) -> None:
        """Ask a subprocess what PyTorch and GPUs are available (torch stays out of Slicer)."""
        import qt

        self._torchInfo = None
        self.ui.deviceInfoLabel.text = _("Checking PyTorch...")

        def probe() -> None:
            self._torchInfo = self.logic.torchInfo()

        threading.Thread(target=probe, daemon=True).start()
        qt.QTimer.singleShot(500, self._showTorchInfo)

    def _showTorchInfo(self) -> None:
        import qt

        if self._torchInfo is None:
            qt.QTimer.singleShot(500, self._showTorchInfo)
            return
        self.ui.deviceInfoLabel.text = describeTorch(self._torchInfo)
        self._populateDevices()


#
# Test
#


class SAINRSlicerTest(ScriptedLoadableModuleTest):
    """Self-test for Slicer (Developer mode: Reload and Test, or ctest): reduces the bundled
    thick-slice knee sample with the bundled model and checks the result. Without PyTorch it
    checks the plan only and says that the run was skipped: a test does not install packages."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_ReduceSpacingOfSample()

    def test_ReduceSpacingOfSample(self) -> None:
        import numpy as np
        from SAINRSlicerLib.torchenv import installedTorchVersion

        self.delayDisplay("Loading the bundled sample")
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()  # the reader of slicer.util.loadVolume
        storage.SetFileName(str(resourcePath(f"Sample/{SAMPLE_FILE}")))
        volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", SAMPLE_NAME)
        self.assertTrue(storage.ReadData(volume))
        volume.CreateDefaultDisplayNodes()
        before = slicer.util.arrayFromVolume(volume).copy()

        logic = SAINRSlicerLogic()
        plan = logic.plan(volume, 1.0)
        self.assertEqual(plan.axisLabel, "k (R-L, sagittal slices)")
        if installedTorchVersion() is None:
            self.delayDisplay("PyTorch is not installed: the reduction run is skipped")
            return
        self.delayDisplay("Reducing 3 mm slices to 1 mm")
        output = logic.process(volume, 1.0)

        self.assertEqual(output.GetName(), f"{SAMPLE_NAME}_1.0mm")
        self.assertEqual(output.GetImageData().GetDimensions(), plan.outputSize)
        np.testing.assert_allclose(output.GetSpacing(), plan.outputSpacing, atol=1e-6)
        np.testing.assert_allclose(output.GetOrigin(), volume.GetOrigin(), atol=1e-6)
        inputDirections, outputDirections = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        volume.GetIJKToRASDirectionMatrix(inputDirections)
        output.GetIJKToRASDirectionMatrix(outputDirections)
        np.testing.assert_allclose(
            slicer.util.arrayFromVTKMatrix(outputDirections),
            slicer.util.arrayFromVTKMatrix(inputDirections),
            atol=1e-9,
        )
        values = slicer.util.arrayFromVolume(output)
        self.assertTrue(np.isfinite(values).all())
        self.assertGreater(values.std(), 0)
        mask = output.GetNodeReference(MASK_REFERENCE_ROLE)
        self.assertTrue(mask.IsA("vtkMRMLLabelMapVolumeNode"))
        self.assertEqual(mask.GetImageData().GetDimensions(), plan.outputSize)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), before)
        self.delayDisplay("Test passed")
