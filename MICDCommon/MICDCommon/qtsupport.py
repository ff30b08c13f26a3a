"""Qt-side helpers shared by both panels (with slicermodule.py the only Qt-dependent files of this package; `qt`
is imported inside the functions, so the rest of the package stays usable without Qt): a QTimer that polls
background jobs on Slicer's main thread, the settings both modules share (which Python runs the backend), dialogs,
and the panels' building blocks (sections, buttons)."""

PYTHON_SETTING = "MICD/PythonInterpreter"
WORKER_IDLE_SETTING = "MICD/WorkerIdleMinutes"  # the segmentation worker ends after this many idle minutes


POLL_SLICE_S = 0.025  # at most this long delivering events per job and poll; the UI thread must stay responsive


class QtJobPoller:
    """Polls each job every `interval_ms` until it has finished; then forgets it.

    A job that has a `backlog` (BackgroundJob, JobWrapper) is polled with a time slice (POLL_SLICE_S): re-attaching
    to a long run delivers its events in slices, and while some are left the timer fires again as soon as Qt is
    idle instead of after `interval_ms`."""

    def __init__(self, interval_ms=1000):
        import qt

        self._jobs = []
        self._interval_ms = interval_ms
        self._catching_up = False
        self._timer = qt.QTimer()
        self._timer.setInterval(interval_ms)
        self._timer.connect("timeout()", self.poll_all)

    def add(self, job):
        if job not in self._jobs:
            self._jobs.append(job)
        self._timer.start()

    def poll_all(self):
        catching_up = False
        for job in list(self._jobs):
            try:
                if hasattr(job, "backlog"):
                    job.poll(time_slice=POLL_SLICE_S)
                    catching_up = catching_up or job.backlog > 0
                else:
                    job.poll()
            finally:
                if job.finished and job in self._jobs:
                    self._jobs.remove(job)
        if not self._jobs:
            self._timer.stop()
            catching_up = False
        if catching_up != self._catching_up:
            self._catching_up = catching_up
            self._timer.setInterval(0 if catching_up else self._interval_ms)

    def stop(self):
        self._timer.stop()
        self._jobs = []


def chosen_python():
    """The interpreter the user chose for the backend, or None for Slicer's own Python."""
    import qt

    value = qt.QSettings().value(PYTHON_SETTING, "")
    return str(value).strip() or None


def set_chosen_python(path):
    import qt

    qt.QSettings().setValue(PYTHON_SETTING, str(path or "").strip())


def launcher_from_settings():
    """A launcher that reads the interpreter setting at each use: a change applies to the next job, in both modules,
    without reloading them."""
    from .backend import BackendLauncher

    return BackendLauncher(python=chosen_python)


def slicer_collaborators(kwargs, poll_ms=1000):
    """A Logic's keyword arguments inside Slicer: the launcher follows the settings, a QTimer polls the jobs."""
    kwargs.setdefault("launcher", launcher_from_settings())
    kwargs.setdefault("job_poller", QtJobPoller(interval_ms=poll_ms))
    return kwargs


_READY_PYTHONS = set()


def backend_known_ready(launcher):
    """True when this session's dependency check already passed for the launcher's Python (no probe is run)."""
    return launcher.python in _READY_PYTHONS


def worker_idle_timeout_s():
    """Seconds a segmentation worker may stay idle (Slicer setting MICD/WorkerIdleMinutes, default 10 minutes)."""
    import qt

    from .worker import DEFAULT_IDLE_TIMEOUT_S

    try:
        minutes = float(qt.QSettings().value(WORKER_IDLE_SETTING, DEFAULT_IDLE_TIMEOUT_S / 60.0))
    except (TypeError, ValueError):
        minutes = DEFAULT_IDLE_TIMEOUT_S / 60.0
    return max(0.0, minutes) * 60.0


def main_window():
    """The parent of every dialog: Slicer's main window (a parentless dialog can open behind it)."""
    import slicer

    return slicer.util.mainWindow()


def confirm(message, title="MICD"):
    """Yes/No question box; True for Yes."""
    import qt

    answer = qt.QMessageBox.question(main_window(), title, message, qt.QMessageBox.Yes | qt.QMessageBox.No)
    return answer == qt.QMessageBox.Yes


def ensure_backend_ready(launcher, log=print, installer=None, show_error=None):
    """First-use dependency step: check the chosen Python once per session, install what is missing after the user
    confirms. Returns True when the backend can run."""
    from .dependencies import DependencyError, DependencyInstaller

    if launcher.python in _READY_PYTHONS:
        return True
    installer = installer or DependencyInstaller(launcher, confirm=confirm, log=log)
    try:
        ready = installer.ensure()
    except DependencyError as e:
        (show_error or log)(str(e))
        return False
    if ready:
        _READY_PYTHONS.add(launcher.python)
    else:
        (show_error or log)("The MICD backend needs these packages; nothing was installed.")
    return ready


def section(title, parent_layout, collapsed=False):
    """A collapsible section added to `parent_layout`; returns (the section, its form layout)."""
    import ctk
    import qt

    box = ctk.ctkCollapsibleButton()
    box.text = title
    box.collapsed = collapsed
    parent_layout.addWidget(box)
    return box, qt.QFormLayout(box)


def node_selector(node_type):
    """A combo box of the scene's nodes of one type (no "create new"), narrow enough for a module panel."""
    import qt
    import slicer

    combo = slicer.qMRMLNodeComboBox()
    combo.nodeTypes = [node_type]
    combo.addEnabled = False
    combo.sizeAdjustPolicy = qt.QComboBox.AdjustToMinimumContentsLengthWithIcon
    combo.setMRMLScene(slicer.mrmlScene)
    return combo


def button(text, tooltip, slot):
    import qt

    widget = qt.QPushButton(text)
    widget.toolTip = tooltip
    widget.connect("clicked(bool)", lambda _checked=False: slot())
    return widget


def button_grid(buttons, columns):
    """Buttons in rows of `columns` (a module panel is narrow: four or five in one row get clipped)."""
    import qt

    grid = qt.QGridLayout()
    for index, widget in enumerate(buttons):
        grid.addWidget(widget, index // columns, index % columns)
    return grid
