"""Making the backend's Python ready without blocking Slicer: probe it, ask the user, install what is missing, probe
again. Each step is a process run like any background job (jobs.BackgroundJob) and `poll()`ed from a Qt timer, so
Slicer's main thread only ever reads a few log lines; nothing here needs Qt.

Online (see dependencies.InstallPlan): install light-the-torch, resolve everything missing in one pip run (a dry run
that writes a report), download the resolved files into a staging folder, install from that folder. Cancel stops the
resolution and the download at once and leaves the environment as it was; the two installs (light-the-torch, small,
and the last step) change the environment and are never interrupted: a Cancel then takes effect when the step has
finished. Offline, only the last step runs, on the user's folder of wheels.
"""

import os
import shutil
import time

from . import dependencies
from .jobs import CANCELLED, FAILED, SUCCEEDED, BackgroundJob, JobError

CHECKING, ASKING, INSTALLING = "checking", "asking", "installing"
READY, DECLINED = "ready", "declined"
SETUP_FINISHED = (READY, DECLINED, FAILED, CANCELLED)


class SetupStep:
    """One process of the setup: its kind (probe, bootstrap, resolve, download, install), what it is called for the
    user, its command, and whether Cancel may stop it."""

    def __init__(self, kind, title, command, cancellable):
        self.kind, self.title, self.command, self.cancellable = kind, title, list(command), cancellable


