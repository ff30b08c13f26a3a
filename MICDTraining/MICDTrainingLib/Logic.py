"""Training without the GUI: check and export the labeled cases, start `micd train` in the background, follow its
events, reattach or resume later, and register the trained model. Used by the panel and from the Python console.

Talks to the backend only through its command line, its event stream and its model folder."""

import os
import shutil
import threading
import time

from MICDCommon import (CANCELLED, CANCELLING, FAILED, LOST, RUNNING, SUCCEEDED, BackendLauncher, BackgroundJob,
                        EventTail, ModelRegistry, TrainingProgress, find_jobs, micd_home)
from MICDCommon.contract import CHECKPOINTS_DIR, EVENTS_FILE, LAST_CHECKPOINT, MODEL_DIR
from MICDCommon.jobs import JobRecord, JobWrapper, failure_message
from MICDCommon.registry import safe_name
from MICDCommon.threadjob import ThreadJob

from .CasePairing import folder_labels, pair_folder_cases, summarize_unlabeled_folder
from .DatasetExport import ExportCancelled, FileCase, as_cases, check_cases, segment_key, take_export
from .Parameters import TrainingSettings
from .Suggestions import SuggestionError, SuggestJob, load_suggestion, prune_runs, suggestion_command


class TrainingError(Exception):
    """Training could not start or did not finish; the message says why and what to do."""


