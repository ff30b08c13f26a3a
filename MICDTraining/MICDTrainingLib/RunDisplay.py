"""The run's progress bar, status line and charts, redrawn at most every REFRESH_MS however many events arrive
(re-entering a 20,000-iteration run delivers them all): events only mark the display out of date."""

import qt

from MICDCommon.events import TrainingProgress

REFRESH_MS = 250


class RunDisplay:
    """`job()` and `curves()` give the panel's current job and charts; `changed(curves=...)` marks the display out
    of date; a single-shot QTimer redraws it."""

    def __init__(self, progress_bar, status_label, curves_view, job, curves):
        self.progressBar, self.statusLabel, self.curvesView = progress_bar, status_label, curves_view
        self._job, self._curves = job, curves
        self.pending = False  # a redraw is scheduled
        self._curves_changed = False
        self._timer = qt.QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(REFRESH_MS)
        self._timer.connect("timeout()", self.refresh)

    def changed(self, curves=False):
        self._curves_changed = self._curves_changed or curves
        if not self.pending:
            self.pending = True
            self._timer.start()

    def refresh(self):
        """Show the progress and, if events changed them, redraw the charts (from at most Curves.MAX_POINTS points
        per series). While the job still has a backlog of events to deliver, wait: the charts are drawn once, when
        it has caught up."""
        self.pending = False
        job = self._job()
        if job is not None and not job.finished and job.backlog > 0:
            self.changed()
            return
        progress = job.progress if job is not None else TrainingProgress()
        self.progressBar.setMaximum(1000)
        self.progressBar.setValue(int(1000 * progress.fraction))
        if job is None or not job.finished:  # the panel's onFinished says how it ended
            self.statusLabel.setText(progress.status_text())
        if self._curves_changed:
            self._curves_changed = False
            self.curvesView.show(self._curves())
