"""Issue 31 on the Slicer side: one-click segmentation through a warm worker (`micd serve`, MICDCommon/worker.py).

The segment panel's progress bar, Cancel, errors and a worker that dies, with a fake worker (a real subprocess of a
script that speaks micd serve's protocol, so each state can be held as long as a test needs); then the real backend
through the harness: a second segmentation of the same volume lands in the scene in well under the time of the first
(the worker keeps Python, torch and the model loaded), a second model on the same volume too, the console API uses the
same worker, and the worker ends on module exit, after its idle timeout and when the backend Python changes."""

import os
import sys
import time
from unittest import mock

import pytest

from backend_models import make_runnable_model
from conftest import MAIN_WINDOW
from dialogs import DIALOGS
from MICDCommon import CANCELLED, FAILED, SUCCEEDED, BackendLauncher, ModelRegistry
from MICDCommon.contract import MODEL_FORMAT, MODEL_JSON
from scene_helpers import load_volume

FAKE_SERVE = r"""
import json, os, sys, threading, time
def emit(o):
    print(json.dumps(o), flush=True)
cancelled, queue, cv = set(), [], threading.Condition()
def read():
    for line in sys.stdin:
        r = json.loads(line)
        if r.get("command") == "shutdown":
            break
        if r.get("command") == "cancel":
            cancelled.add(r["target"])
            continue
        with cv:
            queue.append(r)
            cv.notify()
    os._exit(0)
threading.Thread(target=read, daemon=True).start()
emit({"event": "ready"})
while True:
    with cv:
        while not queue:
            cv.wait()
        r = queue.pop(0)
    rid, mode = r["id"], open(os.path.join(r["model"], "mode")).read()
    with open(r["input"], "rb") as f:  # the request comes once the input is written whole
        header = f.read(4096)
    if not header.startswith(b"NRRD0004") or b"\n\n" not in header:
        emit({"id": rid, "event": "error", "kind": "data", "hint": "", "message": "the input is incomplete"})
        continue
    if "--fail" in mode:
        print("micd predict: error: --input: the image header declares 9 GiB, 2 GiB are available", file=sys.stderr,
              flush=True)
        emit({"id": rid, "event": "error", "kind": "data", "hint": "",
              "message": "--input: the image header declares 9 GiB, 2 GiB are available"})
        continue
    emit({"id": rid, "event": "plan", "device": "cpu", "grid_shape": [1, 1, 1], "roi": [16, 32, 16]})
    if "--no-output" in mode:
        emit({"id": rid, "event": "done"})  # a success that wrote nothing
        continue
    for done in range(0, 40, 4):
        emit({"id": rid, "event": "progress", "input": "x", "image": 1, "images": 1, "windows_done": done,
              "windows_total": 40, "fraction": done / 40, "elapsed_s": done / 4, "eta_s": 80 - 2 * done})
        time.sleep(0.05)
    if "--crash" in mode:
        print("Fatal Python error: Segmentation fault", file=sys.stderr, flush=True)
        os._exit(139)
    while rid not in cancelled:  # a long volume: the test cancels here
        time.sleep(0.02)
    emit({"id": rid, "event": "error", "kind": "cancelled", "message": "cancelled", "hint": ""})
"""


class FakeBackend(BackendLauncher):
    """Runs a script in place of `python -m micd SUBCOMMAND`, with the same arguments and environment."""

    def __init__(self, script, python=sys.executable):
        super().__init__(python=python)
        self.script = script

    def command(self, subcommand, *args):
        return [sys.executable, "-c", self.script, *[str(a) for a in args]]