class BackendSetup:
    """Probe → (ask) → install steps → probe, for one Python. Poll it until `finished`; `state` is then ready,
    declined, failed (`message` says why and what to do) or cancelled.

    `ask(message) -> bool` is asked once, on the main thread, before anything is installed. `on_progress(text)`
    gets each output line of the running step (pip's "Collecting ...", "Downloading ... (2.1 GB)", ...);
    `step_text` says which step runs ("Step 3 of 4: downloading"); `on_finished(setup)` runs once at the end.
    `folder` holds the setup's log and staging files (the downloads are deleted at the end, the log is kept)."""

    def __init__(self, launcher, folder, ask, on_progress=None, on_finished=None, wheel_folder=None,
                 check_gpus=False, requirements=None):
        self.launcher = launcher
        self.folder = os.path.abspath(folder)
        self.ask = ask
        self.on_progress = on_progress
        self.on_finished = on_finished
        self.wheel_folder = wheel_folder
        self.check_gpus = check_gpus
        self.requirements = requirements or dependencies.REQUIREMENTS
        self.state = CHECKING
        self.message = ""
        self.report = None  # the last probe's EnvironmentReport
        self.plan = None
        self.step_text = "Checking the Python packages"
        self.installed = False  # the environment was changed
        self._steps = []
        self._step_index = 0
        self._job = None
        self._lines = []
        self._cancel_after_step = False
        os.makedirs(self.folder, exist_ok=True)
        self._run(self._probe_step(self.step_text))

    # --- the job interface QtJobPoller and poll_until_finished use --------------------------------------------------
    @property
    def finished(self):
        return self.state in SETUP_FINISHED

    backlog = 0  # a setup's output is a few hundred lines: each poll delivers all of it

    def poll(self, time_slice=None):
        if self.finished or self._job is None:
            return []
        self._job.poll()
        if self._job.finished:
            self._step_ended(self._job)
        return []

    def request_cancel(self):
        """Stop now if the running step allows it, else when it has finished (the install step is never cut)."""
        if self.finished:
            return
        step = self._current
        if step is not None and step.cancellable and self._job is not None:
            self._job.request_cancel(grace_s=10.0)
        else:
            self._cancel_after_step = True
            self._progress("Cancel requested: the packages are being installed from the downloaded files; setup "
                           "stops as soon as that has finished (interrupting it could leave a broken environment).")

    @property
    def staging(self):
        return os.path.join(self.folder, "downloads")

    @property
    def log_file(self):
        return os.path.join(self.folder, "setup.log")

    # --- steps ---------------------------------------------------------------------------------------------------
    def _probe_step(self, title):
        return SetupStep("probe", title, dependencies.probe_command(self.launcher.python, self.check_gpus,
                                                                    self.requirements), cancellable=True)

    def _run(self, step):
        self._current = step
        self._lines = []
        self.step_text = step.title
        self._progress(step.title)
        try:
            self._job = BackgroundJob.start(step.command, self.folder, kind="setup", env=self.launcher.environment(),
                                            on_log=self._line)
        except JobError as e:
            self._finish(FAILED, str(e))

    def _line(self, line):
        line = line.rstrip()
        self._lines.append(line)
        if not line.startswith(dependencies.PROBE_PREFIX):
            self._progress(line)

    def _step_ended(self, job):
        step, lines = self._current, self._lines
        self._job = None
        if job.state == CANCELLED:
            self._finish(CANCELLED, "Setup cancelled; nothing was installed." if not self.installed else
                         "Setup cancelled after the install step had finished.")
            return
        if step.kind == "probe":
            self._probe_ended(job, lines)
            return
        if job.state != SUCCEEDED:
            tail = "\n".join(l for l in lines if l.strip())[-1500:]
            self._finish(FAILED, f"{step.title} failed (exit code {job.returncode}).\n{tail}\n" +
                         dependencies.next_step(self.launcher.python, self.plan.missing))
            return
        if step.kind == "install":
            self.installed = True
        if self._cancel_after_step:
            self._finish(CANCELLED, "Setup stopped as asked, after the install step had finished.")
            return
        if step.kind == "resolve":
            self._add_downloads()
        self._next_step()

    def _probe_ended(self, job, lines):
        report = dependencies.report_from_lines(lines)
        if report is None:
            self._finish(FAILED, f"{self.launcher.python} did not report its packages (exit code {job.returncode}): "
                         + "\n".join(lines[-10:]) + "\nChoose a working interpreter in the MICD settings, or leave "
                         "it empty to use Slicer's Python.")
            return
        self.report = report
        if not report.missing_of(self.requirements):
            reason = None if report.backend_found else report.not_ready_reason(self.requirements)
            self._finish(FAILED if reason else READY, reason or f"The backend is ready in {report.python}.")
            return
        if self.plan is not None:  # the probe after installing
            self._finish(FAILED, report.not_ready_reason(self.requirements) + " See the log for pip's messages: "
                         f"{self.log_file}\n" + dependencies.next_step(report.python, self.plan.missing))
            return
        self.plan = dependencies.InstallPlan(report, self.requirements, wheel_folder=self.wheel_folder)
        self.state = ASKING
        if not self.ask(self.plan.message()):
            self._finish(DECLINED, "The MICD backend needs these packages; nothing was installed.")
            return
        self.state = INSTALLING
        self._steps = self._install_steps()
        self._step_index = 0
        self._run(self._steps[0])

    def _install_steps(self):
        python, plan = self.launcher.python, self.plan
        if self.wheel_folder:
            return [SetupStep("install", f"Installing from the wheels in {self.wheel_folder}",
                              plan.install_command(python, self.wheel_folder), cancellable=False)]
        os.makedirs(self.staging, exist_ok=True)
        return [SetupStep("bootstrap", "Step 1 of 4: installing light-the-torch", plan.bootstrap_command(python),
                          cancellable=False),
                SetupStep("resolve", "Step 2 of 4: resolving what to install",
                          plan.resolve_command(python, self._report_path), cancellable=True),
                SetupStep("install", "Step 4 of 4: installing the downloaded files",
                          plan.install_command(python, self.staging), cancellable=False)]

    @property
    def _report_path(self):
        return os.path.join(self.folder, "resolved.json")

    def _add_downloads(self):
        urls = dependencies.resolved_urls(self._report_path)
        self._progress(f"{len(urls)} files to download")
        if urls:
            self._steps.insert(self._step_index + 1, SetupStep(
                "download", "Step 3 of 4: downloading", self.plan.download_command(self.launcher.python, urls, self.staging),
                cancellable=True))

    def _next_step(self):
        self._step_index += 1
        if self._step_index < len(self._steps):
            self._run(self._steps[self._step_index])
        else:
            self._run(self._probe_step("Checking the installed packages"))

    def _finish(self, state, message):
        self.state, self.message = state, message
        self._current = None
        shutil.rmtree(self.staging, ignore_errors=True)  # gigabytes; the log stays
        self._progress(message)
        if self.on_finished:
            self.on_finished(self)

    def _progress(self, text):
        with open(self.log_file, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%H:%M:%S')} {text}\n")
        if self.on_progress:
            self.on_progress(text)

    def wait(self, timeout=None, interval=0.2):
        from .jobs import poll_until_finished

        return poll_until_finished(self, timeout, interval)

