"""A warm backend worker for one-click segmentation: one `micd serve` process, started in the background, that
keeps Python, torch and the models loaded between clicks (torch never enters Slicer's process).

Nothing here needs Qt: `BackendWorker.poll()` hands the worker's answers to their requests, notices when the worker
has died and shuts it down after an idle timeout; in Slicer a QTimer calls it through the requests' `poll()`. A
request looks like a BackgroundJob to the code that follows jobs (state, events, poll, wait, cancel, conclude), so
`JobWrapper` subclasses such as the segmentation job work with either. Writing a request is a few bytes into a pipe;
reading the answers happens on a thread of its own, so no call here waits for the worker.
"""

import json
import os
import queue
import subprocess
import tempfile
import threading
import time

from .contract import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK
from .jobs import CANCELLED, CANCELLING, FAILED, FINISHED_STATES, RUNNING, SUCCEEDED, poll_until_finished
from .threadjob import ThreadJob

DEFAULT_IDLE_TIMEOUT_S = 600.0  # a worker nobody used for this long is shut down and its memory given back


class WorkerRequest:
    """One request to the worker, followed like a BackgroundJob: `state`, `events`, `poll()`, `wait()`, `cancel()`,
    and the hooks a JobWrapper sets (`on_event`, `on_log`, `conclude`, `on_finished`)."""

    def __init__(self, worker, rid, command, run_dir):
        self.worker, self.id, self.command, self.run_dir = worker, rid, command, run_dir
        self.state = RUNNING
        self.returncode = None
        self.events = []
        self.on_event = self.on_log = self.conclude = self.on_finished = None
        self.started = time.time()
        self.ended = None
        self._kill_deadline = None
        self._before = None  # a ThreadJob to finish before the request is sent (BackendWorker.submit's `before`)
        self._message = None

    def send_after(self, before, message):
        """Send `message` once the ThreadJob `before` has ended well (noticed by `poll`, on the caller's thread)."""
        self._before, self._message = before, message

    def _send_when_ready(self):
        if self._before is None:
            return
        if self.finished:  # settled meanwhile (the worker died): never send it
            self._before = None
            return
        self._before.poll()
        if not self._before.finished:
            return
        before, self._before = self._before, None
        if self.state == CANCELLING:
            self._settle(CANCELLED)  # never sent: nothing for the worker to stop
        elif before.error is not None:
            self.deliver({"event": "error", "kind": "input", "message": f"Could not write the input: {before.error}",
                          "hint": "Check the free space of the MICD work folder, then segment again."})
        else:
            self.worker.send(self._message)

    backlog = 0  # answers are handed out as they arrive (BackgroundJob may hold some back for the next poll)

    @property
    def finished(self):
        return self.state in FINISHED_STATES

    @property
    def error_event(self):
        return next((e for e in reversed(self.events) if e.get("event") == "error"), None)

    def log_tail(self, n=20):
        return self.worker.log_tail(n)

    def poll(self, time_slice=None):
        self._send_when_ready()
        self.worker.poll()
        if not self.finished and self._kill_deadline is not None and time.monotonic() > self._kill_deadline:
            self.worker.kill()  # the request did not stop at its next window batch: end the worker
            self.worker.poll()
        return []

    def deliver(self, event):
        """An answer of the worker to this request (the worker hands them out)."""
        self.events.append(event)
        if self.on_event:
            self.on_event(event)
        if event.get("event") == "done":
            self._settle(SUCCEEDED)
        elif event.get("event") == "error":
            self._settle(CANCELLED if event.get("kind") == "cancelled" else FAILED)

    def worker_gone(self, message):
        """The worker ended before this request did."""
        if self.state == CANCELLING:
            self._settle(CANCELLED)
            return
        self.events.append({"event": "error", "kind": "worker", "message": message,
                            "hint": "Segment again: a new worker starts by itself."})
        self._settle(FAILED)

    def _settle(self, state):
        if self.finished:
            return
        self.state, self.ended = state, time.time()
        self.returncode = EXIT_OK if state == SUCCEEDED else (EXIT_CANCELLED if state == CANCELLED else EXIT_FAILED)
        try:
            if self.conclude:
                self.conclude(self)
        finally:
            if self.on_finished:
                self.on_finished(self)

    def request_cancel(self, grace_s=5.0):
        """Ask the worker to stop this request at its next window batch; after `grace_s` the worker is ended."""
        if self.finished:
            return
        self.state = CANCELLING
        if self._before is not None:
            return  # not sent yet: settled as cancelled once its input is written (see _send_when_ready)
        self.worker.send({"command": "cancel", "target": self.id})
        self._kill_deadline = time.monotonic() + grace_s

    def cancel(self, grace_s=5.0, interval=0.05):
        self.request_cancel(grace_s)
        return poll_until_finished(self, interval=interval)

    def wait(self, timeout=None, interval=0.05, idle=None):
        return poll_until_finished(self, timeout, interval, idle)