def wait_for(condition, job, timeout=120, what="condition", interval=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job.poll()
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def fake_model(tmp_path):
    folder = tmp_path / "models" / "Fake"
    folder.mkdir(parents=True)
    (folder / MODEL_JSON).write_text('{"format": "%s", "labels": {"1": "anterior"}}' % MODEL_FORMAT)
    (folder / "mode").write_text("run")
    from MICDCommon.registry import ModelInfo

    return ModelInfo(str(folder), {"labels": {"1": "anterior"}, "name": "Fake"})


def _mode(model, text):
    with open(os.path.join(model.path, "mode"), "w", encoding="utf-8") as f:
        f.write(text)


def _segment_panel(logic, model):
    from MICDSegmentationLib.Widget import SegmentationWidget

    with mock.patch.object(type(logic), "models", lambda self: [model]):
        panel = SegmentationWidget(logic, dependency_check=lambda then=None: True)
    return panel


def _fake_logic(tmp_path):
    from MICDSegmentationLib.Logic import SegmentationLogic

    return SegmentationLogic(launcher=FakeBackend(FAKE_SERVE), work_root=str(tmp_path / "segment"))


# --- the panel, with a fake worker -----------------------------------------------------------------------------------
def test_progress_bar_follows_the_worker_and_cancel_stops_the_request_not_the_worker(scene, fake_model, tmp_path,
                                                                                     hippocampus_cases):
    logic = _fake_logic(tmp_path)
    panel = _segment_panel(logic, fake_model)
    load_volume(hippocampus_cases[0][0], "hippo")
    panel.segmentButton.click()
    job = panel.job
    assert panel.progressBar.maximum == 0  # busy until the first windows are reported
    wait_for(lambda: job.progress.windows_done == 36, job, 60, "progress events")
    assert (panel.progressBar.maximum, panel.progressBar.value) == (1000, 900)
    assert panel.statusLabel.text == "Segmenting: 36 / 40 windows · 8 s left"
    panel.onTick()  # the elapsed-seconds text is only for the time before the first progress event
    assert panel.statusLabel.text.startswith("Segmenting: 36 / 40")
    worker_pid = logic.worker.pid
    panel.cancelButton.click()
    assert panel.statusLabel.text == "Cancelling..." and not panel.cancelButton.enabled
    wait_for(lambda: job.finished, job, 30, "the cancel")
    assert job.state == CANCELLED and panel.statusLabel.text == "Segmentation cancelled."
    assert panel.progressBar.value == 0 and job.segmentation is None
    assert not os.path.exists(job.run_dir)  # nothing left behind
    assert logic.worker.alive and logic.worker.pid == worker_pid  # the worker stays warm for the next click
    assert panel.segmentButton.enabled and not DIALOGS.shown
    panel.exit()  # leaving the module ends the worker
    assert not logic.worker.alive


def test_a_failed_prediction_reaches_the_user_as_a_dialog(scene, fake_model, hippocampus_cases, tmp_path):
    _mode(fake_model, "--fail")
    logic = _fake_logic(tmp_path)
    panel = _segment_panel(logic, fake_model)
    load_volume(hippocampus_cases[0][0], "hippo")
    panel.segmentButton.click()
    wait_for(lambda: panel.job.finished, panel.job, 60, "the failure")
    (dialog,) = DIALOGS.shown
    assert dialog.kind == "slicer.util.errorDisplay" and dialog.parent == MAIN_WINDOW
    assert "image header declares 9 GiB" in dialog.text
    assert panel.progressBar.value == 0 and panel.segmentButton.enabled and logic.worker.alive
    panel.cleanup()
    assert not logic.worker.alive


def test_the_input_is_written_off_the_main_thread_and_a_failed_write_is_said(scene, fake_model, tmp_path,
                                                                             hippocampus_cases, monkeypatch):
    """The volume is written in a thread (volumefile) and the request sent once it is there; a write that fails
    (a full disk) fails the request with the reason, and the worker never hears of it."""
    from MICDCommon import volumefile

    logic = _fake_logic(tmp_path)
    panel = _segment_panel(logic, fake_model)
    load_volume(hippocampus_cases[0][0], "hippo")

    def full_disk(*_args):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(volumefile, "write_snapshot", full_disk)
        panel.segmentButton.click()
        wait_for(lambda: panel.job.finished, panel.job, 60, "the failed write")
    assert panel.job.state == FAILED
    (dialog,) = DIALOGS.shown
    assert "Could not write the input" in dialog.text and "No space left on device" in dialog.text
    DIALOGS.reset()
    panel.segmentButton.click()  # the next click writes, and the worker answers
    job = panel.job
    wait_for(lambda: job.progress.windows_done == 36, job, 60, "progress")
    job.cancel()
    assert job.state == CANCELLED and not DIALOGS.shown
    panel.cleanup()


def test_cancel_before_the_request_is_sent_never_reaches_the_worker(scene, fake_model, tmp_path, hippocampus_cases):
    logic = _fake_logic(tmp_path)
    panel = _segment_panel(logic, fake_model)
    load_volume(hippocampus_cases[0][0], "hippo")
    panel.segmentButton.click()
    job = panel.job
    panel.cancelButton.click()  # before any poll: the input may be written, the request is not sent
    wait_for(lambda: job.finished, job, 30, "the cancel")
    assert job.state == CANCELLED and job.job.events == [] and not DIALOGS.shown
    assert logic.worker.alive  # and was never asked: no answer came (events)
    panel.cleanup()


def test_a_success_without_its_output_is_a_failure(scene, fake_model, tmp_path, hippocampus_cases):
    _mode(fake_model, "--no-output")
    logic = _fake_logic(tmp_path)
    finished = []
    job = logic.segment(load_volume(hippocampus_cases[0][0], "hippo"), fake_model, on_finished=finished.append)
    wait_for(lambda: job.finished, job, 60, "the prediction")
    assert job.state == FAILED and finished == [job]
    assert job.message.startswith(f"micd predict ended without writing {job.output_path}")
    assert os.path.isdir(job.run_dir)  # the folder of a failure is kept
    assert job.segmentation is None and not DIALOGS.shown
    logic.shutdown_worker()


def test_a_worker_that_dies_mid_request_gives_a_message_and_the_next_click_works(scene, fake_model, tmp_path,
                                                                                  hippocampus_cases):
    _mode(fake_model, "--crash")
    logic = _fake_logic(tmp_path)
    panel = _segment_panel(logic, fake_model)
    load_volume(hippocampus_cases[0][0], "hippo")
    panel.segmentButton.click()
    wait_for(lambda: panel.job.finished, panel.job, 60, "the crash")
    assert panel.job.state == FAILED and logic.worker.starts == 1
    (dialog,) = DIALOGS.shown
    assert "The MICD worker stopped (exit code 139)" in dialog.text and "Segmentation fault" in dialog.text
    assert "Segment again" in dialog.text and panel.segmentButton.enabled
    DIALOGS.reset()
    _mode(fake_model, "run")
    panel.segmentButton.click()  # a new worker starts by itself
    job = panel.job
    wait_for(lambda: job.progress.windows_done == 36, job, 60, "progress from the new worker")
    assert logic.worker.starts == 2 and logic.worker.alive
    job.cancel()
    assert job.state == CANCELLED and not DIALOGS.shown
    panel.cleanup()


def test_the_worker_ends_when_idle_and_when_the_backend_python_changes(scene, fake_model, tmp_path,
                                                                      hippocampus_cases):
    from MICDSegmentationLib.Logic import SegmentationLogic

    _mode(fake_model, "--no-output")
    chosen = [sys.executable]  # the Python setting, as the launcher reads it at each use
    logic = SegmentationLogic(launcher=FakeBackend(FAKE_SERVE, python=lambda: chosen[0]),
                              work_root=str(tmp_path / "segment"), idle_timeout_s=0.5)
    volume = load_volume(hippocampus_cases[0][0], "hippo")
    job = logic.segment(volume, fake_model)
    wait_for(lambda: job.finished, job, 60, "the request")
    assert logic.worker.alive
    wait_for(lambda: not logic.worker.alive, logic.worker, 10, "the idle timeout")
    job = logic.segment(volume, fake_model)  # and the next request starts a new one
    wait_for(lambda: job.finished, job, 60, "the request")
    assert logic.worker.starts == 2 and logic.worker.alive
    logic.worker.idle_timeout_s = 600
    chosen[0] = "/another/python"  # the user chose another Python in the settings
    logic.worker.poll()
    assert not logic.worker.alive  # given back at once, not after the idle timeout
    logic.shutdown_worker()


# --- the real backend -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("worker-models")
    return (make_runnable_model(root / "a", "Hippo"),
            make_runnable_model(root / "b", "Hippo flipped", labels={1: "posterior", 2: "anterior"}))


def _segment_and_time(panel, logic):
    """Click Segment; the seconds until the segmentation node is in the scene (polled as the panel's 50 ms timer)."""
    t = time.perf_counter()
    panel.segmentButton.click()
    job = panel.job
    wait_for(lambda: job.finished, job, 180, "the segmentation", interval=0.05)
    assert job.state == SUCCEEDED, job.message
    return time.perf_counter() - t, job


def test_real_worker_second_click_lands_fast_and_console_shares_the_worker(scene, hippocampus_cases, tmp_path,
                                                                          two_models):
    from MICDSegmentationLib.Logic import SegmentationLogic
    from MICDSegmentationLib.Widget import SegmentationWidget

    registry = ModelRegistry(tmp_path / "models")
    first_model = registry.add_folder(str(two_models[0]), "Hippo")
    registry.add_folder(str(two_models[1]), "Hippo flipped")
    logic = SegmentationLogic(launcher=BackendLauncher(python=sys.executable, threads=2), registry=registry,
                              work_root=str(tmp_path / "segment"))
    replaced = []  # the second click asks whether to replace the first result: yes, as one segmenting again would
    panel = SegmentationWidget(logic, dependency_check=lambda then=None: True, ask_replace=lambda node: replaced.append(node) or True)
    try:
        panel.modelList.setCurrentRow([m.name for m in panel.models].index("Hippo"))
        volume = load_volume(hippocampus_cases[0][0], "hippo")
        panel.deviceCombo.setCurrentIndex(panel.deviceCombo.findText("cpu"))
        cold, job1 = _segment_and_time(panel, logic)  # starts the worker: Python, torch, MONAI, the model
        warm, job2 = _segment_and_time(panel, logic)
        panel.modelList.setCurrentRow([m.name for m in panel.models].index("Hippo flipped"))
        other, job3 = _segment_and_time(panel, logic)
        assert logic.worker.starts == 1 and len(replaced) == 2  # one worker served all three clicks
        for job in (job1, job2, job3):
            assert job.segmentation is not None and job.segmentation.GetAttribute("MICD.SourceVolume") == volume.GetID()
        assert job3.segmentation is job1.segmentation  # replaced in place
        seg = job3.segmentation.GetSegmentation()
        assert sorted(seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())) == \
            ["anterior", "posterior"]
        # Issue 31 asks < 1.0 s (same model) and < 1.5 s (another model) on 2 quiet cores; speed_benchmark.py records
        # those. The suite runs beside another test worker, which slows the prediction itself, so here the time
        # around the prediction is held to that bar: click to node minus the seconds the worker spent predicting.
        overhead = [t - next(e["seconds"] for e in job.job.events if e["event"] == "prediction")
                    for t, job in ((cold, job1), (warm, job2), (other, job3))]
        assert overhead[1] < 1.0 and overhead[2] < 1.5 and overhead[0] > overhead[1], (cold, warm, other, overhead)
        # the console API goes through the same worker
        console = logic.segment(volume, first_model, wait=True, device="cpu", timeout=120)
        assert console.segmentation is not None and logic.worker.starts == 1 and not DIALOGS.shown
    finally:
        panel.cleanup()
    assert not logic.worker.alive


