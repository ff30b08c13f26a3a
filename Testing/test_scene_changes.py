"""The panels follow the scene (issue 30 item 3): deleting a paired volume or segmentation marks its case in the
training panel's table and says so, closing the scene empties the table of scene cases, Check and Train then refuse
with a sentence naming the case and leave no run folder behind; the Segment panel never segments a deleted volume
and stops a segmentation whose volume went. Every observer callback stays under 100 ms (it runs on the main thread),
and the observers go when the panel is cleaned up, so re-opening the module does not double them."""

import os
import time
import types
from unittest import mock

import pytest
import slicer

import slicer_harness
from dialogs import DIALOGS
from MICDCommon.jobs import CANCELLED, SUCCEEDED
from MICDCommon.registry import ModelInfo
from scene_helpers import load_case, load_volume

CALLBACK_LIMIT_S = 0.1


class CallbackTimes:
    """Re-registers an object's scene observers (VTKObservationMixin) through a stopwatch."""

    def __init__(self):
        self.durations = []  # (callback name, seconds)
        self.errors = []  # VTK prints an observer's exception and goes on: kept here, so the test fails

    def watch(self, observer):
        observations = list(observer.Observations)
        assert observations, "the panel observes the scene"
        for obj, event, method, _group, _tag, _priority in observations:
            observer.removeObserver(obj, event, method)
            observer.addObserver(obj, event, self._timed(method))
        return observer

    def _timed(self, method):
        def timed(*args):
            start = time.perf_counter()
            try:
                return method(*args)
            except BaseException as e:  # noqa: BLE001 - re-raised for VTK to print, and kept
                self.errors.append(e)
                raise
            finally:
                self.durations.append((method.__name__, time.perf_counter() - start))

        if hasattr(method, "CallDataType"):  # @vtk.calldata_type: the node comes as call data
            timed.CallDataType = method.CallDataType
        return timed

    def assert_fast(self):
        """Every callback so far returned within 100 ms and raised nothing."""
        assert self.durations, "no observer was called"
        assert not self.errors, f"observer callbacks raised: {self.errors!r}"
        slow = [(name, round(s, 3)) for name, s in self.durations if s >= CALLBACK_LIMIT_S]
        assert not slow, f"observer callbacks of 100 ms or more on the main thread: {slow}"


@pytest.fixture
def runs_root(tmp_path):
    return tmp_path / "runs"


@pytest.fixture
def training(scene, runs_root):
    """The training panel with the real logic (so Train really checks and exports), and no dependency step."""
    from MICDTrainingLib.Logic import TrainingLogic
    from MICDTrainingLib.Widget import TrainingWidget

    logic = TrainingLogic(runs_root=str(runs_root))
    widget = TrainingWidget(logic, dependency_check=lambda *args, **kwargs: True)
    yield widget.training
    widget.cleanup()


def _run_folders(runs_root):
    return sorted(os.listdir(runs_root)) if os.path.isdir(runs_root) else []


def _pair_two(scene, training, hippocampus_cases):
    nodes = [load_case(scene, *case) for case in hippocampus_cases[:2]]
    training.autoPairButton.click()
    assert len(training.cases) == 2 and training.casesTable.rowCount == 2
    return nodes


def _row_of(training, segmentation):
    return next(i for i, c in enumerate(training.cases) if getattr(c, "segmentation", None) is segmentation)


@pytest.mark.parametrize("state", ["paired", "checked"])
@pytest.mark.parametrize("role", ["volume", "segmentation"])
def test_deleting_a_paired_node_marks_the_case_and_train_refuses_naming_it(scene, training, hippocampus_cases,
                                                                           runs_root, state, role):
    times = CallbackTimes()
    times.watch(training)
    (volume, segmentation), _other = _pair_two(scene, training, hippocampus_cases)
    if state == "checked":
        training.checkButton.click()
        assert "Error" not in training.checksLabel.text, training.checksLabel.text
    row = _row_of(training, segmentation)
    case_title = training.cases[row].title
    gone = volume if role == "volume" else segmentation
    name = gone.GetName()

    scene.RemoveNode(gone)

    times.assert_fast()
    assert len(training.cases) == 2 and training.casesTable.rowCount == 2  # the row stays, marked
    column = 0 if role == "volume" else 1
    cell = training.casesTable.item(row, column).text()
    assert name in cell and "deleted" in cell, cell
    log = training.logText.toPlainText()
    assert name in log and "deleted" in log, log
    assert name in training.checksLabel.text and training.report is None  # an earlier Check no longer holds

    training.trainButton.click()  # a slot error would be raised here
    error = DIALOGS.shown[-1]
    assert error.kind == "slicer.util.errorDisplay"
    assert case_title in error.text and name in error.text and "deleted" in error.text, error.text
    assert _run_folders(runs_root) == [], "nothing half-made in the run folder"
    assert training.job is None

    training.checkButton.click()
    assert "Error" in training.checksLabel.text and case_title in training.checksLabel.text

    # Remove takes the broken case out; the other one trains as before (checks pass)
    training.casesTable.selectRow(row)
    training.removeCaseButton.click()
    assert len(training.cases) == 1 and training.casesTable.rowCount == 1
    training.checkButton.click()
    assert "Error" not in training.checksLabel.text, training.checksLabel.text


