"""Issue 10 on the Slicer side: the training panel's time budget (the main setting; iterations under Advanced win
when set), the plan of the run from its `start` event, a budget error reaching the user as a dialog. Real `micd`
subprocesses where they are cheap. (The segment panel's progress and Cancel: test_segment_worker.py.)"""

import json
import sys
import time
from unittest import mock

import pytest
import qt
import slicer

from conftest import MAIN_WINDOW
from dialogs import DIALOGS
from fake_logic import starts_at_once
from MICDCommon import CANCELLED, BackendLauncher, ModelRegistry, processes
from MICDCommon.events import plan_text
from scene_helpers import load_case

# the start event of a real `micd train --time-budget 40s` (hippocampus, patch 16x32x16, 4 filters, CPU)
BUDGET_START = {
    "event": "start", "method": "micd", "device": "cpu", "labeled": 2, "unlabeled": 2, "validation": 1,
    "iterations": 24, "start_iter": 0, "resumed": False, "patch_size": [16, 32, 16], "amp": "bfloat16",
    "precision": "bf16", "precision_reason": "bf16 autocast: this CPU has AMX/AVX512-BF16, where bf16 is about twice "
    "as fast (--amp off for fp32)", "time_budget": "40s", "time_budget_s": 40.0, "eta_s": 19.3,
    "expected_total_s": 37.5, "sec_per_iter_expected": 0.5783,
    "budget_plan": {"planned_iterations": True, "calibration": {"sec_per_iter": 0.5783}, "note": "24 iterations fit"}}
TINY = dict(patch_size=(16, 32, 16), filters=4, device="cpu", checkpoint_every=5, threads=1)


