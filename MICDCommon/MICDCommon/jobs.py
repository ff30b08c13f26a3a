"""Background jobs: a `micd` subprocess that outlives the panel (and Slicer), its record file, and a runner that
streams its events, reattaches to it later, and cancels its whole process tree.

Nothing here needs Qt: `BackgroundJob.poll()` advances the state (new events, log lines, end of the process) and
calls the callbacks; in Slicer a QTimer calls it (see `qtsupport.py`), in scripts and tests `wait()` or a loop does.
"""

import json
import os
import subprocess
import time

from . import processes, runlock
from .contract import EXIT_CANCELLED, EXIT_OK, JOB_FILE, JOB_LOG_FILE, STOP_FILE, STOP_FILE_VARIABLE
from .events import EventTail, LineTail, describe_event, parse_event

RUNNING, CANCELLING = "running", "cancelling"
SUCCEEDED, FAILED, CANCELLED, LOST = "succeeded", "failed", "cancelled", "lost"
FINISHED_STATES = (SUCCEEDED, FAILED, CANCELLED, LOST)


class JobError(Exception):
    """A job could not be started or attached; the message says why and what to do."""


class JobRecord:
    """What is needed to find a job again: pid (+ start marker against pid reuse), command, run folder, files.

    Stored as `job.json` in the run folder; `status`/`returncode` are filled in when the job ends."""

    FIELDS = ("kind", "command", "run_dir", "pid", "start_marker", "started", "events_file", "log_file", "status",
              "returncode", "ended", "info")

    def __init__(self, kind, command, run_dir, pid=0, start_marker=None, started=None, events_file=None,
                 log_file=None, status=RUNNING, returncode=None, ended=None, info=None):
        self.kind = kind
        self.command = list(command)
        self.run_dir = os.path.abspath(run_dir)
        self.pid = int(pid or 0)
        self.start_marker = start_marker
        self.started = started if started is not None else time.time()
        self.events_file = events_file
        self.log_file = log_file or os.path.join(self.run_dir, JOB_LOG_FILE)
        self.status = status
        self.returncode = returncode
        self.ended = ended
        self.info = dict(info or {})  # caller's notes, e.g. the model name to register

    @property
    def path(self):
        return os.path.join(self.run_dir, JOB_FILE)

    @property
    def stop_file(self):
        return os.path.join(self.run_dir, STOP_FILE)

    def to_dict(self):
        return {k: getattr(self, k) for k in self.FIELDS}

    def save(self):
        os.makedirs(self.run_dir, exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, run_dir):
        path = os.path.join(run_dir, JOB_FILE)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise JobError(f"{path}: no readable job record ({e})") from None
        data["run_dir"] = run_dir
        return cls(**{k: data.get(k) for k in cls.FIELDS if k in data})

    def process_running(self):
        """A trainer's run-folder lock decides (held: running; taken by this job and let go: ended), which neither a
        reused pid nor a platform without process details can fool; until it is taken, the process id does."""
        lock = runlock.probe(self.run_dir)
        if lock is not None and (lock[0] or lock[1] == self.pid):
            return lock[0]
        return processes.is_same_process(self.pid, self.start_marker)