def test_adding_the_case_again_replaces_the_marked_row(scene, training, hippocampus_cases):
    (volume, segmentation), _other = _pair_two(scene, training, hippocampus_cases)
    row = _row_of(training, segmentation)
    scene.RemoveNode(volume)
    again = load_volume(hippocampus_cases[0][0], "hippocampus_001 again")
    training.selectCase(again, segmentation)
    training.addCurrentButton.click()
    assert len(training.cases) == 2 and training.cases[row].volume is again
    assert "deleted" not in training.casesTable.item(row, 0).text()


def test_closing_the_scene_empties_the_table(scene, training, hippocampus_cases, runs_root):
    from MICDTrainingLib.DatasetExport import FileCase

    times = CallbackTimes()
    times.watch(training)
    _pair_two(scene, training, hippocampus_cases)
    training.checkButton.click()
    files = FileCase(*hippocampus_cases[2])  # files on disk are not the scene's: they stay
    training.addCase(files)
    assert training.casesTable.rowCount == 3

    scene.Clear(0)

    times.assert_fast()
    assert training.cases == [files] and training.casesTable.rowCount == 1
    assert "closed" in training.logText.toPlainText()
    assert training.report is None
    training.casesTable.selectRow(0)
    training.removeCaseButton.click()
    assert training.casesTable.rowCount == 0 and not training.trainButton.enabled
    assert _run_folders(runs_root) == []


def test_the_logic_refuses_deleted_nodes_before_making_a_run_folder(scene, hippocampus_cases, runs_root, tmp_path):
    """Defence in depth, for the console and a panel that missed the event: the checks name the case, and the
    export validates every node before it creates any folder, even with an earlier (stale) report."""
    from MICDTrainingLib.DatasetExport import check_cases, export_dataset
    from MICDTrainingLib.Logic import TrainingError, TrainingLogic

    cases = [load_case(scene, *case) for case in hippocampus_cases[:2]]
    report = check_cases(cases)
    assert report.ok, report.text()
    scene.RemoveNode(cases[1][0])

    again = check_cases(cases)
    assert not again.ok and any("hippocampus_003" in e and "deleted" in e for e in again.errors), again.errors
    out = tmp_path / "export"
    with pytest.raises(ValueError, match="hippocampus_003"):
        export_dataset(cases, [], str(out), report=report)
    assert not out.exists()
    with pytest.raises(TrainingError, match="hippocampus_003"):
        TrainingLogic(runs_root=str(runs_root)).train(cases, [], iterations=2)
    assert _run_folders(runs_root) == []


def test_training_observers_go_with_the_module(scene, hippocampus_cases):
    loaded = slicer_harness.load_module("MICDTraining")
    old = loaded.widget.panel.training
    count = len(old.Observations)
    assert count
    reloaded = slicer.util.reloadScriptedModule("MICDTraining")  # the old widget's cleanup runs
    try:
        new = reloaded.widget.panel.training
        assert old.Observations == [] and len(new.Observations) == count
        (volume, segmentation), _other = _pair_two(scene, new, hippocampus_cases)
        old_log = old.logText.toPlainText()
        scene.RemoveNode(volume)
        assert old.logText.toPlainText() == old_log, "a cleaned-up panel no longer reacts"
        assert "deleted" in new.logText.toPlainText()
        assert new.logText.toPlainText().count(volume.GetName() + "' was deleted") == 1, "observed once"
    finally:
        reloaded.unload()
    assert new.Observations == []


