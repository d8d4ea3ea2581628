"""The panel inside Slicer: it loads, shows the research-use notice, offers no run without an
input, and fills in the slice thickness. Runs under ctest in the application (no PyTorch
needed: nothing is reduced)."""

import unittest

import slicer


class SAINRSlicerPanelTest(unittest.TestCase):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_panel_without_and_with_an_input()

    def test_panel_without_and_with_an_input(self):
        slicer.util.selectModule("SAINRSlicer")
        widget = slicer.util.getModuleWidget("SAINRSlicer")
        self.assertIn("research use only", widget.ui.researchNoticeLabel.text.lower())
        self.assertFalse(widget.ui.applyButton.enabled)

        import numpy as np

        volume = slicer.util.addVolumeFromArray(np.zeros((8, 16, 16), np.int16), name="thick")
        volume.SetSpacing(0.5, 0.5, 3.0)
        widget.logic.getParameterNode().inputVolume = volume
        self.assertTrue(widget.ui.applyButton.enabled)
        self.assertEqual(widget.ui.sliceThicknessSpinBox.value, 0.0)  # shown as "Automatic"
        self.assertEqual(widget.ui.sliceThicknessSourceLabel.text, "estimated when you run")
        self.assertEqual(widget.ui.targetSpacingSpinBox.decimals, 4)
