"""Issue 12 on the Slicer side: the training panel's "Suggest next cases" (a real `micd suggest` in the background:
the ranked list with scores, the chosen volume loaded with its prediction as an editable segmentation, which then is
a labeled case) and "Continue from model" (a real `micd train --init-from` a registered model), with their failure
paths reaching the user as dialogs parented to the main window."""

import json
import os
import sys
import time

import pytest
import slicer

from backend_models import make_runnable_model
from conftest import MAIN_WINDOW
from dialogs import DIALOGS
from MICDCommon import CANCELLED, SUCCEEDED, BackendLauncher, ModelRegistry, processes
from scene_helpers import load_case


def wait_for(condition, job, timeout=120, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job.poll()
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def runnable(tmp_path_factory):
    return make_runnable_model(tmp_path_factory.mktemp("runnable") / "model")


@pytest.fixture
def loop(scene, runnable, tmp_path, hippocampus_cases):
    """A training panel on the real logic, a registered runnable model, an unlabeled folder of three volumes."""
    from MICDTrainingLib.Logic import TrainingLogic
    from MICDTrainingLib.Widget import TrainingWidget

    launcher = BackendLauncher(python=sys.executable, threads=1)
    registry = ModelRegistry(tmp_path / "models")
    model = registry.add_folder(str(runnable), "Hippo v1")
    unlabeled = tmp_path / "unlabeled"
    unlabeled.mkdir()
    for image, _label in hippocampus_cases[10:13]:
        os.symlink(image, unlabeled / image.name)
    logic = TrainingLogic(launcher=launcher, registry=registry, runs_root=str(tmp_path / "runs"))
    panel = TrainingWidget(logic, dependency_check=lambda then=None: True)
    training, form = panel.training, panel.training.form
    training.addUnlabeledFolder(str(unlabeled))
    form.deviceCombo.setCurrentIndex(form.deviceCombo.findText("cpu"))
    return panel, logic, model, unlabeled


def test_suggest_ranks_the_unlabeled_volumes_and_loads_one_to_correct(loop, hippocampus_cases):
    panel, logic, model, unlabeled = loop
    training, next_cases = panel.training, panel.nextCases
    assert next_cases.loopModelCombo.currentText == "Hippo v1" and next_cases.suggestButton.enabled
    assert not next_cases.loadSuggestionButton.enabled and not next_cases.cancelSuggestButton.enabled
    next_cases.suggestButton.click()
    job = next_cases.suggestJob
    assert next_cases.cancelSuggestButton.enabled and not next_cases.suggestButton.enabled
    wait_for(lambda: job.finished, job, 180, "the ranking")
    assert job.state == SUCCEEDED, job.message
    with open(job.ranking_path, encoding="utf-8") as f:
        ranking = json.load(f)["ranking"]
    assert len(ranking) == 3 == next_cases.suggestTable.rowCount
    assert [e["score"] for e in ranking] == sorted((e["score"] for e in ranking), reverse=True)
    for row, entry in enumerate(ranking):
        assert entry["rank"] == row + 1 and next_cases.suggestTable.item(row, 0).text() == entry["case"]
        assert next_cases.suggestTable.item(row, 1).text() == f"{entry['score']:.3f}"
        assert next_cases.suggestTable.item(row, 2).text() in ("anterior", "posterior", "-")
    assert next_cases.suggestStatus.text.startswith(f"Ranked 3 volume(s); label {ranking[0]['case']} first")
    assert next_cases.suggestProgress.value == next_cases.suggestProgress.maximum == 1000
    assert job.progress.images == 3 and job.progress.scored == 3
    assert "--predictions" in job.job.record.command and str(unlabeled) in job.job.record.command

    assert next_cases.suggestTable.currentRow() == 0 and next_cases.loadSuggestionButton.enabled
    next_cases.suggestTable.selectRow(1)
    view = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")  # a slice view's layers
    next_cases.loadSuggestionButton.click()
    volume, segmentation = training.volumeSelector.currentNode(), training.segmentationSelector.currentNode()
    assert view.GetBackgroundVolumeID() == volume.GetID()  # shown, to correct
    assert volume.GetName() == ranking[1]["case"]
    assert os.path.abspath(volume.GetStorageNode().GetFileName()) == ranking[1]["file"]
    seg = segmentation.GetSegmentation()
    assert sorted(seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())) == ["anterior",
                                                                                                 "posterior"]
    assert segmentation.GetAttribute("MICD.SourceVolume") == volume.GetID()
    assert segmentation.GetAttribute("MICD.Model") == model.path
    # the segmentation holds the prediction's voxels, on the volume's grid: correcting it is the annotation
    import numpy as np

    predicted = slicer.util.arrayFromVolume(_loaded_label(ranking[1]["prediction"]))
    for i in range(seg.GetNumberOfSegments()):
        segment_id = seg.GetNthSegmentID(i)
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, volume)
        value = int(seg.GetNthSegment(i).GetLabelValue())
        assert np.array_equal(mask > 0, predicted == value)
    assert "Correct it in the Segment Editor" in next_cases.suggestStatus.text

    nodes = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    next_cases.onLoadSuggestion()  # again: the same nodes (corrections made meanwhile are never overwritten)
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == nodes
    assert training.segmentationSelector.currentNode() is segmentation
    assert next_cases.suggestStatus.text.startswith("Already loaded")
    training.addCurrentButton.click()  # the corrected prediction is a labeled case
    assert [c.segmentation for c in training.cases] == [segmentation]
    assert training.casesTable.item(0, 2).text() == "anterior, posterior"
    assert next_cases.suggestTable.item(1, 0).text() == ranking[1]["case"] + " (labeled)"  # it is one now
    assert next_cases.suggestTable.item(0, 0).text() == ranking[0]["case"] and next_cases.suggestTable.currentRow() == 1
    assert not DIALOGS.shown
    # the same volume suggested by another model: its prediction is a new node; the corrected one stays as it is
    corrected = slicer.vtkSegmentation()
    corrected.DeepCopy(seg)
    other = logic.registry.add_folder(model.path, "Hippo v2")
    volume2, theirs, reused = logic.load_suggestion(ranking[1], other)
    assert volume2 is volume and not reused and theirs is not segmentation
    assert theirs.GetName() == f"{volume.GetName()} segmentation (Hippo v2)"
    assert theirs.GetAttribute("MICD.Model") == other.path and segmentation.GetAttribute("MICD.Model") == model.path
    assert segmentation.GetScene() is slicer.mrmlScene and seg.GetNumberOfSegments() == corrected.GetNumberOfSegments()
    assert logic.load_suggestion(ranking[1], other)[1:] == (theirs, True)
    assert logic.load_suggestion(ranking[1], model)[1:] == (segmentation, True)


