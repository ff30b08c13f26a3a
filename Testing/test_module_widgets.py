"""The module files import and their panels build under the qt/ctk stand-in; the buttons call the logic (mocked);
the self-test classes for real Slicer exist."""

import importlib
from unittest import mock

import pytest
import qt
import slicer

from MICDCommon.registry import ModelInfo
from MICDTrainingLib.DatasetExport import DatasetReport
from MICDTrainingLib.Parameters import TrainingSettings
from scene_helpers import load_case, load_volume


@pytest.mark.parametrize("name", ["MICDTraining", "MICDSegmentation"])
def test_module_files_import_and_build(scene, name):
    module = importlib.import_module(name)
    info = module.__dict__[name](qt.QWidget())
    assert info.parent.title and info.parent.categories == ["Segmentation"]
    widget = module.__dict__[name + "Widget"](qt.QWidget())
    widget.setup()
    assert widget.panel.widget is not None
    assert isinstance(widget.logic, module.__dict__[name + "Logic"])
    test_class = module.__dict__[name + "Test"]
    assert issubclass(test_class, slicer.ScriptedLoadableModule.ScriptedLoadableModuleTest)
    assert callable(test_class.runTest) and [m for m in dir(test_class) if m.startswith("test_")]


def test_console_logic_classes_have_the_api(scene):
    from MICDSegmentation import MICDSegmentationLogic
    from MICDTraining import MICDTrainingLogic

    training, segmentation = MICDTrainingLogic(), MICDSegmentationLogic()
    for method in ("train", "resume", "attach", "check", "runs_to_attach", "resumable_runs"):
        assert callable(getattr(training, method))
    for method in ("segment", "models", "rename_model", "delete_model", "export_model", "import_model"):
        assert callable(getattr(segmentation, method))
    assert training.job_poller is not None  # a Qt timer polls jobs started without wait in Slicer


@pytest.fixture
def training_panel(scene):
    from MICDTrainingLib.Widget import TrainingWidget

    logic = mock.MagicMock(name="TrainingLogic")
    report = DatasetReport()
    report.labels = {1: "anterior", 2: "posterior"}
    logic.check.return_value = report
    logic.runs_to_attach.return_value = []
    logic.resumable_runs.return_value = []
    errors = []
    panel = TrainingWidget(logic, show_error=errors.append, dependency_check=lambda: True)
    return panel, logic, errors


def test_training_buttons_call_the_logic(training_panel, hippocampus_cases, tmp_path):
    panel, logic, errors = training_panel
    assert not panel.trainButton.enabled  # nothing to train on yet
    volume, segmentation = load_case(slicer.mrmlScene, *hippocampus_cases[0])
    panel.volumeSelector.setCurrentNode(volume)
    panel.segmentationSelector.setCurrentNode(segmentation)
    panel.addCurrentButton.click()
    assert len(panel.cases) == 1 and panel.casesTable.item(0, 2).text() == "anterior, posterior"
    panel.autoPairButton.click()  # the same pair is not added twice
    assert len(panel.cases) == 1

    qt.QFileDialog.next_path = str(tmp_path)
    panel.addUnlabeledButton.click()
    assert panel.unlabeled == [str(tmp_path)] and "0 readable image(s)" in panel.unlabeledList.item(0).text()

    panel.checkButton.click()
    assert logic.check.called and "1=anterior" in panel.checksLabel.text

    panel.modelNameEdit.setText("Hippo")
    panel.iterationsSpin.setValue(300)
    panel.patchEdit.setText("16 32 16")
    job = mock.MagicMock(finished=False)
    logic.train.return_value = job
    panel.trainButton.click()
    args, kwargs = logic.train.call_args
    assert args[0][0].volume is volume and args[1] == [str(tmp_path)]
    settings = args[2]
    assert (settings.model_name, settings.iterations, settings.patch_size) == ("Hippo", 300, (16, 32, 16))
    assert kwargs["on_event"] == panel.onEvent and kwargs["on_finished"] == panel.onFinished
    assert panel.cancelButton.enabled and not panel.trainButton.enabled

    panel.cancelButton.click()
    job.request_cancel.assert_called_once()
    assert errors == []


def test_training_panel_reports_bad_settings_and_reattaches(training_panel):
    panel, logic, errors = training_panel
    panel.patchEdit.setText("15 15")
    assert panel.settings().problems()  # surfaced through logic.check in the real logic
    logic.runs_to_attach.return_value = ["/runs/Hippo-1"]
    panel.enter()
    assert logic.attach.call_args[0][0] == "/runs/Hippo-1"
    assert "Reattached" in panel.logText.toPlainText()


def test_training_settings_round_trip(training_panel):
    panel, _logic, _errors = training_panel
    settings = TrainingSettings(model_name="Liver", iterations=1234, patch_size=(32, 64, 64), device="cpu",
                                method="cps", filters=8, seed=3, checkpoint_every=50, advanced={"lr": 0.01})
    panel.showSettings(settings)
    assert panel.settings() == settings
    assert settings.cli_args()[:2] == ["--method", "cps"] and "--lr" in settings.cli_args()


@pytest.fixture
def segmentation_panel(scene, tmp_path):
    from MICDSegmentationLib.Widget import SegmentationWidget

    logic = mock.MagicMock(name="SegmentationLogic")
    model = ModelInfo(str(tmp_path / "Hippo"), {"labels": {"1": "anterior"}, "provenance": {"created": "2026-11-24"},
                                                "metrics": {"best_mean_dice": 0.81}, "method": "micd"})
    logic.models.return_value = [model]
    logic.previous_result.return_value = None
    errors, replies = [], {"replace": False, "text": "Hippo v2"}
    panel = SegmentationWidget(logic, show_error=errors.append, dependency_check=lambda: True,
                               ask_text=lambda *a: replies["text"], ask_replace=lambda node: replies["replace"])
    return panel, logic, model, errors, replies


def test_segment_button_calls_the_logic_and_asks_before_replacing(segmentation_panel, hippocampus_cases):
    panel, logic, model, errors, replies = segmentation_panel
    assert "Dice 0.810" in panel.provenanceLabel.text
    volume = load_volume(hippocampus_cases[0][0], "hippo")
    panel.volumeSelector.setCurrentNode(volume)
    panel.uncertaintyCheck.setChecked(True)
    assert panel.segmentButton.enabled
    job = mock.MagicMock(finished=False)
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
    replies["replace"] = True
    panel.segmentButton.click()
    assert logic.segment.call_args[1]["replace"] is True
    logic.segment.reset_mock()
    replies["replace"] = None  # the user cancelled the question
    panel.segmentButton.click()
    assert not logic.segment.called
    assert errors == []


def test_model_buttons_call_the_logic(segmentation_panel, tmp_path):
    panel, logic, model, errors, _replies = segmentation_panel
    panel.renameButton.click()
    logic.rename_model.assert_called_once_with(model, "Hippo v2")
    qt.QMessageBox.answer = qt.QMessageBox.Yes
    panel.deleteButton.click()
    logic.delete_model.assert_called_once_with(model)
    qt.QFileDialog.next_path = str(tmp_path / "Hippo.zip")
    panel.exportButton.click()
    logic.export_model.assert_called_once_with(model, str(tmp_path / "Hippo.zip"))
    panel.importZipButton.click()
    logic.import_model.assert_called_with(str(tmp_path / "Hippo.zip"))
    logic.rename_model.side_effect = RuntimeError("name taken")
    panel.renameButton.click()
    assert errors == ["name taken"]