def test_real_prediction_drives_the_progress_bar(scene, hippocampus_cases, tmp_path, two_models):
    from MICDSegmentationLib.Logic import SegmentationLogic
    from MICDSegmentationLib.Widget import SegmentationWidget

    registry = ModelRegistry(tmp_path / "models")
    model = registry.add_folder(str(two_models[0]), "Hippo")
    logic = SegmentationLogic(launcher=BackendLauncher(python=sys.executable, threads=1), registry=registry,
                              work_root=str(tmp_path / "segment"))
    panel = SegmentationWidget(logic, dependency_check=lambda then=None: True)
    assert panel.selectedModel().path == model.path
    volume = load_volume(hippocampus_cases[0][0], "hippo")
    panel.deviceCombo.setCurrentIndex(panel.deviceCombo.findText("cpu"))
    seen = []
    panel.progressBar.connect("valueChanged(int)", lambda value: seen.append(value))
    panel.segmentButton.click()
    job = panel.job
    wait_for(lambda: job.finished, job, 180, "the prediction")
    assert job.state == SUCCEEDED, job.message
    assert job.progress.windows_total > 0 and job.progress.windows_done == job.progress.windows_total
    assert 1000 in seen  # the bar reached the end from predict's own last progress event
    assert panel.progressBar.value == panel.progressBar.maximum
    assert job.segmentation.GetName() == "hippo segmentation" and panel.statusLabel.text.startswith("Segmented hippo")
    assert volume.GetID() == job.segmentation.GetAttribute("MICD.SourceVolume") and not DIALOGS.shown
    panel.cleanup()