class TrainingJob(JobWrapper):
    """A training run as the panel and the console see it: the background job, its accumulated progress, and
    the registered model once it succeeded. Call `poll()` (a QTimer does in Slicer) or `wait()`; `cancel()` keeps
    the last checkpoint (see `resume`)."""

    def __init__(self, job, registry, on_event=None, on_log=None, on_finished=None, curves=None):
        super().__init__(job, TrainingProgress(), on_event, on_log, on_finished)
        self.registry = registry
        self.model = None
        self.curves = curves
        self._history = None  # the run's events from before a resume (replay_history), followed a slice at a time

    @property
    def model_name(self):
        return self.job.record.info.get("model_name", os.path.basename(self.run_dir))

    def observe(self, event):
        if self.curves is not None:
            self.curves.add_event(event)

    HISTORY_EVENTS = ("start", "iteration", "validation", "checkpoint")

    def replay_history(self):
        """Follow the events of the iterations before a resume (the resumed job reads only new ones): the progress
        and the curves then start where the run started. Call it before the first poll: the next polls read the
        lines (up to where the job's own reading starts) and follow them, a time slice at a time like the job's
        events (`backlog` counts them), before the job's new events."""
        self._history = EventTail(os.path.join(self.run_dir, EVENTS_FILE), until=self.job.events_offset)

    def _history_backlog(self):
        return self._history.backlog if self._history is not None else 0

    @property
    def backlog(self):
        return self._history_backlog() + self.job.backlog

    def _follow_history(self, event):
        if event.get("event") in self.HISTORY_EVENTS:
            self.progress.update(event)
            self.observe(event)

    def poll(self, time_slice=None):
        """Follow the history (replay_history), then the job's new events; with `time_slice` (seconds) stop when it
        is used up (see BackgroundJob.poll). The curves' table nodes are written once the events read are
        followed, once per poll rather than once per event."""
        deadline = None if time_slice is None else time.monotonic() + time_slice
        replayed = self._history_backlog() > 0
        if replayed:
            self._history.hand_out(self._follow_history, deadline, refill=True)
        if self._history_backlog() or (replayed and deadline is not None and time.monotonic() >= deadline):
            new = []  # the job's own events at the next poll
        else:
            new = self.job.poll(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if self.curves is not None and not self.backlog:
            self.curves.flush()
        return new

    def conclude(self, job):
        if job.state == SUCCEEDED:
            self._register()
        elif job.state == CANCELLED:
            checkpoint = self.progress.last_checkpoint
            self.message = ("Cancelled" + (f"; the checkpoint of iteration {checkpoint[1]} is kept: Resume continues "
                                           "from there." if checkpoint else "."))
        else:
            self.message = failure_message(job, "micd train")

    def _register(self):
        info = self.job.record.info
        try:  # another runner (e.g. a panel from before a module reload) may have registered it already
            info["registered_model"] = JobRecord.load(self.run_dir).info.get("registered_model")
        except Exception:  # noqa: BLE001 - record unreadable: register from this runner's copy
            pass
        if info.get("registered_model") and os.path.isdir(info["registered_model"]):
            self.model = self.registry.get(info["registered_model"])
            self.message = f"Model '{self.model.name}' is ready in MICD Segmentation."
            return
        model_dir = self.progress.model_path or os.path.join(self.run_dir, MODEL_DIR)
        colors = {int(k): v for k, v in (info.get("colors") or {}).items()}
        try:
            # micd train wrote it and said done: the backend's own load of it (seconds, on Slicer's main thread in
            # this callback) would add nothing, and the weights are linked, not copied (150 MB at width 16)
            self.model = self.registry.add_folder(model_dir, self.model_name, colors=colors, backend_check=False,
                                                  link_weights=True)
        except Exception as e:  # noqa: BLE001 - reported, the run folder keeps the model
            self.message = f"Training finished but the model could not be registered: {e}"
            return
        info["registered_model"] = self.model.path
        self.job.record.save()
        self.message = f"Model '{self.model.name}' is ready in MICD Segmentation."


def discard_run_dir(run_dir):
    """Remove a run folder no run has used (its export failed or was cancelled): nothing half-made is left."""
    shutil.rmtree(run_dir, ignore_errors=True)


class _TrainingLaunch:
    """A checked training request: its settings, parent model, check report, run folder and pending export."""

    def __init__(self, settings, parent, report, run_dir, pending):
        self.settings, self.parent, self.report, self.run_dir, self.pending = settings, parent, report, run_dir, pending


class TrainingStart:
    """The panel's Train until `micd train` runs: the cases' files written in a worker thread, then the run started
    on the main thread by the poll that sees the files written (`start(exported)` -> TrainingJob). Polled like a job
    (QtJobPoller); `request_cancel()` stops the writing before the next case, and a cancelled or failed export leaves
    no run folder behind. `state`: running, then succeeded (the run started: `training`), cancelled or failed.

    The worker starts at the first poll (`begin`), which a job poller makes as soon as Qt is idle (`backlog` is 1
    until then), so that it does not compete with the rest of the Train click for the interpreter lock (alone the
    click takes about 20 ms; on a machine loaded by other processes it varied 40-400 ms with or without the
    thread)."""

    def __init__(self, pending, run_dir, start, on_started=None, on_failed=None, on_progress=None):
        self.run_dir = run_dir
        self.count = pending.count
        self.written = 0  # cases written so far (the worker's count; read on the main thread)
        self.state = RUNNING
        self.message = ""
        self.training = None
        self._start, self._on_started, self._on_failed, self._on_progress = start, on_started, on_failed, on_progress
        self._shown = 0
        self._cancel = threading.Event()
        self._pending = pending
        self._writer = None

    def begin(self):
        if self._writer is None:
            pending = self._pending
            self._writer = ThreadJob(lambda: pending.write(progress=self._count, cancelled=self._cancel.is_set),
                                     on_finished=self._written, name="MICD training export")

    @property
    def backlog(self):
        return 1 if self._writer is None and not self.finished else 0

    def _count(self, written, _count):
        self.written = written

    @property
    def finished(self):
        return self.state != RUNNING

    def request_cancel(self):
        self._cancel.set()

    def abandon(self):
        """Cancel without telling anyone (the panel that asked is closing)."""
        self._on_started = self._on_failed = self._on_progress = None
        self._cancel.set()

    def poll(self, time_slice=None):
        self.begin()
        if self._on_progress and self.written != self._shown:
            self._shown = self.written
            self._on_progress(self.written, self.count)
        self._writer.poll()
        return []

    def wait(self, timeout=None):
        """Block until the files are written and the run started (or not); for scripts and tests."""
        self.begin()
        self._writer.wait(timeout)
        return self.finished

    def _end(self, state, message):
        discard_run_dir(self.run_dir)
        self.state, self.message = state, message
        if self._on_failed:
            self._on_failed(self)

    def _written(self, writer):
        if isinstance(writer.error, ExportCancelled) or (writer.error is None and self._cancel.is_set()):
            return self._end(CANCELLED, "Cancelled before training started; no run folder was kept.")
        if writer.error is not None:
            return self._end(FAILED, f"Could not write the training cases: {writer.error}")
        try:
            self.training = self._start(writer.result)
        except Exception as e:  # noqa: BLE001 - e.g. the backend could not be started: said to the user
            return self._end(FAILED, f"Could not start training: {e}")
        self.state = SUCCEEDED
        if self._on_started:
            self._on_started(self.training)


def _same_structures(labels, other):
    """The same structures by name (as segment names are compared), whatever their values and spelling."""
    return sorted(segment_key(n) for n in labels.values()) == sorted(segment_key(n) for n in other.values())


def _fits(file_labels, model_labels):
    """Label files carry their values: they can only follow a model that gives those names the same values."""
    model = {int(v): segment_key(n) for v, n in model_labels.items()}
    return all(model.get(int(v)) == segment_key(n) for v, n in (file_labels or {}).items() if int(v) != 0)


def _label_list(labels):
    return "(" + ", ".join(f"{v}={n}" for v, n in sorted(labels.items())) + ")"


class TrainingLogic:
    """Console and panel entry point for training.

    launcher: which Python runs the backend (BackendLauncher); registry: where models go; runs_root: where run
    folders go; job_poller: object with add(job) that polls running jobs (a Qt timer in Slicer; None: the caller
    polls, as tests and `wait=True` do)."""

    def __init__(self, launcher=None, registry=None, runs_root=None, job_poller=None):
        home = micd_home()
        self.launcher = launcher or BackendLauncher()
        self.registry = registry or ModelRegistry(os.path.join(home, "models"), launcher=self.launcher)
        self.runs_root = runs_root or os.path.join(home, "runs")
        self.job_poller = job_poller

    # --- checks and export --------------------------------------------------------------------------------------
    @staticmethod
    def cases_from_folder(folder):
        """Labeled file cases of a folder and their label names: (cases, {value: name}, unpaired file names).
        Raises CasePairing.LabelNamesError when the folder's dataset.json cannot be read."""
        pairs, unpaired = pair_folder_cases(folder)
        return [FileCase(i, l) for i, l in pairs], folder_labels(folder, pairs), unpaired

    def check(self, labeled, unlabeled=(), settings=None, file_labels=None):
        """All pre-training checks: labeled cases (names, values, geometry), unlabeled folders, settings."""
        report = check_cases(labeled, file_labels=file_labels)
        for folder in unlabeled:
            summary = summarize_unlabeled_folder(folder)
            if not os.path.exists(folder):
                report.errors.append(f"Unlabeled folder not found: {folder}")
            elif summary.count == 0:
                report.warnings.append(f"{folder}: no readable images; it adds nothing to training.")
            elif summary.unreadable:
                report.warnings.append(f"{folder}: {summary.text()}")
        if settings is not None:
            report.errors += settings.problems()
            if settings.method != "supervised" and not unlabeled:
                report.warnings.append("No unlabeled folder: the semi-supervised terms have nothing to learn from.")
        return report

    def _settings(self, settings, changes):
        settings = settings or TrainingSettings()
        try:
            return settings.updated(**changes) if changes else settings
        except TypeError as e:
            raise TrainingError(f"Unknown training setting: {e}") from None

    def new_run_dir(self, model_name):
        """A new, empty run folder, made here so that two runs started in the same second never share one."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        os.makedirs(self.runs_root, exist_ok=True)
        suffix = 1
        while True:
            name = f"{safe_name(model_name)}-{stamp}" + (f"-{suffix}" if suffix > 1 else "")
            path = os.path.join(self.runs_root, name)
            try:
                os.mkdir(path)
                return path
            except FileExistsError:
                suffix += 1

    # --- training -----------------------------------------------------------------------------------------------
    def models(self):
        """The registered models (newest first): what "Suggest next cases" and "Continue from model" offer."""
        return self.registry.models()

    def _start(self, launch, exported):
        """Start `micd train` on the written dataset (the main thread's part once the files are there)."""
        settings, parent = launch.settings, launch.parent
        command = self.launcher.command("train", "--dataset", exported.dataset_file, "--out", launch.run_dir,
                                        *settings.cli_args())
        if parent is not None:
            command += ["--init-from", parent.path]
            normalization = parent.meta["network"].get("normalization")
            if normalization:
                command += ["--normalization", str(normalization)]
        info = {"model_name": settings.model_name, "labels": {str(k): v for k, v in exported.labels.items()},
                "colors": {str(k): list(v) for k, v in launch.report.colors.items()}, "settings": settings.to_dict(),
                "init_from": parent.path if parent is not None else None}
        launcher = self.launcher
        if settings.threads and not launcher.threads:
            launcher = launcher.with_threads(settings.threads)
        return BackgroundJob.start(command, launch.run_dir, kind="train", env=launcher.environment(),
                                   events_file=os.path.join(launch.run_dir, EVENTS_FILE), info=info)

    def train(self, labeled, unlabeled=(), settings=None, wait=False, on_event=None, on_log=None, on_finished=None,
              timeout=None, file_labels=None, curves=None, init_from=None, **setting_changes):
        """Export the labeled cases, write the dataset file and start `micd train` in the background.

        labeled: [(volume node, segmentation node)] and/or [(image file, label file)]; unlabeled: folders/files.
        Settings come from `settings` (TrainingSettings) updated by keyword arguments, e.g. time_budget="2h",
        iterations=2000 (wins over the budget), model_name="Liver", device="cuda:0", patch_size=(96, 96, 96).
        init_from: a registered model (ModelInfo, name or folder) to start from (`micd train --init-from`): its
        network width and normalisation are used, and its labels must be the cases' labels. The files are written
        in the calling thread (the panel uses `start_training`, which writes them in a worker thread). Returns a
        TrainingJob; with wait=True it returns after the run ended and raises TrainingError unless it succeeded
        (job.model is the new model)."""
        launch = self._prepare(labeled, unlabeled, settings, file_labels, init_from, setting_changes)
        try:
            exported = launch.pending.write()
        except Exception:
            discard_run_dir(launch.run_dir)
            raise
        job = self._start(launch, exported)
        return self._follow(job, wait, timeout, on_event, on_log, on_finished, curves)

    def start_training(self, labeled, unlabeled=(), settings=None, on_started=None, on_failed=None, on_progress=None,
                       on_event=None, on_log=None, on_finished=None, file_labels=None, curves=None, init_from=None,
                       **setting_changes):
        """Train as the panel does, without holding Slicer's main thread while a large volume is written: the
        checks and a snapshot of the cases here (milliseconds, unless segments off their volume's grid must be
        resampled), the files in a worker thread, then `micd train`.
        Returns a TrainingStart (polled by the job poller); `on_started(TrainingJob)` once the run is started,
        `on_failed(start)` when the export failed or was cancelled (`start.message` says which),
        `on_progress(written, count)` after each case. Raises TrainingError when the checks fail."""
        launch = self._prepare(labeled, unlabeled, settings, file_labels, init_from, setting_changes)

        def started(exported):
            return self._follow(self._start(launch, exported), False, None, on_event, on_log, on_finished, curves)

        start = TrainingStart(launch.pending, launch.run_dir, started, on_started, on_failed, on_progress)
        if self.job_poller is not None:
            self.job_poller.add(start)
        else:
            start.begin()
        return start

    def _prepare(self, labeled, unlabeled, settings, file_labels, init_from, setting_changes):
        """Settings, the parent model, the checks and the main-thread half of the export: a _TrainingLaunch."""
        settings = self._settings(settings, setting_changes)
        parent = self._parent_model(init_from)
        if parent is not None:
            settings = settings.updated(filters=int(parent.meta["network"].get("filters", settings.filters)))
        cases = as_cases(labeled)
        report = self.check(cases, unlabeled, settings, file_labels)
        if parent is not None and report.ok and dict(report.labels) != parent.labels and _same_structures(
                report.labels, parent.labels) and _fits(file_labels, parent.labels):
            # The scene numbers segments in order of first appearance and keeps their spelling; a model's labels
            # are fixed, so number (and spell) the same structures as the model does.
            report = self.check(cases, unlabeled, settings, dict(parent.labels))
        if not report.ok:
            raise TrainingError("Cannot train yet:\n" + "\n".join(report.errors))
        if parent is not None and dict(report.labels) != parent.labels:
            raise TrainingError(f"Cannot continue from '{parent.name}': its labels "
                                f"{_label_list(parent.labels)} differ from the cases' {_label_list(report.labels)}. "
                                "Name the segments as the model does, or train a new model with Train.")
        run_dir = self.new_run_dir(settings.model_name)
        try:
            pending = take_export(cases, list(unlabeled), os.path.join(run_dir, "dataset"), report=report)
        except ValueError as e:
            discard_run_dir(run_dir)
            raise TrainingError(str(e)) from None
        except Exception:
            discard_run_dir(run_dir)
            raise
        return _TrainingLaunch(settings, parent, report, run_dir, pending)

    def _parent_model(self, init_from):
        if init_from is None:
            return None
        try:
            parent = self.registry.get(init_from)
        except Exception as e:  # noqa: BLE001 - RegistryError, or a folder that is no model
            raise TrainingError(f"Cannot continue from {init_from}: {e}") from None
        if not isinstance(parent.meta.get("network"), dict):
            raise TrainingError(f"Cannot continue from '{parent.name}': its model.json names no network.")
        return parent

    # --- the annotation loop: which volume to label next ------------------------------------------------------
    def suggest(self, model, unlabeled, top=None, device="auto", wait=False, on_event=None, on_log=None,
                on_finished=None, timeout=None):
        """Rank the unlabeled folders/files by how unsure `model` is about each volume (`micd suggest`, in the
        background); returns a SuggestJob whose `ranking` (most uncertain first) is there once it succeeded. Load
        one for correcting with `load_suggestion(entry, model)`."""
        if not unlabeled:
            raise SuggestionError("Add an unlabeled folder first: its volumes are what gets ranked.")
        try:
            model = self.registry.get(model)
        except Exception as e:  # noqa: BLE001 - RegistryError, or a folder that is no model
            raise SuggestionError(f"No model to rank with: {e}") from None
        missing = [p for p in unlabeled if not os.path.exists(p)]
        if missing:
            raise SuggestionError("Not found: " + ", ".join(missing))
        root = os.path.join(os.path.dirname(self.runs_root), "suggest")
        prune_runs(root)
        run_dir = os.path.join(root, f"{safe_name(model.name)}-{time.strftime('%Y%m%d-%H%M%S')}")
        suffix = 2
        while os.path.exists(run_dir):
            run_dir = os.path.join(root, f"{safe_name(model.name)}-{time.strftime('%Y%m%d-%H%M%S')}-{suffix}")
            suffix += 1
        command = suggestion_command(self.launcher, model, unlabeled, run_dir, top=top, device=device)
        job = BackgroundJob.start(command, run_dir, kind="suggest", env=self.launcher.environment(),
                                  info={"model": model.path, "inputs": list(unlabeled)})
        suggestion = SuggestJob(job, model, on_event, on_log, on_finished)
        if wait:
            suggestion.wait(timeout=timeout)
            if not suggestion.finished:
                suggestion.cancel()
                raise SuggestionError(f"Ranking did not finish within {timeout} s and was stopped.")
            if suggestion.state != SUCCEEDED:
                raise SuggestionError(suggestion.message)
        elif self.job_poller is not None:
            self.job_poller.add(suggestion)
        return suggestion

    def load_suggestion(self, entry, model):
        """Load a ranked volume (an entry of SuggestJob.ranking) with its prediction as an editable segmentation,
        to correct in the Segment Editor and add as a labeled case: (volume, segmentation, reused). A result
        made earlier for the volume by this model is reused, never overwritten (it may hold corrections); one by
        another model is kept, and this model's prediction goes into a new node."""
        import slicer

        volume, segmentation, reused = load_suggestion(slicer.mrmlScene, entry, self.registry.get(model))
        slicer.util.setSliceViewerLayers(background=volume)  # shown in the slice views, the segments over it
        return volume, segmentation, reused

    def _follow(self, job, wait, timeout, on_event, on_log, on_finished, curves):
        training = TrainingJob(job, self.registry, on_event, on_log, on_finished, curves)
        if wait:
            training.wait(timeout=timeout)
            if not training.finished:
                raise TrainingError(f"Training did not finish within {timeout} s; it keeps running in "
                                    f"{training.run_dir} (attach with logic.attach(run_dir)).")
            if training.state != SUCCEEDED:
                raise TrainingError(training.message or f"Training {training.state}.")
        elif self.job_poller is not None:
            self.job_poller.add(training)
        return training

    def resume(self, run_dir, wait=False, on_event=None, on_log=None, on_finished=None, timeout=None, curves=None):
        """Continue a cancelled or interrupted run from its last checkpoint (same command plus --resume)."""
        record = JobRecord.load(run_dir)
        if record.process_running():
            raise TrainingError(f"{run_dir} is still running; attach to it instead.")
        if not os.path.isfile(os.path.join(run_dir, CHECKPOINTS_DIR, LAST_CHECKPOINT)):
            raise TrainingError(f"{run_dir} has no checkpoint to resume from; start a new training.")
        command = list(record.command)
        if "--resume" not in command:
            command.append("--resume")
        info = dict(record.info, registered_model=None)
        job = BackgroundJob.start(command, run_dir, kind="train", env=self.launcher.environment(),
                                  events_file=record.events_file, info=info)
        return self._follow(job, wait, timeout, on_event, on_log, on_finished, curves)

    def attach(self, run_dir, on_event=None, on_log=None, on_finished=None, curves=None, replay=True):
        """Reconnect to a run (after a module reload or a Slicer restart); `replay` re-delivers past events."""
        job = BackgroundJob.attach(run_dir, replay=replay)
        training = TrainingJob(job, self.registry, on_event, on_log, on_finished, curves)
        if self.job_poller is not None:
            self.job_poller.add(training)
        return training

    def runs_to_attach(self):
        """Run folders whose job was never seen to end: still running, or ended while no panel was watching
        (attaching reads its last events, registers a finished model or reports how it stopped)."""
        return [r.run_dir for r in find_jobs(self.runs_root, "train") if r.status in (RUNNING, CANCELLING)]

    def resumable_runs(self):
        """Run folders that stopped before finishing (cancelled, failed, killed) and have a checkpoint."""
        return [r.run_dir for r in find_jobs(self.runs_root, "train")
                if r.status in (CANCELLED, FAILED, LOST) and not r.process_running()
                and os.path.isfile(os.path.join(r.run_dir, CHECKPOINTS_DIR, LAST_CHECKPOINT))]