class BackgroundJob:
    """One running (or finished) job. Create with `start()` or `attach()`; call `poll()` regularly.

    Callbacks: on_event(event dict), on_log(text line), conclude(job) and on_finished(job). `state` is one of
    running, cancelling, succeeded, failed, cancelled, lost (the process ended without saying how, e.g. it was
    killed). When the process has ended, its state is decided from the exit code and the events, then `conclude`
    runs and may change it (a job that exited 0 without the output it should have written failed), then the record
    is saved with that final state, then `on_finished` runs."""

    def __init__(self, record, popen=None, on_event=None, on_log=None, on_finished=None, conclude=None):
        self.record = record
        self._popen = popen
        self.on_event = on_event
        self.on_log = on_log
        self.conclude = conclude
        self.on_finished = on_finished
        self.events = []  # the events delivered (of consecutive `iteration` events, the latest only)
        self.state = record.status if record.status in FINISHED_STATES else RUNNING
        self.returncode = record.returncode
        self._events = EventTail(record.events_file) if record.events_file else None
        self._log = LineTail(record.log_file)
        self._stop_pids = None
        self._kill_deadline = None
        self._cancel_requested = False
        self._finished_notified = self.state in FINISHED_STATES
        self.conclusion_error = None  # what `conclude` raised, if it did (the state is then failed)

    # --- creation -----------------------------------------------------------------------------------------------
    @classmethod
    def start(cls, command, run_dir, kind="train", env=None, events_file=None, info=None, cwd=None, **callbacks):
        """Start `command` in the background, stdout+stderr to RUN_DIR/job.log, and write RUN_DIR/job.json."""
        os.makedirs(run_dir, exist_ok=True)
        record = JobRecord(kind, command, run_dir, events_file=events_file, info=info)
        events_offset, log_offset = _file_size(events_file), _file_size(record.log_file)  # a resume appends
        if os.path.exists(record.stop_file):  # left by the cancel of the run this one resumes
            os.remove(record.stop_file)
        env = dict(os.environ if env is None else env, **{STOP_FILE_VARIABLE: record.stop_file})
        log = open(record.log_file, "ab")
        try:
            popen = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, cwd=cwd or run_dir, **processes.new_group_popen_kwargs())
        except OSError as e:
            raise JobError(f"could not start {command[0]!r}: {e}. Check the Python interpreter chosen in the "
                           "MICD settings.") from None
        finally:
            log.close()
        record.pid = popen.pid
        record.start_marker = processes.start_marker(popen.pid)
        record.save()
        job = cls(record, popen=popen, **callbacks)
        job._log.offset = log_offset
        if job._events is not None:
            job._events = EventTail(events_file, events_offset)
        return job

    @classmethod
    def attach(cls, run_dir, replay=True, **callbacks):
        """Reconnect to the job recorded in `run_dir` (after a module reload or a Slicer restart).

        With `replay` the events written so far are delivered again on the first poll, so curves can be redrawn."""
        record = JobRecord.load(run_dir)
        job = cls(record, **callbacks)
        if not replay:
            job._log.offset = _file_size(record.log_file)
            if job._events is not None:
                job._events = EventTail(record.events_file, _file_size(record.events_file))
        return job

    # --- state --------------------------------------------------------------------------------------------------
    @property
    def run_dir(self):
        return self.record.run_dir

    @property
    def pid(self):
        return self.record.pid

    @property
    def finished(self):
        return self.state in FINISHED_STATES

    def _process_running(self):
        if self._popen is not None:
            rc = self._popen.poll()
            if rc is not None:
                self.returncode = rc
            return rc is None
        return self.record.process_running()

    @property
    def events_offset(self):
        """How far the events file has been read (where reading starts, before the first poll)."""
        return self._events.offset if self._events is not None else 0

    @property
    def backlog(self):
        """How many lines of the events file were read but not yet delivered (and 1 while some bytes are not read
        yet): a poll with a time slice reads at most events.READ_CHUNK_BYTES and stops when the slice is used up (e.g.
        re-attaching to a run of 20,000 logged iterations), and the next poll goes on."""
        return self._events.backlog if self._events is not None else 0

    def poll(self, time_slice=None):
        """Read new events and log lines, notice the end of the process, call the callbacks. Returns new events.

        With `time_slice` (seconds) it delivers events only until the slice is used up and leaves the rest in
        `backlog` for the next poll (the end of the process is noticed once all are delivered), so that a poll on
        the UI thread stays short however long the stream is; without it, all new events are delivered."""
        deadline = None if time_slice is None else time.monotonic() + time_slice
        running = self._process_running()
        if not running and self._stop_pids is not None:
            running = processes.tree_alive(self.pid, self._stop_pids)
        new = self._read_events(deadline)
        if self._kill_deadline is not None and running and time.monotonic() > self._kill_deadline:
            processes.force_kill(self.pid, self._stop_pids or [])
            self._kill_deadline = None
        if not running and not self.finished:
            new += self._read_events(deadline)
            if not self.backlog and (deadline is None or time.monotonic() < deadline):
                self._settle()  # (a slice used up leaves the conclusion and on_finished to the next poll)
        return new

    def _read_events(self, deadline=None):
        new = []
        for line in self._log.read_new_lines():
            event = parse_event(line)
            if event is None:
                if self.on_log and line.strip():
                    self.on_log(line)
            elif self._events is None:
                self._deliver(event)
                new.append(event)
        if self._events is not None:
            def deliver(event):
                self._deliver(event)
                new.append(event)

            self._events.hand_out(deliver, deadline)
        return new

    def _deliver(self, event):
        events = self.events
        if event.get("event") == "iteration" and events and events[-1].get("event") == "iteration":
            events[-1] = event  # of a row of iterations only the latest is kept: a long run logs tens of thousands
        else:
            events.append(event)
        if self.on_event:
            self.on_event(event)

    def _settle(self):
        self.state = self._outcome()
        try:
            if self.conclude:
                self.conclude(self)
        except Exception as e:  # noqa: BLE001 - a failed conclusion must still end the job for its listeners
            self.state = FAILED
            self.conclusion_error = e
            if self.on_log:
                self.on_log(f"The job ended but what it made could not be taken in: {type(e).__name__}: {e}")
        finally:
            self._save_outcome()
        if not self._finished_notified:
            self._finished_notified = True
            if self.on_finished:
                self.on_finished(self)

    def _outcome(self):
        """The state the ended process left: from the exit code, its last event, or the outputs it was to write."""
        last = self.events[-1] if self.events else {}
        if self.returncode is None:
            self.returncode = self.record.returncode
        if self._cancel_requested or self.returncode == EXIT_CANCELLED or (
                last.get("event") == "error" and last.get("kind") == "cancelled"):
            return CANCELLED
        if self.returncode == EXIT_OK or last.get("event") == "done":
            return SUCCEEDED
        if self.returncode is not None or last.get("event") == "error":
            return FAILED
        return SUCCEEDED if self._outputs_present() else LOST

    def _save_outcome(self):
        self.record.status, self.record.returncode, self.record.ended = self.state, self.returncode, time.time()
        try:  # keep notes another runner of the same job wrote meanwhile (e.g. where it registered the model)
            self.record.info = {**self.record.info, **JobRecord.load(self.run_dir).info}
        except JobError:
            pass
        try:
            self.record.save()
        except OSError:
            pass

    def _outputs_present(self):
        outputs = self.record.info.get("outputs") or []
        return bool(outputs) and all(os.path.exists(p) for p in outputs)

    @property
    def error_event(self):
        return next((e for e in reversed(self.events) if e.get("event") == "error"), None)

    def log_tail(self, n=20):
        """The last `n` lines of the job's log file (for error messages)."""
        try:
            with open(self.record.log_file, encoding="utf-8", errors="replace") as f:
                lines = [ln.rstrip() for ln in f if ln.strip() and parse_event(ln) is None]
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    # --- control ------------------------------------------------------------------------------------------------
    def request_cancel(self, grace_s=30.0):
        """Ask the tree to stop (the stop file, and SIGTERM on POSIX: the trainer saves a checkpoint); `poll()` kills
        it after `grace_s`."""
        if self.finished:
            return
        self._cancel_requested = True
        self.state = CANCELLING
        with open(self.record.stop_file, "w", encoding="utf-8") as f:
            f.write("cancel requested\n")
        self._stop_pids = processes.request_stop(self.pid)
        self._kill_deadline = time.monotonic() + grace_s

    def cancel(self, grace_s=30.0, interval=0.1):
        """Stop the whole process tree and wait until it is gone (killing it after `grace_s`)."""
        self.request_cancel(grace_s)
        return poll_until_finished(self, interval=interval)

    def wait(self, timeout=None, interval=0.5, idle=None):
        """Poll until the job ends (or `timeout` s pass); `idle()` runs between polls (e.g. processEvents)."""
        return poll_until_finished(self, timeout, interval, idle)


