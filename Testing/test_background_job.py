"""A real background job: `micd train` on real hippocampus cases exported from the scene, followed through its
events, reattached from a new runner, cancelled (whole tree, checkpoint kept), resumed; a short run that succeeds
registers its model (and, when `micd predict` is available, segments a volume with it)."""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from MICDCommon import CANCELLED, SUCCEEDED, BackendLauncher, BackgroundJob, processes, sceneio
from MICDCommon.contract import CHECKPOINTS_DIR, EVENTS_FILE, LAST_CHECKPOINT
from MICDSegmentationLib.Logic import SegmentationLogic
from MICDTrainingLib.Logic import TrainingLogic
from scene_helpers import load_case

TINY = dict(patch_size=(16, 32, 16), filters=4, device="cpu", checkpoint_every=5, threads=1)


def wait_until(condition, job, timeout=120, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job.poll()
        if condition():
            return
        if job.finished:
            raise AssertionError(f"job ended ({job.state}) before {what}: {getattr(job, 'message', '')}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def launcher():
    return BackendLauncher(python=sys.executable, threads=1)


@pytest.fixture
def unlabeled_folder(tmp_path, hippocampus_cases):
    folder = tmp_path / "unlabeled"
    folder.mkdir()
    for image, _label in hippocampus_cases[10:13]:
        os.symlink(image, folder / image.name)
    return folder


def test_tree_cancel_kills_grandchildren(tmp_path):
    script = textwrap.dedent("""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        print("grandchild", child.pid, flush=True)
        time.sleep(120)
    """)
    job = BackgroundJob.start([sys.executable, "-c", script], str(tmp_path / "run"), kind="test")
    lines = []
    job.on_log = lines.append
    wait_until(lambda: any(line.startswith("grandchild") for line in lines), job, 30, "the grandchild")
    grandchild = int(next(line for line in lines if line.startswith("grandchild")).split()[1])
    assert processes.is_alive(grandchild)
    assert job.cancel(grace_s=5) == CANCELLED
    time.sleep(0.2)
    assert not processes.is_alive(job.pid) and not processes.is_alive(grandchild)


def test_real_training_reattach_cancel_resume(scene, launcher, unlabeled_folder, hippocampus_cases, monkeypatch):
    cases = [load_case(scene, image, label) for image, label in hippocampus_cases[:4]]
    log = []
    logic = TrainingLogic(launcher=launcher)
    job = logic.train(cases, [str(unlabeled_folder)], model_name="Hippo run", iterations=5000, on_log=log.append,
                      **TINY)
    wait_until(lambda: job.progress.last_checkpoint is not None and job.progress.iteration >= 6, job, 120,
               "a checkpoint")
    assert job.progress.start["labeled"] + job.progress.start["validation"] == 4
    assert job.progress.start["unlabeled"] == 3
    assert job.progress.loss_history and "total" in job.progress.loss_history[-1][1]
    assert "Iteration" in job.progress.status_text() and any("Started micd training" in line for line in log)
    run_dir, pid = job.run_dir, job.job.pid

    # a new logic and runner (as after a module reload or a Slicer restart) finds the job and keeps reading it
    other = TrainingLogic(launcher=launcher)
    assert run_dir in other.runs_to_attach()
    attached = other.attach(run_dir)
    attached.poll()
    assert attached.progress.start is not None  # replayed from the beginning
    seen = job.progress.iteration
    wait_until(lambda: attached.progress.iteration >= seen + 3, attached, 60, "new iterations after reattaching")
    tree = [pid] + processes.descendants(pid)

    assert attached.cancel() == CANCELLED
    assert not any(processes.is_alive(p) for p in tree) and not processes.group_members(pid)
    assert os.path.isfile(os.path.join(run_dir, CHECKPOINTS_DIR, LAST_CHECKPOINT))
    assert attached.job.events[-1]["event"] == "error" and attached.job.events[-1]["kind"] == "cancelled"
    assert "checkpoint of iteration" in attached.message
    job.poll()  # the first runner (the process's parent) sees the end too
    assert job.state == CANCELLED and job.job.returncode == 3

    assert run_dir in other.resumable_runs()
    stopped_at = attached.job.events[-1].get("iter") or attached.progress.last_checkpoint[1]
    resumed = other.resume(run_dir)
    wait_until(lambda: resumed.progress.iteration > stopped_at, resumed, 120, "iterations after resuming")
    assert resumed.progress.start["resumed"] is True

    # as on Windows, where no signal reaches a process without our console: the stop file alone stops it politely
    monkeypatch.setattr(processes, "request_stop", lambda pid: [pid] + processes.descendants(pid))
    assert resumed.cancel() == CANCELLED and resumed.job.returncode == 3
    last = resumed.job.events[-1]
    assert last["kind"] == "cancelled" and "stop file" in last["message"]
    assert resumed.progress.last_checkpoint[1] > stopped_at  # the checkpoint of the stop, kept for the next resume


def _predict_available():
    result = subprocess.run([sys.executable, "-m", "micd", "predict", "--help"], capture_output=True, encoding="utf-8", errors="replace")
    return result.returncode == 0


def test_short_training_registers_model_then_segments(scene, launcher, unlabeled_folder, hippocampus_cases):
    cases = [load_case(scene, image, label, colors={1: (1.0, 0.5, 0.0)}) for image, label in hippocampus_cases[:3]]
    logic = TrainingLogic(launcher=launcher)
    job = logic.train(cases, [str(unlabeled_folder)], model_name="Hippo quick", iterations=10, **TINY)
    twin = TrainingLogic(launcher=launcher).attach(job.run_dir)  # e.g. a panel from before a module reload
    assert job.wait(timeout=120) == SUCCEEDED and twin.wait(timeout=30) == SUCCEEDED
    assert twin.model.path == job.model.path  # registered once, whoever saw the end first
    assert job.model is not None and job.model.name == "Hippo quick"
    assert job.model.labels == {1: "anterior", 2: "posterior"}
    assert job.model.colors[1] == (1.0, 0.5, 0.0)  # the clinician's segment colour travels with the model
    assert [m.name for m in logic.registry.models()] == ["Hippo quick"]
    assert logic.runs_to_attach() == [] and logic.resumable_runs() == []

    assert _predict_available(), "`micd predict` does not run with this backend"
    volume = cases[0][0]
    segmentation_logic = SegmentationLogic(launcher=launcher, registry=logic.registry)
    log = []
    result = segmentation_logic.segment(volume, "Hippo quick", wait=True, device="cpu", uncertainty=True, timeout=120,
                                        on_log=log.append)
    node = result.segmentation
    assert any(line.startswith("Segmenting on cpu") for line in log), log
    assert result.uncertainty is not None and result.uncertainty.GetName() == f"{volume.GetName()} uncertainty"
    assert sceneio.same_grid(result.uncertainty, volume)
    assert node.GetName() == f"{volume.GetName()} segmentation"
    seg = node.GetSegmentation()
    assert sorted(seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())) == ["anterior",
                                                                                                 "posterior"]


def test_reused_pid_is_not_taken_for_the_job():
    marker = processes.start_marker(os.getpid())
    assert processes.is_same_process(os.getpid(), marker)
    assert not processes.is_same_process(os.getpid(), marker.split(":")[0] + ":1")


def test_event_tail_waits_for_complete_lines(tmp_path):
    from MICDCommon.events import EventTail, TrainingProgress

    path = tmp_path / EVENTS_FILE
    path.write_text('{"event": "start", "iterations": 10}\n{"event": "iteration", "iter": 3, "tot')
    tail, progress = EventTail(str(path)), TrainingProgress()
    events = tail.read_new()
    assert [e["event"] for e in events] == ["start"]
    with open(path, "a") as f:
        f.write('al": 10, "eta_s": 70, "loss": {"total": 0.5}}\nnot json\n')
    events += tail.read_new()
    for event in events:
        progress.update(event)
    assert progress.iteration == 3 and progress.fraction == 0.3
    assert progress.status_text() == "Iteration 3 / 10 · 1 min 10 s left · loss 0.500"


def test_run_folder_lock_tells_running_from_lost(tmp_path):
    """The trainer's lock on RUN_DIR/train.lock (the backend's RunLock) overrides what the process id suggests."""
    from MICDCommon import runlock
    from MICDCommon.jobs import JobRecord

    run_dir = str(tmp_path / "run")
    assert runlock.probe(run_dir) is None  # no trainer ever ran here
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        from micd.training.runlock import RunLock
        lock = RunLock(sys.argv[1]).acquire()
        print("locked", flush=True)
        sys.stdin.readline()
        lock.release()
        print("released", flush=True)
        time.sleep(120)
    """), run_dir], stdin=subprocess.PIPE, stdout=subprocess.PIPE, encoding="utf-8", errors="replace")
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert runlock.probe(run_dir) == (True, holder.pid)
        marker = processes.start_marker(holder.pid)
        # the process id alone would call it gone (as when a pid was reused), the held lock says running
        assert JobRecord("train", ["micd"], run_dir, pid=holder.pid, start_marker=marker.split(":")[0] + ":1"
                         ).process_running()
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "released"
        # the process still lives, but the trainer it recorded has let the lock go: not running (lost or ended)
        assert runlock.probe(run_dir) == (False, holder.pid) and processes.is_alive(holder.pid)
        assert not JobRecord("train", ["micd"], run_dir, pid=holder.pid, start_marker=marker).process_running()
    finally:
        holder.kill()
        holder.wait()


def test_the_saved_record_holds_the_state_conclude_decided(tmp_path):
    """A job's state is decided before its record (job.json) is written: a program that exits 0 without what it was
    to make is a failure, for the panel and for whoever reads the record later (the ranking and training jobs)."""
    from MICDCommon import FAILED
    from MICDCommon.contract import JOB_FILE
    from MICDCommon.jobs import JobRecord, JobWrapper

    class NeedsOutput(JobWrapper):
        def conclude(self, job):
            if job.state == SUCCEEDED and not os.path.exists(os.path.join(job.run_dir, "result.txt")):
                job.state = FAILED
                self.message = "ended without writing result.txt"

    command = [sys.executable, "-c", "import json; print(json.dumps({'event': 'done'}))"]
    finished = []
    job = NeedsOutput(BackgroundJob.start(command, str(tmp_path / "run"), kind="rank"), on_finished=finished.append)
    deadline = time.monotonic() + 60
    while not job.finished and time.monotonic() < deadline:
        job.poll()
        time.sleep(0.05)
    assert job.state == FAILED and job.job.returncode == 0 and finished == [job]
    with open(os.path.join(job.run_dir, JOB_FILE), encoding="utf-8") as f:
        record = json.load(f)
    assert (record["status"], record["returncode"]) == (FAILED, 0) and record["ended"] is not None
    assert JobRecord.load(job.run_dir).status == FAILED


def test_a_conclusion_that_raises_still_ends_the_job_for_its_listeners(tmp_path):
    """Registering a model (or importing a result) can fail in ways nobody foresaw: the job then ends as failed, with
    the reason in the log, and on_finished still runs (the panel would otherwise wait for it forever)."""
    from MICDCommon import FAILED
    from MICDCommon.jobs import JobRecord, JobWrapper

    class Breaks(JobWrapper):
        def conclude(self, job):
            raise OSError("disk gone")

    command = [sys.executable, "-c", "import json; print(json.dumps({'event': 'done'}))"]
    finished, lines = [], []
    job = Breaks(BackgroundJob.start(command, str(tmp_path / "run"), kind="rank"), on_finished=finished.append,
                 on_log=lines.append)
    deadline = time.monotonic() + 60
    while not job.finished and time.monotonic() < deadline:
        job.poll()
        time.sleep(0.05)
    assert job.state == FAILED and finished == [job] and isinstance(job.job.conclusion_error, OSError)
    assert any("disk gone" in line for line in lines) and JobRecord.load(job.run_dir).status == FAILED
