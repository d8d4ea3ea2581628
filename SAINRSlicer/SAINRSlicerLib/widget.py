"""The module's panel (Widget): parameters bound to the parameter node, a run polled from a
QTimer. Needs the 3D Slicer application (Qt); everything it shows or decides that can be
checked without Qt lives in :mod:`.panel` and the Logic."""

from __future__ import annotations

import math
import threading

import slicer
import vtk
from slicer.util import VTKObservationMixin

from .core import SAINRSlicerError, forgetLibraryModules, resourcePath
from .framework import ScriptedLoadableModuleWidget, _, processEvents
from .logic import (
    DEFAULT_MODEL,
    THICKNESS_AUTO,
    THICKNESS_USER,
    WEIGHTS_FILE,
    SAINRSlicerLogic,
)
from .panel import (
    LOG_VIEW_LINES,
    RESEARCH_NOTICE,
    describeTorch,
    deviceChoices,
    errorsShown,
    modelDescription,
    thicknessSourceText,
)
from .run import SOURCE_ATTRIBUTE, ReductionRun, formatMillimetres, isAutoNamed

#: Widgets that are locked while a run or a PyTorch install is going on.
PARAMETER_WIDGETS = (
    "inputSelector",
    "targetSpacingSpinBox",
    "isotropicButton",
    "sliceThicknessSpinBox",
    "deviceComboBox",
    "modelComboBox",
    "weightsPathLineEdit",
    "adaptCheckBox",
    "adaptStepsSpinBox",
    "outputSelector",
)


class SAINRSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: parameters bound to the parameter node, a run polled from a QTimer."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run: ReductionRun | None = None
        self._installing = False
        self._layoutSnapshot = None
        self._torchInfo: dict | None = None
        self._thicknessInputID: str | None = None  # input the slice thickness was filled for
        self._filledThickness: float | None = None  # the value filled in (not typed)
        self._lastThickness: dict[str, tuple[float, str]] = {}  # input ID -> last run's
        self._timer = None

    def setup(self) -> None:
        import qt

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(str(resourcePath("UI/SAINRSlicer.ui")))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SAINRSlicerLogic()
        self.ui.researchNoticeLabel.text = RESEARCH_NOTICE

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
            # a thickness already filled in or typed (and saved with the scene) stays
            volume = parameterNode.inputVolume
            filled = volume is not None and parameterNode.sliceThicknessSource != ""
            self._thicknessInputID = volume.GetID() if filled else None
            self._filledThickness = parameterNode.sliceThicknessMm if filled else None
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
            combo.setItemData(combo.count - 1, modelDescription(name, entry), qt.Qt.ToolTipRole)
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

    @property
    def busy(self) -> bool:
        """A run or a PyTorch install is going on: the parameters are locked."""
        return self._run is not None or self._installing

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        """Refresh what derives from the parameters: geometry preview, button states."""
        parameters = self._parameterNode
        if parameters is None:
            return
        if self.ui.modelComboBox.count and self.ui.modelComboBox.findData(parameters.model) < 0:
            parameters.model = DEFAULT_MODEL  # a scene's model the catalog no longer lists
        for combo, value in (
            (self.ui.modelComboBox, parameters.model),
            (self.ui.deviceComboBox, parameters.device),
        ):
            wasBlocked = combo.blockSignals(True)
            combo.currentIndex = max(combo.findData(value), 0)
            combo.blockSignals(wasBlocked)
        self.ui.weightsPathLineEdit.enabled = parameters.model == WEIGHTS_FILE and not self.busy
        self.ui.adaptStepsSpinBox.enabled = parameters.adaptToVolume and not self.busy
        self._followInput(parameters)

        problem = self._updateGeometryLabels(parameters.inputVolume, parameters.targetSpacing)
        if (
            problem is None
            and parameters.model == WEIGHTS_FILE
            and not parameters.weightsPath.is_file()
        ):
            problem = _("Choose a weights file (.pt).")
        if not self.busy:
            self.ui.applyButton.enabled = problem is None
            self.ui.applyButton.toolTip = problem or _("Run SA-INR in the background.")
        self.ui.compareButton.enabled = bool(parameters.inputVolume and parameters.resultVolume)
        self.ui.restoreLayoutButton.enabled = self._layoutSnapshot is not None

    def _followInput(self, parameters) -> None:
        """When the input changes: fill in its slice thickness (DICOM, else automatic) and
        let go of an output made from another input. A changed value becomes the user's."""
        volume = parameters.inputVolume
        volumeID = volume.GetID() if volume is not None else None
        if volumeID != self._thicknessInputID:
            self._thicknessInputID = volumeID
            output = parameters.outputVolume
            if output is not None and isAutoNamed(output) and volumeID is not None:
                if output.GetAttribute(SOURCE_ATTRIBUTE) not in (None, volumeID):
                    parameters.outputVolume = None  # keep the other input's result
            if volume is None:
                return
            value, source = self.logic.sliceThicknessSuggestion(volume)
            self._filledThickness = round(value, 4)
            parameters.sliceThicknessMm = self._filledThickness
            parameters.sliceThicknessSource = source
        elif volume is not None and parameters.sliceThicknessMm != self._filledThickness:
            # typed: the user's value; typed back to 0 ("Automatic"): the core chooses
            typed = THICKNESS_USER if parameters.sliceThicknessMm > 0 else THICKNESS_AUTO
            if parameters.sliceThicknessSource != typed:
                parameters.sliceThicknessSource = typed
        self.ui.sliceThicknessSourceLabel.text = thicknessSourceText(
            parameters.sliceThicknessSource, self._lastThickness.get(volumeID)
        )

    def _updateGeometryLabels(self, volume, targetSpacing: float) -> str | None:
        """Show spacing, slice axis and output size; return why a run is impossible, or None."""
        if volume is None:
            for label in (self.ui.spacingLabel, self.ui.axisLabel, self.ui.outputSizeLabel):
                label.text = "-"
            return _("Select an input volume.")
        spacing = volume.GetSpacing()
        self.ui.spacingLabel.text = " × ".join(f"{s:.4g}" for s in spacing) + " mm"
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
            "{slices} slices at {spacing} mm instead of {inputSlices} ({factor:.3g}× finer)"
        ).format(
            slices=plan.outputSize[plan.axis],
            spacing=formatMillimetres(plan.targetSpacing),
            inputSlices=plan.inputSize[plan.axis],
            factor=plan.factor,
        )
        return None

    def onIsotropicButton(self) -> None:
        """Target spacing = the finest in-plane spacing (rounded down to the spin box's step)."""
        with errorsShown(_("Cannot compute an isotropic spacing:"), self._showError):
            spacing = self.logic.isotropicSpacing(self._parameterNode.inputVolume)
            scale = 10**self.ui.targetSpacingSpinBox.decimals
            self._parameterNode.targetSpacing = math.floor(spacing * scale + 1e-6) / scale

    def onModelChanged(self, index: int) -> None:
        self._parameterNode.model = self.ui.modelComboBox.itemData(index)

    def onDeviceChanged(self, index: int) -> None:
        if index >= 0:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index)

    def onApplyButton(self) -> None:
        """Start a run, or cancel the one in progress (the button reads Cancel then)."""
        if self._installing:  # a click queued while the installer ran
            return
        if self._run is not None:
            self._cancelRun()
            return
        with errorsShown(_("Cannot start:"), self._showError):
            self._startRun()

    def _startRun(self) -> None:
        parameters = self._parameterNode
        self.ui.logTextEdit.clear()
        if self._installTorch():
            self._startTorchProbe()  # the PyTorch line and the GPUs have changed
        user = parameters.sliceThicknessSource == THICKNESS_USER and parameters.sliceThicknessMm
        with slicer.util.WaitCursor():
            self._run = self.logic.start(
                parameters.inputVolume,
                parameters.targetSpacing,
                parameters.outputVolume,
                parameters.device,
                weights=self._selectedWeights(),
                adaptSteps=parameters.adaptSteps if parameters.adaptToVolume else 0,
                sliceThicknessMm=parameters.sliceThicknessMm if user else None,
            )
        parameters.outputVolume = self._run.outputVolume  # created up front, reused next time
        self._setRunning(True)
        self._showStatus(self._run.message)
        self._appendLog()
        self._timer.start()

    def _installTorch(self) -> bool:
        """PyTorch for the run (minutes at the first run): the panel is locked meanwhile, and
        the PyTorch line is put back whatever the install's outcome. True when installed now."""
        deviceLine = self.ui.deviceInfoLabel.text
        self._installing = True
        self._setParametersEnabled(False)
        self.ui.applyButton.enabled = False
        try:
            return self.logic.ensureTorch(self._showInstalling)
        finally:
            self._installing = False
            self.ui.deviceInfoLabel.text = deviceLine
            self._setParametersEnabled(True)
            self._onParameterNodeModified()

    def _showInstalling(self, message: str) -> None:
        """The minutes-long PyTorch install: say so before the installer takes over."""
        self._showStatus(message)
        self.ui.deviceInfoLabel.text = message
        processEvents()

    def _cancelRun(self) -> None:
        run = self._run
        try:
            run.cancel()
        finally:
            self._showStatus(run.message)
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
            self._showStatus(run.message, error=run.error is not None)  # e.g. a node deleted
        self._endRun()
        if run.state == ReductionRun.SUCCEEDED:
            if run.sliceThickness is not None:
                thickness = (run.sliceThickness, run.sliceThicknessSourceText)
                self._lastThickness[run.inputVolume.GetID()] = thickness
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
        self._setParametersEnabled(not running)

    def _setParametersEnabled(self, enabled: bool) -> None:
        for name in PARAMETER_WIDGETS:
            getattr(self.ui, name).enabled = enabled

    def _showStatus(self, text: str, error: bool = False) -> None:
        self.ui.statusLabel.text = text
        self.ui.statusLabel.styleSheet = "color: #c62828" if error else ""

    def _showError(self, message: str, details: str) -> None:
        """Any failure: in red in the status line, and in Slicer's error dialog with details
        (the run's log, an installer's output or a traceback)."""
        self._showStatus(message, error=True)
        slicer.util.errorDisplay(message, detailedText=details or None)

    def _showResult(self, outputVolume, maskVolume) -> None:
        """Select the new result (also as the output of the next run) and show it in the slice
        views, with the mask overlay if it is on."""
        parameters = self.logic.getParameterNode()  # also when the panel was left meanwhile
        parameters.resultVolume = outputVolume
        parameters.outputVolume = outputVolume
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
        """Ask a subprocess what PyTorch and GPUs are available (torch stays out of Slicer).
        Any failure of the check ends as an error line with details, never as a spinner."""
        import qt

        self._torchInfo = None
        self.ui.deviceInfoLabel.text = _("Checking PyTorch...")

        def probe() -> None:
            try:
                info = self.logic.torchInfo()
            except Exception as error:  # noqa: BLE001 - shown in the PyTorch line
                info = {"torch": None, "error": f"{type(error).__name__}: {error}"}
            self._torchInfo = info

        threading.Thread(target=probe, daemon=True).start()
        qt.QTimer.singleShot(500, self._showTorchInfo)

    def _showTorchInfo(self) -> None:
        import qt

        if self._torchInfo is None:
            qt.QTimer.singleShot(500, self._showTorchInfo)
            return
        self.ui.deviceInfoLabel.text = describeTorch(self._torchInfo)
        self.ui.deviceInfoLabel.toolTip = self._torchInfo.get("details", "")
        self._populateDevices()