def poll_until_finished(job, timeout=None, interval=0.5, idle=None):
    """Poll `job` (anything with poll(), finished and state) until it ends or `timeout` s pass; `idle()` runs
    between polls. Returns its state."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not job.finished:
        job.poll()
        if job.finished or (deadline is not None and time.monotonic() > deadline):
            break
        if idle:
            idle()
        time.sleep(interval)
    return job.state


class JobWrapper:
    """What a training, segmentation or ranking job shares: it wraps a BackgroundJob (`job`), follows its events
    into `progress`, passes each event and log line on (`on_event`, `on_log`: the panel, the console), and once the
    job ends lets the subclass `conclude` (set `message`, import or register the result, turn a success without its
    result into a failure) before the job's record is saved, then `clean_up` (remove what is not kept) before it
    tells `on_finished`."""

    def __init__(self, job, progress=None, on_event=None, on_log=None, on_finished=None):
        self.job = job
        self.progress = progress
        self.message = ""
        self._on_event, self._on_log, self._on_finished = on_event, on_log, on_finished
        job.on_event, job.on_log, job.conclude, job.on_finished = self._event, self._log, self.conclude, self._finished

    def describe(self, event):
        """The log line for an event (None: none)."""
        return describe_event(event)

    def observe(self, event):
        """A subclass's own use of each event (e.g. the training curves)."""

    def conclude(self, job):
        """Called once when the job has ended, before its record is saved: set `message`, import or register what it
        made; set `job.state` to FAILED when that is missing or unusable (the saved record then says failed)."""

    def clean_up(self, job):
        """Called once after the record holds the final state: remove what is not kept (e.g. temporary files)."""

    def _event(self, event):
        if self.progress is not None:
            self.progress.update(event)
        self.observe(event)
        text = self.describe(event)
        if text and self._on_log:
            self._on_log(text)
        if self._on_event:
            self._on_event(event)

    def _log(self, line):
        if self._on_log:
            self._on_log(line)

    def _finished(self, job):
        self.clean_up(job)
        if self._on_log and self.message:
            self._on_log(self.message)
        if self._on_finished:
            self._on_finished(self)

    @property
    def run_dir(self):
        return self.job.run_dir

    @property
    def state(self):
        return self.job.state

    @property
    def finished(self):
        return self.job.finished

    @property
    def backlog(self):
        """Events read but not yet delivered (see BackgroundJob.poll's time slice); 0 for a worker request."""
        return self.job.backlog

    def poll(self, time_slice=None):
        return self.job.poll(time_slice)

    def wait(self, timeout=None, interval=0.5):
        return poll_until_finished(self, timeout, interval, _process_events)  # this poll: a subclass's too

    def request_cancel(self):
        self.job.request_cancel(grace_s=self.cancel_grace_s)

    def cancel(self):
        """Stop the job and the processes it started (killing them after the grace period)."""
        return self.job.cancel(grace_s=self.cancel_grace_s)

    cancel_grace_s = 30.0


