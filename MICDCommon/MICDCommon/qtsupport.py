"""Qt-side helpers shared by both panels (with slicermodule.py the only Qt-dependent files of this package; `qt`
is imported inside the functions, so the rest of the package stays usable without Qt): a QTimer that polls
background jobs on Slicer's main thread, the settings both modules share (which Python runs the backend), dialogs,
and the panels' building blocks (sections, buttons)."""

import os

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
        if getattr(job, "backlog", 0) and not self._catching_up:
            self._catching_up = True  # work waiting already (e.g. a TrainingStart): the first tick when Qt is idle
            self._timer.setInterval(0)
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


def ensure_backend_ready(launcher, log=print, show_error=None, then=None):
    """First-use dependency step. True at once when this session's check already passed for the launcher's Python.
    Otherwise the setup (probe, ask, install; backendsetup.py) runs in the background with a progress dialog and
    Cancel, this returns False, and `then()` runs on the main thread once the backend is ready (e.g. the Train the
    user clicked). Calling again while a setup runs adds `then` to it instead of starting another."""
    if launcher.python in _READY_PYTHONS:
        return True
    running = _SETUPS.get(launcher.python)
    if running is None or running.setup.finished:
        running = SetupProgress(launcher, log, show_error or log)
        _SETUPS[launcher.python] = running
    if then is not None:
        running.continuations.append(then)
    return False


def check_backend(launcher, log, show_error, on_ready):
    """"Check / install dependencies": a fresh setup that also lists the GPUs the Python sees (importing torch there
    takes seconds, so it runs in the background like any setup); `on_ready(report)` gets the probe's report."""
    running = _SETUPS.get(launcher.python)
    if running is not None and not running.setup.finished and not running.setup.check_gpus:
        # a setup started by Train or Segment does not list the GPUs: probe again once it is done
        running.continuations.append(lambda: check_backend(launcher, log, show_error, on_ready))
        return
    if running is None or running.setup.finished:
        running = SetupProgress(launcher, log, show_error, check_gpus=True)
        _SETUPS[launcher.python] = running
    running.continuations.append(lambda: on_ready(running.setup.report))


_SETUPS = {}  # python -> its SetupProgress (one setup per interpreter at a time)
_SETUP_POLLER = []


def _setup_poller():
    if not _SETUP_POLLER:
        _SETUP_POLLER.append(QtJobPoller(interval_ms=200))
    return _SETUP_POLLER[0]


class SetupProgress:
    """A BackendSetup seen from Slicer: its lines in the panel's log and, once something is being installed, a
    non-modal progress dialog (pip's current line, Cancel); at the end the continuations, the error, or the offer to
    install from a folder of wheels when the online install failed."""

    def __init__(self, launcher, log, show_error, wheel_folder=None, check_gpus=False, continuations=None):
        import time

        from .backend import micd_home
        from .backendsetup import BackendSetup

        self.launcher, self.log, self.show_error = launcher, log, show_error
        self.continuations = list(continuations or [])
        self.dialog = None
        folder = os.path.join(micd_home(), "setup", time.strftime("%Y%m%d-%H%M%S") + f"-{id(self) % 10000}")
        log(f"Checking the Python packages of {launcher.python} ...")
        self.setup = BackendSetup(launcher, folder, ask=confirm, on_progress=self._progress,
                                  on_finished=self._finished, wheel_folder=wheel_folder, check_gpus=check_gpus)
        _setup_poller().add(self.setup)

    def _progress(self, text):
        from .backendsetup import INSTALLING

        if self.setup_state() == INSTALLING and self.dialog is None:
            self._show_dialog()
        if self.dialog is not None:
            self.dialog.labelText = f"{self.setup.step_text}\n{text[-160:]}"
        self.log(text)

    def setup_state(self):
        return getattr(self, "setup", None) and self.setup.state

    def _show_dialog(self):
        import qt

        dialog = qt.QProgressDialog(main_window())
        dialog.windowTitle = "MICD: installing Python packages"
        dialog.setRange(0, 0)  # pip gives no overall fraction: busy, with its current line as the label
        dialog.autoClose = False
        dialog.autoReset = False
        dialog.minimumDuration = 0
        dialog.connect("canceled()", self.cancel)
        dialog.show()
        self.dialog = dialog

    def cancel(self):
        self.setup.request_cancel()

    def _finished(self, setup):
        from .backendsetup import CANCELLED, FAILED, READY

        if self.dialog is not None:
            self.dialog.close()
            self.dialog = None
        if setup.state == READY:
            _READY_PYTHONS.add(self.launcher.python)
            for then in self.continuations:
                then()
        elif setup.state == FAILED and setup.plan is not None and not setup.wheel_folder:
            self.show_error(setup.message)
            self._offer_wheel_folder()
        elif setup.state == CANCELLED:
            self.log(setup.message)
        else:
            self.show_error(setup.message)

    def _offer_wheel_folder(self):
        import qt

        if not confirm("Install from a folder of wheels instead? (For a computer without internet: make the folder on "
                       "another computer as the README's 'Installing without internet' says.)"):
            return
        folder = qt.QFileDialog.getExistingDirectory(main_window(), "Folder of wheels")
        if folder:
            _SETUPS[self.launcher.python] = SetupProgress(self.launcher, self.log, self.show_error,
                                                          wheel_folder=folder, continuations=self.continuations)


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
    """A combo box of the scene's nodes of exactly one type (no "create new"), narrow enough for a module panel.
    Subclasses are not offered: label maps and vector volumes derive from vtkMRMLScalarVolumeNode."""
    import qt
    import slicer

    combo = slicer.qMRMLNodeComboBox()
    combo.nodeTypes = [node_type]
    combo.showChildNodeTypes = False
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
