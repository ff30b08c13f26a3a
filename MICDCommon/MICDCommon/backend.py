"""Where the backend lives and which Python runs it: builds `python -m micd ...` command lines and their environment.

By default the backend runs with Slicer's own Python (`PythonSlicer`); a user may choose another interpreter (for
example a separate environment with a CUDA build of torch). The extension ships the backend package: installed, it
sits in `MICDBackend/` beside this package; in a source checkout it is `backend/` at the repository root.
"""

import os
import shutil
import sys

BACKEND_PATH_VARIABLE = "MICD_BACKEND_PATH"
HOME_VARIABLE = "MICD_HOME"

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def micd_home():
    """The folder holding trained models (`models/`) and training runs (`runs/`)."""
    return os.environ.get(HOME_VARIABLE) or os.path.join(os.path.expanduser("~"), "MICD")


def slicer_python():
    """Slicer's own Python launcher (`PythonSlicer`), or this interpreter when that is not found."""
    return shutil.which("PythonSlicer") or sys.executable


def find_backend_path():
    """The folder to put on PYTHONPATH so that `import micd` finds the shipped backend (None if not shipped)."""
    candidates = [os.environ.get(BACKEND_PATH_VARIABLE),
                  os.path.join(os.path.dirname(_PACKAGE_DIR), "MICDBackend"),      # installed extension
                  os.path.join(os.path.dirname(os.path.dirname(_PACKAGE_DIR)), "backend")]  # source checkout
    for path in candidates:
        if path and os.path.isfile(os.path.join(path, "micd", "__init__.py")):
            return os.path.abspath(path)
    return None


class BackendLauncher:
    """Command lines and environment for running `micd` with the chosen Python.

    python: interpreter path, or a function returning it (asked at each use, so a changed setting applies to the
    next job); None means Slicer's Python. threads: OMP/MKL thread limit for the job (None: leave)."""

    def __init__(self, python=None, backend_path=None, threads=None, extra_env=None):
        self._python = python
        self.backend_path = backend_path if backend_path is not None else find_backend_path()
        self.threads = threads
        self.extra_env = dict(extra_env or {})

    @property
    def python(self):
        chosen = self._python() if callable(self._python) else self._python
        return chosen or slicer_python()

    def with_threads(self, threads):
        return BackendLauncher(self._python, self.backend_path, threads, self.extra_env)

    @property
    def uses_slicer_python(self):
        """True when the job runs with Slicer's own Python, so packages are installed with Slicer's helpers."""
        default = slicer_python()
        try:
            return os.path.samefile(self.python, default)
        except OSError:
            return self.python == default

    def command(self, subcommand, *args):
        return [self.python, "-m", "micd", subcommand, *[str(a) for a in args]]

    def environment(self):
        env = self._base_environment()
        if self.backend_path:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (self.backend_path, env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("PYTHONIOENCODING", "utf-8")
        if self.threads:
            for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                env[name] = str(self.threads)
        env.update(self.extra_env)
        return env

    def _base_environment(self):
        """Slicer's environment for PythonSlicer; for another interpreter, the environment Slicer started with
        (Slicer's PYTHONHOME/PYTHONPATH would break a foreign Python)."""
        if not self.uses_slicer_python:
            try:
                import slicer.util
                return dict(slicer.util.startupEnvironment())
            except Exception:  # noqa: BLE001 - outside the Slicer application
                pass
        return dict(os.environ)
