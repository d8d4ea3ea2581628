"""SAINRSlicer: reduce the slice spacing of thick-slice MRI with SA-INR, inside 3D Slicer.

This file is the module's shell, as Slicer expects it: the module description (and its Sample
Data entry), the panel and the self-test. The panel lives in ``SAINRSlicerLib.widget``; the
work is done by the rest of that library (Logic, background run, scene I/O, views), which
drives the ``sainr`` core package in a subprocess, so torch is never imported in Slicer's own
process. Outside Slicer (the PyPI package ``slicer-core``) the Logic works on real MRML; only
the panel needs the application.
"""

import slicer
import vtk
from SAINRSlicerLib.core import SAINRSlicerError, forgetLibraryModules, resourcePath
from SAINRSlicerLib.framework import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    _,
    inSlicerApplication,
    translate,
)
from SAINRSlicerLib.logic import (
    DEFAULT_ADAPT_STEPS,
    MAX_ADAPT_STEPS,
    WEIGHTS_FILE,
    SAINRSlicerLogic,
    SAINRSlicerParameterNode,
)
from SAINRSlicerLib.panel import CONSOLE_EXAMPLE, describeTorch, helpText
from SAINRSlicerLib.run import ADAPT_PROGRESS_SHARE, ADAPT_TAG, formatDuration, formatMillimetres
from SAINRSlicerLib.sceneio import MASK_REFERENCE_ROLE
from SAINRSlicerLib.views import COMPARE_VIEWS
from SAINRSlicerLib.widget import SAINRSlicerWidget

__all__ = [
    "ADAPT_PROGRESS_SHARE", "ADAPT_TAG", "COMPARE_VIEWS", "CONSOLE_EXAMPLE",
    "DEFAULT_ADAPT_STEPS", "MASK_REFERENCE_ROLE", "MAX_ADAPT_STEPS", "SAINRSlicer",
    "SAINRSlicerError", "SAINRSlicerLogic", "SAINRSlicerParameterNode", "SAINRSlicerTest",
    "SAINRSlicerWidget", "WEIGHTS_FILE", "describeTorch", "formatDuration",
    "forgetLibraryModules", "formatMillimetres", "helpText", "resourcePath",
]  # fmt: skip

#: The bundled thick-slice sample, offered in the Sample Data module.
SAMPLE_FILE = "knee_qdess_sag_3mm.nii.gz"
SAMPLE_NAME = "knee_qdess_sag_3mm"


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

        self.assertEqual(output.GetName(), f"{SAMPLE_NAME}_SAINR_1mm")
        self.assertEqual(output.GetImageData().GetDimensions(), plan.outputSize)
        np.testing.assert_allclose(output.GetSpacing(), plan.outputSpacing, atol=1e-6)
        np.testing.assert_allclose(output.GetOrigin(), volume.GetOrigin(), atol=1e-6)
        directions = [vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()]
        volume.GetIJKToRASDirectionMatrix(directions[0])
        output.GetIJKToRASDirectionMatrix(directions[1])
        np.testing.assert_allclose(*map(slicer.util.arrayFromVTKMatrix, directions), atol=1e-9)
        values = slicer.util.arrayFromVolume(output)
        self.assertTrue(np.isfinite(values).all())
        self.assertGreater(values.std(), 0)
        mask = output.GetNodeReference(MASK_REFERENCE_ROLE)
        self.assertTrue(mask.IsA("vtkMRMLLabelMapVolumeNode"))
        self.assertEqual(mask.GetImageData().GetDimensions(), plan.outputSize)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), before)
        self.delayDisplay("Test passed")