def wait_for(condition, job, timeout=120, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job.poll()
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def launcher():
    return BackendLauncher(python=sys.executable, threads=1)


@pytest.fixture
def mock_training_panel(scene):
    from MICDTrainingLib.DatasetExport import DatasetReport
    from MICDTrainingLib.Widget import TrainingWidget

    logic = mock.MagicMock(name="TrainingLogic")
    logic.check.return_value = DatasetReport()
    logic.runs_to_attach.return_value = []
    logic.resumable_runs.return_value = []
    logic.models.return_value = []
    return TrainingWidget(logic, dependency_check=lambda then=None: True), logic


def test_time_budget_is_the_main_setting_and_iterations_set_under_advanced_win(mock_training_panel):
    panel, logic = mock_training_panel
    training, form = panel.training, panel.training.form
    settings = training.settings()
    assert settings.time_budget == "30m" and settings.iterations is None  # the defaults
    assert form.timeBudgetCombo.currentText == "30m" and form.iterationsSpin.text == "auto (time budget)"
    assert form.iterationsSpin.parentWidget() == form.advancedBox  # iterations live under Advanced
    args = settings.cli_args()
    assert args[args.index("--time-budget") + 1] == "30m" and "--iterations" not in args
    assert "within 30m" in training.planLabel.text

    form.timeBudgetCombo.setCurrentText("2 h")
    assert training.settings().cli_args()[training.settings().cli_args().index("--time-budget") + 1] == "2h"
    assert "within 2 h" in training.planLabel.text
    form.iterationsSpin.value = 300
    args = training.settings().cli_args()
    assert args[args.index("--iterations") + 1] == "300" and "--time-budget" in args  # the count wins, ETA stays
    assert training.planLabel.text.startswith("Plan: 300 iterations")

    form.timeBudgetCombo.setCurrentText("soon")
    assert training.planLabel.text == "Time budget 'soon': expected a duration such as 90s, 45m, 2h or 1h30m."
    assert training.settings().problems() == [training.planLabel.text]
    form.timeBudgetCombo.setCurrentText("")
    assert not training.settings().problems()  # iterations alone are enough
    form.iterationsSpin.value = 0
    assert training.settings().problems() == ["Give a time budget (e.g. 45m or 2h) or, under Advanced, an iteration "
                                           "count."]

    form.timeBudgetCombo.setCurrentText("45m")
    form.save()  # kept between sessions
    from MICDTrainingLib.Widget import TrainingWidget

    again = TrainingWidget(logic, dependency_check=lambda then=None: True)
    stored = again.training.settings()
    assert stored.time_budget == "45m" and stored.iterations is None


def test_settings_stored_before_the_time_budget_existed_keep_only_chosen_iterations(mock_training_panel):
    from MICDTrainingLib.Widget import SETTINGS_KEY, TrainingWidget

    _panel, logic = mock_training_panel
    qt.QSettings().setValue(SETTINGS_KEY, json.dumps({"model_name": "Old", "iterations": 6000}))
    old_default = TrainingWidget(logic, dependency_check=lambda then=None: True)  # kept until the scene is released
    stored = old_default.training.settings()
    assert (stored.iterations, stored.time_budget) == (None, "30m")  # the old default was no choice
    qt.QSettings().setValue(SETTINGS_KEY, json.dumps({"model_name": "Old", "iterations": 2000}))
    chosen = TrainingWidget(logic, dependency_check=lambda then=None: True)
    assert chosen.training.settings().iterations == 2000


def test_the_plan_of_the_start_event_is_shown_with_precision_and_why(mock_training_panel, hippocampus_cases):
    from MICDCommon.events import TrainingProgress

    panel, logic = mock_training_panel
    training, form = panel.training, panel.training.form
    load_case(slicer.mrmlScene, *hippocampus_cases[0])
    training.autoPairButton.click()
    job = mock.MagicMock(finished=False, backlog=0, progress=TrainingProgress())
    starts_at_once(logic, job)
    training.trainButton.click()
    assert training.planLabel.text == "Plan: calibrating (a few timed steps)..."
    job.progress.update(BUDGET_START)
    training.onEvent(BUDGET_START)
    text = training.planLabel.text
    assert text == plan_text(BUDGET_START)
    assert text.startswith("Plan: 24 iterations x 0.58 s, about 19 s to go (count planned for the 40s budget)")
    assert "Precision: bf16 autocast: this CPU has AMX/AVX512-BF16" in text
    form.timeBudgetCombo.setCurrentText("1h")  # editing the settings during a run leaves its plan shown
    assert training.planLabel.text == text

    fixed = dict(BUDGET_START, iterations=500, expected_total_s=300.0,
                 budget_plan={"planned_iterations": False}, precision="fp32",
                 precision_reason="fp32: this CPU has no AMX/AVX512-BF16")
    assert "(over the 40s budget: the iteration count was set). Precision: fp32: this CPU has no AMX" in \
        plan_text(fixed)
    no_budget = {"event": "start", "iterations": 6000, "precision": "fp16", "precision_reason": "fp16 AMP on CUDA"}
    assert plan_text(no_budget) == "Plan: 6000 iterations. Precision: fp16 AMP on CUDA"


def test_real_budgeted_run_shows_its_plan_and_cancels(scene, launcher, hippocampus_cases, tmp_path):
    """`micd train --time-budget` through the panel: the calibrated plan appears when the start event arrives."""
    from MICDTrainingLib.Logic import TrainingLogic
    from MICDTrainingLib.Widget import TrainingWidget

    for image, label in hippocampus_cases[:3]:
        load_case(scene, image, label)
    logic = TrainingLogic(launcher=launcher, registry=ModelRegistry(tmp_path / "models"),
                          runs_root=str(tmp_path / "runs"))
    panel = TrainingWidget(logic, dependency_check=lambda then=None: True)
    training, form = panel.training, panel.training.form
    training.autoPairButton.click()
    form.timeBudgetCombo.setCurrentText("10m")
    form.patchEdit.text = "16 32 16"
    form.filtersSpin.value = 4
    form.deviceCombo.setCurrentIndex(form.deviceCombo.findText("cpu"))
    form.methodCombo.setCurrentIndex(form.methodCombo.findData("supervised"))
    training.trainButton.click()
    assert training.starting.wait(60)  # the cases' files, written in a worker thread
    job = training.job
    assert job is not None and "--time-budget" in job.job.record.command
    wait_for(lambda: job.progress.start is not None or job.finished, job, 180, "the start event")
    start = job.progress.start
    assert start is not None, job.message
    assert start["time_budget"] == "10m" and start["budget_plan"]["planned_iterations"] is True
    text = training.planLabel.text
    assert text.startswith(f"Plan: {start['iterations']} iterations x {start['sec_per_iter_expected']:.2f} s")
    assert "(count planned for the 10m budget)" in text and f"Precision: {start['precision_reason']}" in text
    assert any("Plan:" in line for line in training.logText.toPlainText().splitlines())  # the log has it too
    training.cancelButton.click()
    wait_for(lambda: job.finished, job, 60, "the cancel")
    assert job.state == CANCELLED and not processes.is_alive(job.job.pid)
    assert not DIALOGS.shown  # a cancel is no error


def test_real_budget_error_reaches_the_user_as_a_dialog(scene, launcher, hippocampus_cases, tmp_path):
    from MICDTrainingLib.Logic import TrainingLogic
    from MICDTrainingLib.Widget import TrainingWidget

    for image, label in hippocampus_cases[:3]:
        load_case(scene, image, label)
    logic = TrainingLogic(launcher=launcher, registry=ModelRegistry(tmp_path / "models"),
                          runs_root=str(tmp_path / "runs"))
    panel = TrainingWidget(logic, dependency_check=lambda then=None: True)
    training, form = panel.training, panel.training.form
    training.autoPairButton.click()
    form.timeBudgetCombo.setCurrentText("1s")  # start-up alone takes longer
    form.patchEdit.text = "16 32 16"
    form.filtersSpin.value = 4
    form.deviceCombo.setCurrentIndex(form.deviceCombo.findText("cpu"))
    form.methodCombo.setCurrentIndex(form.methodCombo.findData("supervised"))
    training.trainButton.click()
    assert training.starting.wait(60)  # the cases' files, written in a worker thread
    job = training.job
    wait_for(lambda: job.finished, job, 180, "the budget error")
    assert job.state == "failed" and job.job.returncode == 2
    assert job.job.error_event["kind"] == "budget"
    (dialog,) = DIALOGS.shown
    assert dialog.kind == "slicer.util.errorDisplay" and dialog.parent == MAIN_WINDOW
    assert "--time-budget 1s" in dialog.text and "What to do: give a longer --time-budget" in dialog.text
    assert training.trainButton.enabled and not training.cancelButton.enabled