def _process_events():
    """Keeps Slicer's window alive while a console call waits (no-op outside the application)."""
    import slicer

    app = getattr(slicer, "app", None)
    if app is not None:
        app.processEvents()


def log_excerpt(job, lines=8):
    tail = job.log_tail(lines)
    return f"\nLast lines of the log:\n{tail}" if tail else ""


def failure_message(job, program):
    """Why a backend job failed, for the user: its `error` event (message, and the hint as "What to do"), else the
    state and exit code; then the end of its log."""
    error = job.error_event or {}
    text = error.get("message") or f"{program} ended with state {job.state} (exit code {job.returncode})."
    if error.get("hint"):
        text += f"\nWhat to do: {error['hint']}"
    return text + log_excerpt(job)


def _file_size(path):
    return os.path.getsize(path) if path and os.path.isfile(path) else 0


def find_jobs(root, kind=None):
    """Records of the jobs in the run folders under `root` (newest first)."""
    found = []
    if not root or not os.path.isdir(root):
        return found
    for name in os.listdir(root):
        run_dir = os.path.join(root, name)
        if os.path.isfile(os.path.join(run_dir, JOB_FILE)):
            try:
                record = JobRecord.load(run_dir)
            except JobError:
                continue
            if kind is None or record.kind == kind:
                found.append(record)
    return sorted(found, key=lambda r: r.started, reverse=True)