class BackendWorker:
    """One `micd serve` process, started on first use (or `start()`, e.g. when the module is entered) with the
    launcher's Python and environment, restarted when that Python changes or the worker died, shut down by
    `shutdown()` or after `idle_timeout_s` without a request."""

    def __init__(self, launcher, idle_timeout_s=DEFAULT_IDLE_TIMEOUT_S, log_dir=None):
        self.launcher = launcher
        self.idle_timeout_s = idle_timeout_s
        self.log_path = os.path.join(log_dir or tempfile.gettempdir(), f"micd-serve-{os.getpid()}.log")
        self._proc = None
        self._python = None
        self._lines = None
        self._output_ended = False
        self._requests = {}
        self._next = 0
        self._last_used = time.monotonic()
        self.starts = 0  # how many worker processes were started (a restart after a crash counts)
        self.ready = False  # the worker said "ready": Python, torch and micd are imported

    @property
    def alive(self):
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self):
        return self._proc.pid if self._proc is not None else None

    def start(self):
        """Start the worker unless one runs with the launcher's current Python (returns at once)."""
        python = self.launcher.python
        if self.alive and python == self._python:
            return
        if self._proc is not None:
            self.shutdown()
        log = open(self.log_path, "ab")
        try:
            self._proc = subprocess.Popen(self.launcher.command("serve"), stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=log, env=self.launcher.environment(),
                                          cwd=tempfile.gettempdir(), text=True, encoding="utf-8", bufsize=1,
                                          **_new_process_group())
        finally:
            log.close()
        self._python, self.ready, self.starts = python, False, self.starts + 1
        self._lines, self._output_ended = queue.Queue(), False
        threading.Thread(target=_pump, args=(self._proc.stdout, self._lines), daemon=True,
                         name="micd-serve-reader").start()
        self._last_used = time.monotonic()

    def submit(self, command, run_dir=None, before=None, **fields):
        """Send a request (`micd predict`'s options as keys for "predict"); returns its WorkerRequest. `before`: work
        that must end first and needs neither Qt nor MRML (writing the input volume: about 0.2 s for a 512x512x200
        CT), run in a worker thread while the worker process starts; the request is sent by the poll that sees it
        done, or fails with its error."""
        self.start()
        self._next += 1
        rid = str(self._next)
        request = WorkerRequest(self, rid, command, run_dir)
        self._requests[rid] = request
        message = {"id": rid, "command": command, **fields}
        if before is None:
            self.send(message)
        else:
            request.send_after(ThreadJob(before, name="MICD request input"), message)
        return request

    def send(self, message):
        self._last_used = time.monotonic()
        try:
            self._proc.stdin.write(json.dumps(message) + "\n")
            self._proc.stdin.flush()
        except (OSError, ValueError, AttributeError):
            pass  # the worker is gone: poll() reports it to the requests that wait

    def poll(self):
        """Hand the worker's answers to their requests; a dead worker fails what it was doing; an idle one stops."""
        if self._lines is not None:
            while not self._output_ended:
                try:
                    line = self._lines.get_nowait()
                except queue.Empty:
                    break
                if line is None:
                    self._output_ended = True  # every line it wrote has been handed out
                else:
                    self._dispatch(line)
        if self._proc is not None and self._output_ended and self._proc.poll() is not None:
            code = self._proc.returncode
            pending = [r for r in self._requests.values() if not r.finished]
            for request in pending:
                request.worker_gone(f"The MICD worker stopped (exit code {code}) while running this request."
                                     + self._tail_note())
            self._requests.clear()
            self._proc, self._lines = None, None
        elif self.alive and not self._pending() and (time.monotonic() - self._last_used > self.idle_timeout_s
                                                      or self.launcher.python != self._python):
            self.shutdown()  # idle, or the user chose another Python: the next request starts a new worker

    def _dispatch(self, line):
        try:
            event = json.loads(line)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        if event.get("event") == "ready":
            self.ready = True
            return
        self._last_used = time.monotonic()
        request = self._requests.get(str(event.get("id")))
        if request is None or event.get("command") == "cancel":
            return
        request.deliver(event)
        if request.finished:
            self._requests.pop(request.id, None)

    def _pending(self):
        return any(not r.finished for r in self._requests.values())

    def shutdown(self, wait_s=0.2):
        """Ask the worker to exit (and close its stdin, which also ends it); a worker still alive after `wait_s` is
        left to finish on its own and killed by a watcher after 10 s. Returns at once."""
        proc, self._proc, self._lines = self._proc, None, None
        for request in [r for r in self._requests.values() if not r.finished]:
            request.worker_gone("The MICD worker was shut down.")
        self._requests.clear()
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.stdin.write(json.dumps({"command": "shutdown"}) + "\n")
            proc.stdin.close()
        except (OSError, ValueError):
            pass
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            threading.Thread(target=_reap, args=(proc, 10.0), daemon=True, name="micd-serve-reaper").start()

    def kill(self):
        if self.alive:
            self._proc.kill()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def log_tail(self, n=20):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "\n".join(ln.rstrip() for ln in f.readlines()[-n:] if ln.strip())
        except OSError:
            return ""

    def _tail_note(self):
        tail = self.log_tail(8)
        return f"\nLast lines of its log ({self.log_path}):\n{tail}" if tail else ""


def _pump(stream, lines):
    try:
        for line in stream:
            lines.put(line)
    except (OSError, ValueError):
        pass
    lines.put(None)  # the end: every line before it has been put


def _reap(proc, timeout):
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


def _new_process_group():
    """Ctrl+C in Slicer's terminal must not reach the worker (it is stopped by shutdown or the end of stdin)."""
    if os.name == "nt":
        return {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}
    return {"start_new_session": True}