# --- the Segment panel --------------------------------------------------------------------------------------------
@pytest.fixture
def segment_panel(scene, tmp_path):
    from MICDSegmentationLib.Widget import SegmentationWidget

    logic = mock.MagicMock(name="SegmentationLogic")
    logic.models.return_value = [ModelInfo(str(tmp_path / "Hippo"), {"labels": {"1": "anterior"}, "method": "micd"})]
    logic.previous_result.return_value = None
    panel = SegmentationWidget(logic, dependency_check=lambda *args, **kwargs: True)
    yield panel, logic
    panel.cleanup()


def test_deleting_the_selected_volume_disables_segment(scene, segment_panel, hippocampus_cases):
    panel, logic = segment_panel
    times = CallbackTimes()
    times.watch(panel)
    volume = load_volume(hippocampus_cases[0][0], "hippo")
    assert panel.volumeSelector.currentNode() is volume and panel.segmentButton.enabled
    scene.RemoveNode(volume)
    times.assert_fast()
    assert panel.volumeSelector.currentNode() is None and not panel.segmentButton.enabled
    panel.onSegment()  # as a click that got through: a sentence, no traceback
    assert DIALOGS.shown[-1].kind == "slicer.util.errorDisplay" and "Select a volume" in DIALOGS.shown[-1].text
    assert not logic.segment.called


def test_deleting_the_volume_being_segmented_cancels_it(scene, segment_panel, hippocampus_cases):
    panel, logic = segment_panel
    times = CallbackTimes()
    times.watch(panel)
    volume = load_volume(hippocampus_cases[0][0], "hippo")
    other = load_volume(hippocampus_cases[1][0], "other")
    panel.volumeSelector.setCurrentNode(volume)
    job = mock.MagicMock(finished=False, backlog=0, volume=volume)
    logic.segment.return_value = job
    panel.segmentButton.click()
    assert logic.segment.call_args[0][0] is volume

    scene.RemoveNode(other)  # another volume: the run goes on
    assert not job.request_cancel.called
    scene.RemoveNode(volume)
    times.assert_fast()
    job.request_cancel.assert_called_once()
    assert "hippo" in panel.statusLabel.text and "deleted" in panel.statusLabel.text
    assert "deleted" in panel.logText.toPlainText()
    assert not panel.cancelButton.enabled  # cancelling already


def test_closing_the_scene_cancels_a_segmentation_and_disables_segment(scene, segment_panel, hippocampus_cases):
    panel, logic = segment_panel
    times = CallbackTimes()
    times.watch(panel)
    volume = load_volume(hippocampus_cases[0][0], "hippo")
    job = mock.MagicMock(finished=False, backlog=0, volume=volume)
    logic.segment.return_value = job
    panel.segmentButton.click()
    scene.Clear(0)
    times.assert_fast()
    job.request_cancel.assert_called_once()
    assert "closed" in panel.statusLabel.text
    job.finished = True
    panel.updateButtons()
    assert panel.volumeSelector.currentNode() is None and not panel.segmentButton.enabled


def test_a_result_for_a_deleted_volume_is_not_imported(scene, hippocampus_cases, tmp_path):
    from MICDSegmentationLib.Logic import SegmentationError, SegmentationJob, SegmentationLogic

    volume = load_volume(hippocampus_cases[0][0], "hippo")
    (tmp_path / "prediction.nrrd").write_bytes(b"")
    job = types.SimpleNamespace(run_dir=str(tmp_path), state=SUCCEEDED)
    model = types.SimpleNamespace(labels={1: "anterior"}, colors={}, path=str(tmp_path), name="Hippo")
    wrapper = SegmentationJob(job, volume, model, None, False, True)
    segmentations = scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    scene.RemoveNode(volume)
    wrapper.conclude(job)
    assert job.state == CANCELLED and "hippo" in wrapper.message and "deleted" in wrapper.message
    assert wrapper.segmentation is None
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == segmentations

    logic = SegmentationLogic(worker=mock.MagicMock(), work_root=str(tmp_path / "work"))
    with pytest.raises(SegmentationError, match="hippo.*deleted"):
        logic.segment(volume, "Hippo")
    assert not (tmp_path / "work").exists()
    assert not logic.worker.submit.called


def test_segment_observers_go_with_the_module(scene, hippocampus_cases):
    loaded = slicer_harness.load_module("MICDSegmentation")
    old = loaded.widget.panel
    assert old.Observations
    reloaded = slicer.util.reloadScriptedModule("MICDSegmentation")
    try:
        assert old.Observations == [] and reloaded.widget.panel.Observations
    finally:
        reloaded.unload()
    assert reloaded.widget.panel.Observations == []
