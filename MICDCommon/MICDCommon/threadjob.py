"""Work that would stall Slicer's main thread for more than a moment but needs neither Qt nor MRML (copying a model's
files, waiting for a backend check), run in a worker thread and polled like a background job: `poll()` from the
main thread's QTimer notices the end and calls `on_finished(job)` there, where the result may touch Qt and MRML."""

import threading


class ThreadJob:
    """`function()` in a daemon thread. After it ended: `result`, or `error` (the exception it raised)."""

    backlog = 0  # nothing to deliver in slices: QtJobPoller polls it like any job

    def __init__(self, function, on_finished=None, name="MICD worker"):
        self.on_finished = on_finished
        self.result = None
        self.error = None
        self._notified = False
        self._thread = threading.Thread(target=self._run, args=(function,), name=name, daemon=True)
        self._thread.start()

    def _run(self, function):
        try:
            self.result = function()
        except Exception as e:  # noqa: BLE001 - handed to on_finished on the main thread
            self.error = e

    @property
    def finished(self):
        return self._notified

    def poll(self, time_slice=None):
        if not self._notified and not self._thread.is_alive():
            self._notified = True
            if self.on_finished:
                self.on_finished(self)
        return []

    def wait(self, timeout=None):
        """Block until the function has ended, then poll (for scripts and the console)."""
        self._thread.join(timeout)
        self.poll()
        return self.finished
