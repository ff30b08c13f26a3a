"""MICD "Train semi-supervised" module: thin Slicer glue. The panel is MICDTrainingLib.Widget, the work is
MICDTrainingLib.Logic (usable from the Python console), shared pieces are in the MICDCommon package."""

import os

import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleTest,
                                           ScriptedLoadableModuleWidget)

from MICDCommon.slicermodule import PanelHost, module_logic  # importable: MICDCommonModule is a dependency
from MICDTrainingLib.Logic import TrainingLogic

try:
    from slicer.i18n import tr as _
except ImportError:  # headless tests
    def _(text):
        return text


class MICDTraining(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MICD: Train semi-supervised")
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["MICDCommonModule"]
        self.parent.contributors = ["MICD for 3D Slicer contributors"]
        self.parent.helpText = _(
            "Train a 3D segmentation model from a few segmented volumes and folders of unlabeled scans, with MICD "
            "semi-supervised co-training, in a background process. Add labeled cases, add unlabeled folders, press "
            "Train; the model then appears in 'MICD Segmentation'.")
        self.parent.acknowledgementText = _("Uses PyTorch and MONAI through the bundled micd backend.")


class MICDTrainingWidget(PanelHost, ScriptedLoadableModuleWidget):
    packages = ("MICDTrainingLib",)

    def createLogic(self):
        return MICDTrainingLogic()

    def createPanel(self, logic):
        from MICDTrainingLib.Widget import TrainingWidget

        return TrainingWidget(logic)


class MICDTrainingLogic(module_logic(TrainingLogic, poll_ms=1000)):
    """Console API, e.g.:
    job = MICDTrainingLogic().train(labeled=[(volume, segmentation)], unlabeled=["/data/unlabeled"],
                                    model_name="Liver", iterations=2000, wait=True)
    job.model  # the registered model, ready in MICD Segmentation
    """


class MICDTrainingTest(ScriptedLoadableModuleTest):
    """Self-test for real Slicer (Reload and Test): export from the scene, then a tiny real training run when the
    backend's dependencies are installed."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ExportFromScene()
        self.setUp()
        self.test_TinyTraining()

    def _syntheticCase(self, name, shift=0):
        import numpy as np

        image = np.zeros((32, 48, 48), np.float32)
        image[8:24, 12 + shift:36 + shift, 12:36] = 100
        image += np.random.default_rng(shift).normal(0, 5, image.shape).astype(np.float32)
        volume = slicer.util.addVolumeFromArray(image, name=name)
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name + " segmentation")
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        for label, (low, high) in {"core": (14, 18), "shell": (8, 14)}.items():
            segment_id = segmentation.GetSegmentation().AddEmptySegment("", label)
            mask = np.zeros(image.shape, np.uint8)
            mask[low:high, 12 + shift:36 + shift, 12:36] = 1
            slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentation, segment_id, volume)
        return volume, segmentation

    def test_ExportFromScene(self):
        import json
        import tempfile

        from MICDTrainingLib.DatasetExport import check_cases, export_dataset

        cases = [self._syntheticCase(f"case{i}", i) for i in range(2)]
        report = check_cases(cases)
        self.assertTrue(report.ok, report.text())
        out = tempfile.mkdtemp()
        export_dataset(cases, [], out, report=report)
        with open(os.path.join(out, "dataset.json"), encoding="utf-8") as f:
            dataset = json.load(f)
        self.assertEqual(dataset["labels"], {"1": "core", "2": "shell"})
        self.delayDisplay("Export from the scene passed")

    def test_TinyTraining(self):
        import tempfile

        from MICDCommon.dependencies import probe

        logic = MICDTrainingLogic()
        if not probe(logic.launcher, check_gpus=False).ready:
            self.delayDisplay("Backend dependencies not installed: tiny training skipped")
            return
        from MICDCommon import sceneio

        cases = [self._syntheticCase(f"case{i}", i) for i in range(4)]
        unlabeled = tempfile.mkdtemp()
        volume, _segmentation = cases.pop()
        sceneio.write_volume(volume, os.path.join(unlabeled, "unlabeled.nrrd"))
        job = logic.train(cases, [unlabeled], model_name="SelfTest", iterations=4, patch_size=(16, 32, 32),
                          filters=4, device="cpu", checkpoint_every=2, wait=True)
        self.assertEqual(job.state, "succeeded")
        self.assertEqual(job.model.labels, {1: "core", 2: "shell"})
        logic.registry.delete(job.model)
        self.delayDisplay("Tiny training passed")