def _loaded_label(path):
    from MICDCommon import sceneio

    return sceneio.load_volume(path, "check", labelmap=True)


def test_suggest_failures_and_stop_reach_the_user(loop, tmp_path):
    panel, logic, model, unlabeled = loop
    training, next_cases = panel.training, panel.nextCases
    empty = tmp_path / "no images"
    empty.mkdir()
    training.unlabeled = [str(empty)]
    next_cases.suggestButton.click()
    job = next_cases.suggestJob
    wait_for(lambda: job.finished, job, 120, "micd suggest to refuse the folder")
    assert job.state == "failed" and job.job.returncode == 2
    (dialog,) = DIALOGS.shown
    assert dialog.kind == "slicer.util.errorDisplay" and dialog.parent == MAIN_WINDOW
    assert dialog.text.startswith("Ranking failed: ") and "folder holds no image files" in dialog.text.splitlines()[0]
    assert next_cases.suggestTable.rowCount == 0 and next_cases.suggestButton.enabled

    training.unlabeled = []
    next_cases.suggestButton.click()  # nothing to rank: said before anything starts
    assert DIALOGS.shown[-1].text == "Add an unlabeled folder first: its volumes are what gets ranked."

    training.unlabeled = [str(unlabeled)]
    next_cases.suggestButton.click()
    job = next_cases.suggestJob
    next_cases.cancelSuggestButton.click()
    wait_for(lambda: job.finished, job, 60, "the stop")
    assert job.state == CANCELLED and not processes.is_alive(job.job.pid)
    assert next_cases.suggestStatus.text == "Ranking cancelled." and len(DIALOGS.shown) == 2

    next_cases.loopModels, next_cases.suggestions = [], []
    next_cases.loopModelCombo.clear()
    assert not next_cases.suggestButton.enabled and not next_cases.continueButton.enabled
    next_cases.onSuggest()
    assert DIALOGS.shown[-1].text.startswith("No model to rank with")
    assert all(d.parent == MAIN_WINDOW for d in DIALOGS.shown)


