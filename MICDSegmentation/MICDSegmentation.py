"""MICD "Segment" module: thin Slicer glue. The panel is MICDSegmentationLib.Widget, the work is
MICDSegmentationLib.Logic (usable from the Python console), shared pieces are in the MICDCommon package."""

import os

import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleTest,
                                           ScriptedLoadableModuleWidget)

from MICDCommon.slicermodule import PanelHost, module_logic  # importable: MICDCommonModule is a dependency
from MICDSegmentationLib.Logic import SegmentationLogic

try:
    from slicer.i18n import tr as _
except ImportError:  # headless tests
    def _(text):
        return text


class MICDSegmentation(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MICD Segmentation")
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["MICDCommonModule"]
        self.parent.contributors = ["MICD for 3D Slicer contributors"]
        self.parent.helpText = _(
            "Segment the current volume with a model trained in 'MICD: Train semi-supervised' (or imported): one "
            "segment per label with the model's names and colours, in the volume's geometry and study.")
        self.parent.acknowledgementText = _("Uses PyTorch and MONAI through the bundled micd backend.")


class MICDSegmentationWidget(PanelHost, ScriptedLoadableModuleWidget):
    packages = ("MICDSegmentationLib",)

    def createLogic(self):
        return MICDSegmentationLogic()

    def createPanel(self, logic):
        from MICDSegmentationLib.Widget import SegmentationWidget

        return SegmentationWidget(logic)


class MICDSegmentationLogic(module_logic(SegmentationLogic, poll_ms=50)):
    """Console API, e.g.:
    job = MICDSegmentationLogic().segment(getNode("CT"), "Liver", wait=True)
    job.segmentation  # the new segmentation node

    Predictions run in a warm worker process (`micd serve`) shared by the panel and every console logic of the
    session, so a second segmentation costs the prediction, not Python's start-up; it ends after
    MICD/WorkerIdleMinutes idle minutes. The poller looks at the worker's answers every 50 ms: a result lands in the
    scene that soon after it exists."""

    shared_worker = None  # the session's one worker (its launcher reads the Python setting at each start)

    def __init__(self, **kwargs):
        from MICDCommon import qtsupport
        from MICDCommon.worker import BackendWorker

        kwargs.setdefault("idle_timeout_s", qtsupport.worker_idle_timeout_s())
        if "worker" not in kwargs and "launcher" not in kwargs:
            if MICDSegmentationLogic.shared_worker is None:
                MICDSegmentationLogic.shared_worker = BackendWorker(qtsupport.launcher_from_settings(),
                                                                    kwargs["idle_timeout_s"])
            kwargs["worker"] = MICDSegmentationLogic.shared_worker
        super().__init__(**kwargs)


class MICDSegmentationTest(ScriptedLoadableModuleTest):
    """Self-test for real Slicer (Reload and Test): import a label map as a result, with names, colours and
    geometry; replacing an earlier result."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ImportResult()

    def test_ImportResult(self):
        import numpy as np
        import tempfile

        from MICDCommon import sceneio
        from MICDSegmentationLib.ResultImport import find_previous_result, import_label_file

        image = np.zeros((20, 30, 40), np.int16)
        volume = slicer.util.addVolumeFromArray(image, np.diag([0.8, 0.8, 2.0, 1.0]), name="input")
        labels = np.zeros(image.shape, np.uint8)
        labels[5:10, 5:15, 5:20] = 1
        labels[12:16, 10:20, 20:30] = 2
        labelmap = slicer.util.addVolumeFromArray(labels, np.diag([0.8, 0.8, 2.0, 1.0]), name="prediction",
                                                  nodeClassName="vtkMRMLLabelMapVolumeNode")
        path = sceneio.write_volume(labelmap, os.path.join(tempfile.mkdtemp(), "prediction.nrrd"))
        slicer.mrmlScene.RemoveNode(labelmap)
        node = import_label_file(path, volume, {1: "liver", 2: "spleen"}, {1: (0.8, 0.3, 0.2)})
        self.assertEqual(node.GetName(), "input segmentation")
        self.assertEqual(node.GetSegmentation().GetNumberOfSegments(), 2)
        self.assertIs(find_previous_result(volume), node)
        again = import_label_file(path, volume, {1: "liver", 2: "spleen"}, target=node)
        self.assertIs(again, node)
        self.delayDisplay("Result import passed")
