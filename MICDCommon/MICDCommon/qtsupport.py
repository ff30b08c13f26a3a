"""Calls `poll()` of background jobs from a Qt timer on Slicer's main thread (the only Qt-dependent file of this
package; `qt` is imported when a poller is created, so the rest of the package stays usable without Qt)."""


class QtJobPoller:
    """Polls each job every `interval_ms` until it has finished; then forgets it."""

    def __init__(self, interval_ms=1000):
        import qt

        self._jobs = []
        self._timer = qt.QTimer()
        self._timer.setInterval(interval_ms)
        self._timer.connect("timeout()", self.poll_all)

    def add(self, job):
        if job not in self._jobs:
            self._jobs.append(job)
        self._timer.start()

    def poll_all(self):
        for job in list(self._jobs):
            try:
                job.poll()
            finally:
                if job.finished:
                    self._jobs.remove(job)
        if not self._jobs:
            self._timer.stop()

    def stop(self):
        self._timer.stop()
        self._jobs = []
