"""The module files load as Slicer loads them and their panels run on real Qt widgets with PythonQt's rules
(slicer_harness.py): every button is clicked, every dialog answered through the harness; the logic is a mock
except where the Slicer side itself is under test (settings, dependency install, curves)."""

import subprocess
import sys
import time
import unittest
from unittest import mock

import pytest
import qt
import slicer

import slicer_harness
from conftest import MAIN_WINDOW
from dialogs import DIALOGS
from fake_logic import starts_at_once
from MICDCommon import dependencies, qtsupport
from MICDCommon.registry import ModelInfo
from MICDTrainingLib.DatasetExport import DatasetReport
from MICDTrainingLib.Parameters import TrainingSettings
from scene_helpers import load_case, load_volume


@pytest.mark.parametrize("name", ["MICDTraining", "MICDSegmentation"])
def test_module_files_load_as_in_slicer(scene, name):
    common = slicer_harness.load_module("MICDCommonModule")
    assert common.parent.hidden and common.widget is None
    loaded = slicer_harness.load_module(name)
    assert loaded.parent.title == {"MICDTraining": "MICD: Train semi-supervised",
                                   "MICDSegmentation": "MICD Segmentation"}[name]  # MICD's, in the module list
    assert loaded.parent.categories == ["Segmentation"]
    assert loaded.parent.dependencies == ["MICDCommonModule"]
    assert loaded.parent.icon is not None and not loaded.parent.icon.isNull()
    widget = loaded.widget
    assert isinstance(widget.logic, getattr(loaded.python, name + "Logic"))
    assert widget.layout.count() == 1 and widget.layout.itemAt(0).widget() == widget.panel.widget
    assert issubclass(getattr(loaded.python, name + "Test"), unittest.TestCase)
    with mock.patch.object(widget.panel, "cleanup") as cleanup:
        loaded.unload()  # Slicer's module manager: the widget's cleanup runs
    cleanup.assert_called_once_with()


def test_logic_classes_initialise_each_base_once(scene):
    from MICDSegmentation import MICDSegmentationLogic
    from MICDTraining import MICDTrainingLogic
    from MICDTrainingLib.Logic import TrainingLogic

    with mock.patch.object(TrainingLogic, "__init__", autospec=True, return_value=None) as core_init:
        MICDTrainingLogic(runs_root="/runs")
    assert core_init.call_count == 1 and core_init.call_args[1]["runs_root"] == "/runs"
    training, segmentation = MICDTrainingLogic(), MICDSegmentationLogic()
    assert training.moduleName == "MICDTraining" and training.getParameterNode().GetAttribute("ModuleName") == \
        "MICDTraining"
    assert training.job_poller is not None and segmentation.job_poller is not None
    assert MICDSegmentationLogic().worker is segmentation.worker  # the panel and the console share one worker
    for method in ("train", "resume", "attach", "check", "runs_to_attach", "resumable_runs"):
        assert callable(getattr(training, method))
    for method in ("segment", "models", "rename_model", "delete_model", "export_model", "import_model"):
        assert callable(getattr(segmentation, method))