def test_continue_from_model_trains_from_its_weights(loop, hippocampus_cases):
    panel, logic, model, _unlabeled = loop
    training, form, next_cases = panel.training, panel.training.form, panel.nextCases
    for image, label in hippocampus_cases[:3]:
        load_case(slicer.mrmlScene, image, label)
    training.autoPairButton.click()
    assert next_cases.continueButton.enabled
    form.modelNameEdit.text = "Hippo v2"
    form.iterationsSpin.value = 3
    form.timeBudgetCombo.setCurrentText("")
    form.patchEdit.text = "16 32 16"
    form.checkpointSpin.value = 5
    form.methodCombo.setCurrentIndex(form.methodCombo.findData("supervised"))
    assert form.filtersSpin.value == 16  # the parent's width (4) is used whatever the panel says
    next_cases.continueButton.click()
    assert training.starting.wait(60)  # the cases' files, written in a worker thread
    job = training.job
    command = job.job.record.command
    assert command[command.index("--init-from") + 1] == model.path
    assert command[command.index("--filters") + 1] == "4" and command[command.index("--iterations") + 1] == "3"
    assert "Continuing from the model 'Hippo v1'" in training.logText.toPlainText()
    wait_for(lambda: job.finished, job, 240, "the warm-started training")
    assert job.state == SUCCEEDED, job.message
    parent = job.model.meta["provenance"]["parent_model"]
    assert os.path.samefile(parent["path"], model.path) and parent["name"] == model.meta.get("name")
    assert next_cases.loopModelCombo.currentText.startswith("Hippo v2")  # the new model is offered next
    assert [m.name for m in next_cases.loopModels] == ["Hippo v2", "Hippo v1"]
    assert not DIALOGS.shown


def test_continue_numbers_the_segments_as_the_model_does(loop, hippocampus_cases, tmp_path):
    """The scene numbers segments in order of first appearance; a model listing the same structures in another order
    and spelling is continued from with its own values, and the exported label maps follow them."""
    import numpy as np
    import SimpleITK as sitk

    panel, logic, _model, _unlabeled = loop
    training, form, next_cases = panel.training, panel.training.form, panel.nextCases
    flipped = logic.registry.add_folder(str(make_runnable_model(tmp_path / "flipped", "Hippo flipped",
                                                                {1: "Posterior", 2: "anterior"})), "Hippo flipped")
    next_cases.refreshLoopModels(select="Hippo flipped")
    image, label = hippocampus_cases[0]
    load_case(slicer.mrmlScene, image, label)  # anterior = 1, posterior = 2, as in the files
    training.autoPairButton.click()
    form.iterationsSpin.value = 2
    form.timeBudgetCombo.setCurrentText("")
    form.patchEdit.text = "16 32 16"
    form.methodCombo.setCurrentIndex(form.methodCombo.findData("supervised"))
    next_cases.continueButton.click()
    assert not DIALOGS.shown
    assert training.starting.wait(60)  # the cases' files, written in a worker thread
    job = training.job
    command = job.job.record.command
    assert command[command.index("--init-from") + 1] == flipped.path
    dataset_file = command[command.index("--dataset") + 1]
    dataset = json.load(open(dataset_file))
    assert dataset["labels"] == {"1": "Posterior", "2": "anterior"}
    assert sorted(dataset["colors"]) == ["1", "2"]  # the scene's colours, under the model's values
    exported_file = os.path.join(os.path.dirname(dataset_file), dataset["labeled"][0]["label"])
    exported = sitk.GetArrayFromImage(sitk.ReadImage(exported_file))
    original = sitk.GetArrayFromImage(sitk.ReadImage(str(label)))
    assert exported.shape == original.shape
    assert np.array_equal(exported == 1, original == 2) and np.array_equal(exported == 2, original == 1)
    wait_for(lambda: job.finished, job, 240, "the warm-started training")
    assert job.state == SUCCEEDED, job.message  # the backend's own label check agrees
    assert job.model.meta["labels"] == {"1": "Posterior", "2": "anterior"}


def test_continue_from_a_model_with_other_labels_is_refused_with_a_dialog(loop, hippocampus_cases, tmp_path):
    panel, logic, _model, _unlabeled = loop
    training, next_cases = panel.training, panel.nextCases
    other = logic.registry.add_folder(str(make_runnable_model(tmp_path / "other", "Lungs",
                                                              {1: "left lung", 2: "right lung"})), "Lungs")
    next_cases.refreshLoopModels(select="Lungs")
    load_case(slicer.mrmlScene, *hippocampus_cases[0])
    training.autoPairButton.click()
    next_cases.continueButton.click()
    (dialog,) = DIALOGS.shown
    assert dialog.kind == "slicer.util.errorDisplay" and dialog.parent == MAIN_WINDOW
    assert dialog.text == ("Could not start training: Cannot continue from 'Lungs': its labels (1=left lung, "
                           "2=right lung) differ from the cases' (1=anterior, 2=posterior). Name the segments as the "
                           "model does, or train a new model with Train.")
    assert training.job is None and other.name == "Lungs"
    assert not os.path.isdir(logic.runs_root) or not os.listdir(logic.runs_root)  # nothing was started