def wait_for(condition, timeout=5.0):
    """Spin Qt's event loop (timers fire, as in Slicer) until `condition()`."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out spinning the event loop"
        slicer.app.processEvents()
        time.sleep(0.005)


@pytest.fixture
def training_panel(scene):
    from MICDTrainingLib.Widget import TrainingWidget

    logic = mock.MagicMock(name="TrainingLogic")
    report = DatasetReport()
    report.labels = {1: "anterior", 2: "posterior"}
    logic.check.return_value = report
    logic.runs_to_attach.return_value = []
    logic.resumable_runs.return_value = []
    panel = TrainingWidget(logic, dependency_check=lambda then=None: True)
    return panel, logic


def test_training_buttons_call_the_logic(training_panel, hippocampus_cases, tmp_path):
    panel, logic = training_panel
    training, form = panel.training, panel.training.form
    assert not training.trainButton.enabled  # nothing to train on yet
    volume, segmentation = load_case(slicer.mrmlScene, *hippocampus_cases[0])
    assert training.volumeSelector.currentNode() is volume  # the selectors follow the scene
    training.segmentationSelector.setCurrentNode(segmentation)
    training.addCurrentButton.click()
    assert len(training.cases) == 1 and training.casesTable.item(0, 2).text() == "anterior, posterior"
    training.autoPairButton.click()  # the same pair is not added twice
    assert len(training.cases) == 1

    for folder in (tmp_path / "a", tmp_path / "b"):
        folder.mkdir()
        (folder / "._x.nii.gz").write_bytes(b"\x00\x05\x16\x07" + bytes(80))  # a macOS fork: skipped, as the backend does
        DIALOGS.answer(str(folder))
        training.addUnlabeledButton.click()
    assert training.unlabeled == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert training.unlabeledList.count == 2
    assert training.unlabeledList.item(0).text().endswith(" - 0 readable image(s)")
    training.unlabeledList.currentRow = 0
    training.removeUnlabeledButton.click()
    assert training.unlabeled == [str(tmp_path / "b")]

    training.checkButton.click()
    assert logic.check.called and "1=anterior" in training.checksLabel.text

    form.modelNameEdit.text = "Hippo"
    form.iterationsSpin.value = 300
    form.patchEdit.text = "16 32 16"
    form.methodCombo.currentIndex = form.methodCombo.findData("cps")
    job = mock.MagicMock(finished=False, backlog=0)
    start_training = starts_at_once(logic, job)
    training.trainButton.click()
    args, kwargs = start_training.call_args
    assert args[0][0].volume is volume and args[1] == [str(tmp_path / "b")]
    settings = args[2]
    assert (settings.model_name, settings.iterations, settings.patch_size, settings.method) == \
        ("Hippo", 300, (16, 32, 16), "cps")
    assert kwargs["on_event"] == training.onEvent and kwargs["on_finished"] == training.onFinished
    assert training.cancelButton.enabled and not training.trainButton.enabled

    training.cancelButton.click()
    job.request_cancel.assert_called_once()
    assert [d.kind for d in DIALOGS.shown] == ["QFileDialog.getExistingDirectory"] * 2


def test_training_panel_reports_bad_settings_and_reattaches(training_panel):
    panel, logic = training_panel
    training, form = panel.training, panel.training.form
    form.patchEdit.text = "15 15"
    assert training.settings().problems()  # surfaced through logic.check in the real logic
    logic.runs_to_attach.return_value = ["/runs/Hippo-1"]
    panel.enter()
    assert logic.attach.call_args[0][0] == "/runs/Hippo-1"
    assert "Reattached" in training.logText.toPlainText()


def test_training_settings_round_trip(training_panel):
    panel, _logic = training_panel
    training, form = panel.training, panel.training.form
    settings = TrainingSettings(model_name="Liver", iterations=1234, patch_size=(32, 64, 64), device="cpu",
                                method="cps", filters=8, seed=3, checkpoint_every=50, advanced={"lr": 0.01})
    form.show(settings)
    assert training.settings() == settings
    assert settings.cli_args()[:2] == ["--method", "cps"] and "--lr" in settings.cli_args()


@pytest.mark.skipif(sys.platform == "win32", reason="the fake interpreter is a shell script")
def test_device_list_offers_a_gpu_only_once_a_probe_found_it(training_panel, tmp_path):
    from fake_python import FakePython

    panel, logic = training_panel
    form = panel.training.form

    def offered():
        return [form.deviceCombo.itemText(i) for i in range(form.deviceCombo.count)]

    assert offered() == ["auto", "cpu"]  # nothing probed yet: no cuda:0 that may not exist
    packages = {name: "1.0" for name in dependencies.REQUIREMENTS}
    logic.launcher = FakePython(tmp_path, packages, gpus=["NVIDIA H100 80GB HBM3"]).launcher
    form.deviceCombo.setCurrentIndex(form.deviceCombo.findText("cpu"))
    form.dependenciesButton.click()  # Check / install dependencies: a background probe that lists the GPU
    deadline = time.monotonic() + 60
    while offered() == ["auto", "cpu"] and time.monotonic() < deadline:
        slicer.app.processEvents()
        time.sleep(0.02)
    assert offered() == ["auto", "cuda:0", "cpu"] and form.deviceCombo.currentText == "cpu"  # the choice stays
    found = {"python": "p", "packages": packages, "micd": "0.1"}
    assert "NVIDIA H100 80GB HBM3" in panel.training.logText.toPlainText()
    form.deviceCombo.setCurrentIndex(form.deviceCombo.findText("cuda:0"))
    form.offerDevices(dependencies.EnvironmentReport(dict(found, gpus=[])))  # the GPU is gone (another Python)
    assert offered() == ["auto", "cpu"] and form.deviceCombo.currentText == "auto"


def test_training_curves_have_distinct_colours_and_both_charts_show(training_panel):
    from MICDTrainingLib import Curves
    from MICDTrainingLib.Curves import TrainingCurves

    panel, _logic = training_panel
    training = panel.training
    blank = training.curvesView.lossLabel.pixmap.toImage()
    drawn = training.curvesView.drawn
    training.curves = TrainingCurves(slicer.mrmlScene, "Hippo")
    for it in range(1, 41):
        training.curves.add_event({"event": "iteration", "iter": it, "loss": {"total": 2 / it, "sup": 1 / it,
                                                                              "consistency": 0.1 + 0.01 * it}})
        if it % 10 == 0:
            training.curves.add_event({"event": "validation", "iter": it, "mean_dice": 0.5 + it / 100,
                                       "dice": {"anterior": 0.4 + it / 100, "posterior": 0.6 + it / 100}})
        training.onEvent({"event": "iteration", "iter": it})
    assert training.curvesView.drawn == drawn  # events only mark the charts out of date ...
    wait_for(lambda: training.curvesView.drawn > drawn)  # ... the panel's timer redraws them
    assert training.curvesView.drawn == drawn + 1, "40 events, one redraw"
    for chart in (training.curves.loss.chart_node, training.curves.dice.chart_node):
        colors = [chart.GetNthPlotSeriesNode(i).GetColor() for i in range(chart.GetNumberOfPlotSeriesNodes())]
        assert len(colors) == 3 and len(set(colors)) == 3
    for label in (training.curvesView.lossLabel, training.curvesView.diceLabel):
        image = label.pixmap.toImage()
        assert image.width() > 300 and image != blank
        drawn = {image.pixelColor(x, y).name() for x in range(0, image.width(), 2) for y in range(0, image.height(), 2)}
        series = {qt.QColor(*[int(c * 255) for c in rgb]).name() for rgb in colors}
        assert len(series & drawn) == 3, "each series is drawn in its own colour"

    training.showCurvesButton.click()  # both charts in Slicer's view layout
    layout = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    assert layout.GetViewArrangement() == Curves.LAYOUT_ID
    shown = [slicer.mrmlScene.GetSingletonNode(tag, "vtkMRMLPlotViewNode").GetPlotChartNodeID()
             for tag in Curves.PLOT_VIEWS]
    assert shown == [training.curves.loss.chart_node.GetID(), training.curves.dice.chart_node.GetID()]


@pytest.fixture
def segmentation_panel(scene, tmp_path):
    from MICDSegmentationLib.Widget import SegmentationWidget

    logic = mock.MagicMock(name="SegmentationLogic")
    models = [ModelInfo(str(tmp_path / name), {"labels": {"1": "anterior"}, "provenance": {"created": "2026-11-24"},
                                               "metrics": {"best_mean_dice": dice}, "method": "micd"})
              for name, dice in (("Hippo", 0.81), ("Prostate", 0.7))]
    logic.models.return_value = models
    logic.previous_result.return_value = None
    panel = SegmentationWidget(logic, dependency_check=lambda then=None: True)
    return panel, logic, models


def test_segment_button_calls_the_logic_and_asks_before_replacing(segmentation_panel, hippocampus_cases):
    panel, logic, (model, other) = segmentation_panel
    assert "Dice 0.810" in panel.provenanceLabel.text
    panel.modelList.currentRow = 1
    assert "Dice 0.700" in panel.provenanceLabel.text and panel.selectedModel() is other
    panel.modelList.currentRow = 0
    volume = load_volume(hippocampus_cases[0][0], "hippo")
    assert panel.volumeSelector.currentNode() is volume and panel.segmentButton.enabled
    panel.uncertaintyCheck.checked = True
    job = mock.MagicMock(finished=False, backlog=0)
    logic.segment.return_value = job
    panel.segmentButton.click()
    args, kwargs = logic.segment.call_args
    assert args == (volume, model) and kwargs["replace"] is False and kwargs["settings"].uncertainty
    panel.cancelButton.click()
    job.request_cancel.assert_called_once()

    logic.segment.reset_mock()
    job.finished, job.state, job.message = True, "succeeded", "Segmented hippo"
    panel.onFinished(job)
    assert panel.statusLabel.text == "Segmented hippo" and panel.segmentButton.enabled
    logic.previous_result.return_value = mock.MagicMock(GetName=lambda: "hippo segmentation")
    DIALOGS.answer(qt.QMessageBox.Yes)
    panel.segmentButton.click()
    assert logic.segment.call_args[1]["replace"] is True
    assert "already holds a MICD result" in DIALOGS.shown[-1].text
    logic.segment.reset_mock()
    DIALOGS.answer(qt.QMessageBox.Cancel)
    panel.segmentButton.click()
    assert not logic.segment.called


def test_model_buttons_call_the_logic(segmentation_panel, tmp_path):
    panel, logic, (model, _other) = segmentation_panel
    DIALOGS.answer("Hippo v2")
    panel.renameButton.click()
    logic.rename_model.assert_called_once_with(model, "Hippo v2")
    DIALOGS.answer(qt.QMessageBox.Yes)
    panel.deleteButton.click()
    logic.delete_model.assert_called_once_with(model)
    DIALOGS.answer(str(tmp_path / "Hippo.zip"), str(tmp_path / "Hippo.zip"), str(tmp_path))
    panel.exportButton.click()
    logic.export_model.assert_called_once_with(model, str(tmp_path / "Hippo.zip"), True)  # the dialog asked
    panel.importZipButton.click()  # the import runs in a worker thread (see test_registry_import)
    logic.start_import.assert_called_with(str(tmp_path / "Hippo.zip"), panel.onImported)
    panel.importFolderButton.click()
    logic.start_import.assert_called_with(str(tmp_path), panel.onImported)
    logic.rename_model.side_effect = RuntimeError("name taken")
    DIALOGS.answer("Hippo v3")
    panel.renameButton.click()
    assert DIALOGS.shown[-1].kind == "slicer.util.errorDisplay" and DIALOGS.shown[-1].text == "name taken"
    assert all(d.parent == MAIN_WINDOW for d in DIALOGS.shown)


def test_changed_python_applies_to_both_modules_without_reloading(scene, tmp_path):
    training = slicer_harness.load_module("MICDTraining").widget
    segmentation = slicer_harness.load_module("MICDSegmentation").widget
    python = tmp_path / "env" / "bin" / "python"
    python_edit = training.panel.training.form.pythonEdit
    python_edit.text = str(python)
    python_edit.editingFinished.emit()
    assert training.logic.launcher.python == str(python) == segmentation.logic.launcher.python
    python_edit.text = ""
    python_edit.editingFinished.emit()
    assert segmentation.logic.launcher.python == training.logic.launcher.python != str(python)


def test_add_folder_says_why_a_folder_gives_no_cases(training_panel, hippocampus_cases, tmp_path):
    """Add folder... on a folder without image/label pairs opens an error that says what was found and how the
    files must be laid out, instead of a bare refusal."""
    import os

    from MICDTrainingLib.Logic import TrainingLogic

    panel, logic = training_panel
    training = panel.training
    logic.cases_from_folder.side_effect = TrainingLogic.cases_from_folder  # the real pairing
    images = tmp_path / "only_images"
    images.mkdir()
    for image, _label in hippocampus_cases[:2]:
        os.symlink(image, images / os.path.basename(image))
    empty = tmp_path / "empty"
    empty.mkdir()
    DIALOGS.answer(str(images), str(empty))
    training.addFolderButton.click()
    training.addFolderButton.click()
    errors = [d for d in DIALOGS.shown if d.kind == "slicer.util.errorDisplay"]
    assert len(errors) == 2 and not training.cases
    assert "2 image(s) but no label file" in errors[0].text and "hippocampus_001.nii.gz" in errors[0].text
    assert "labelsTr/ beside imagesTr/" in errors[0].text and "X_seg.nii.gz" in errors[0].text
    assert "holds no image files" in errors[1].text


def test_add_folder_refuses_a_dataset_json_it_cannot_read(training_panel, hippocampus_cases, tmp_path):
    """A labeled folder whose dataset.json is broken is refused with the file and the reason, instead of training
    with numbered label names the user never chose; a valid one gives its names."""
    import json
    import os

    from MICDTrainingLib.Logic import TrainingLogic

    panel, logic = training_panel
    training = panel.training
    logic.cases_from_folder.side_effect = TrainingLogic.cases_from_folder  # the real pairing and label names
    folder = tmp_path / "labeled"
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True)
    for image, label in hippocampus_cases[:2]:
        os.symlink(image, folder / "imagesTr" / os.path.basename(image))
        os.symlink(label, folder / "labelsTr" / os.path.basename(label))
    meta = folder / "dataset.json"
    meta.write_text('{"labels": {"0": "background", "1": "anterior",')  # cut off mid-write
    DIALOGS.answer(str(folder))
    training.addFolderButton.click()
    (error,) = [d for d in DIALOGS.shown if d.kind == "slicer.util.errorDisplay"]
    assert str(meta) in error.text and "not valid JSON" in error.text and not training.cases

    meta.write_text(json.dumps({"labels": ["background", "anterior"]}))  # a list, not {value: name}
    DIALOGS.answer(str(folder))
    training.addFolderButton.click()
    assert "must be an object" in [d for d in DIALOGS.shown if d.kind == "slicer.util.errorDisplay"][-1].text

    meta.write_text(json.dumps({"labels": {"0": "background", "1": "anterior", "2": "posterior"}}))
    DIALOGS.answer(str(folder))
    training.addFolderButton.click()
    assert len(training.cases) == 2 and training.file_labels == {1: "anterior", 2: "posterior"}
