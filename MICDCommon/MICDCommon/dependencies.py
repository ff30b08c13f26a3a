"""Does the chosen Python have what the backend needs, and installing what is missing after the user agrees.

A short probe script runs in the chosen interpreter and reports package versions and GPUs as JSON. Everything is
installed in subprocesses of that interpreter (PythonSlicer for Slicer's own Python), never imported into Slicer:
torch with light-the-torch, which picks the build for the graphics driver's CUDA version (MICD_TORCH_BACKEND, e.g.
`cu128` or `cpu`, overrides it), the other packages with Slicer's `pip_install` (or `python -m pip` for another
interpreter). A failed install raises DependencyError whose message says what to do next.
"""

import json
import os
import subprocess

from . import processes

# distribution name -> (import name, requirement)
REQUIREMENTS = {
    "torch": ("torch", "torch>=2.0"),
    "monai": ("monai", "monai>=1.3"),
    "SimpleITK": ("SimpleITK", "SimpleITK>=2.2"),
    "numpy": ("numpy", "numpy>=1.23"),
    "safetensors": ("safetensors", "safetensors>=0.4"),
    "pynrrd": ("nrrd", "pynrrd>=1.0"),
    "tqdm": ("tqdm", "tqdm>=4.60"),
    "scipy": ("scipy", "scipy>=1.9"),
}

PROBE_SCRIPT = r"""
import importlib.util, json, sys
from importlib import metadata
names = %(names)r
report = {"python": sys.executable, "version": sys.version.split()[0], "packages": {}, "gpus": [], "micd": None}
for dist, module in names.items():
    try:
        report["packages"][dist] = metadata.version(dist) if importlib.util.find_spec(module) else None
    except Exception:
        report["packages"][dist] = None
try:
    import micd
    report["micd"] = getattr(micd, "__version__", "?")
except Exception as e:
    report["micd_error"] = str(e)
if %(gpus)r and report["packages"].get("torch"):
    try:
        import torch
        report["cuda_build"] = torch.version.cuda
        if torch.cuda.is_available():
            report["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception as e:
        report["torch_error"] = str(e)
print("MICD-PROBE " + json.dumps(report))
"""


class DependencyError(Exception):
    """Installing or checking failed; the message says what to do next."""


class EnvironmentReport:
    """What the probe found in one interpreter."""

    def __init__(self, data):
        self.data = data

    @property
    def python(self):
        return self.data.get("python", "")

    @property
    def packages(self):
        return self.data.get("packages") or {}

    @property
    def missing(self):
        return [name for name in REQUIREMENTS if not self.packages.get(name)]

    @property
    def backend_found(self):
        return bool(self.data.get("micd"))

    @property
    def gpus(self):
        return list(self.data.get("gpus") or [])

    @property
    def ready(self):
        return not self.missing and self.backend_found

    def device_choices(self):
        """Device options for the settings: auto, each GPU, cpu."""
        return ["auto"] + [f"cuda:{i}" for i in range(len(self.gpus))] + ["cpu"]

    def describe(self):
        lines = [f"Python {self.data.get('version', '?')} at {self.python}"]
        for name in REQUIREMENTS:
            lines.append(f"  {name}: {self.packages.get(name) or 'MISSING'}")
        lines.append(f"  micd backend: {self.data.get('micd') or 'NOT FOUND'}")
        lines.append(f"  GPUs: {', '.join(self.gpus) if self.gpus else 'none usable (training will use the CPU)'}")
        return "\n".join(lines)


def probe(launcher, check_gpus=True, timeout=300, run=None):
    """Run the probe in `launcher.python`; raises DependencyError when the interpreter cannot run at all."""
    names = {dist: module for dist, (module, _req) in REQUIREMENTS.items()}
    script = PROBE_SCRIPT % {"names": names, "gpus": bool(check_gpus)}
    try:
        result = (run or processes.run)([launcher.python, "-c", script], timeout=timeout, env=launcher.environment())
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DependencyError(f"Could not run the Python interpreter {launcher.python!r} ({e}). Choose a working "
                              "interpreter in the MICD settings, or leave it empty to use Slicer's Python.") from None
    for line in (result.stdout or "").splitlines():
        if line.startswith("MICD-PROBE "):
            return EnvironmentReport(json.loads(line[len("MICD-PROBE "):]))
    raise DependencyError(f"{launcher.python} did not report its packages (exit code {result.returncode}): "
                          f"{(result.stderr or '').strip()[-500:]}")


class InstallPlan:
    """What will be installed, and the message that asks the user."""

    def __init__(self, report):
        self.report = report
        self.torch = "torch" in report.missing
        self.packages = [REQUIREMENTS[name][1] for name in report.missing if name != "torch"]

    @property
    def empty(self):
        return not self.torch and not self.packages

    def message(self):
        lines = [f"MICD needs these Python packages in {self.report.python or 'the chosen Python'}:"]
        if self.torch:
            lines.append("  - PyTorch (about 2-3 GB with GPU support; the build is chosen for your graphics driver)")
        lines += [f"  - {p}" for p in self.packages]
        lines.append("They are used by the training and segmentation process, not by Slicer itself. Downloading can "
                     "take several minutes. Install now?")
        return "\n".join(lines)


TORCH_BACKEND_VARIABLE = "MICD_TORCH_BACKEND"
LIGHT_THE_TORCH = "light-the-torch>=0.7"


def _slicer_pip():
    """Slicer's pip helper: `slicer.packaging.pip_install` (5.12+) or `slicer.util.pip_install`."""
    import slicer

    packaging = getattr(slicer, "packaging", None)
    return getattr(packaging, "pip_install", None) or slicer.util.pip_install


def _next_step(python, requirements):
    return ("What to do: check the internet connection (behind a proxy, set HTTPS_PROXY before starting Slicer) and "
            "press 'Check / install dependencies' again, or install them in a terminal with\n"
            f'  "{python}" -m pip install ' + " ".join(f'"{r}"' for r in requirements))


class DependencyInstaller:
    """Checks the chosen Python and installs what is missing, only after `confirm(message) -> bool` says yes.

    pip_install (Slicer's helper, for Slicer's own Python) and run (subprocesses) are injectable; tests pass fakes."""

    def __init__(self, launcher, confirm, pip_install=None, run=None, log=print):
        self.launcher = launcher
        self.confirm = confirm
        self._pip_install = pip_install
        self.run = run or processes.run
        self.log = log

    def check(self, check_gpus=True):
        return probe(self.launcher, check_gpus=check_gpus, run=self.run)

    def ensure(self, report=None):
        """True when everything is there (installing it if the user agrees); False when the user declined."""
        report = report or self.check(check_gpus=False)
        if report.ready:
            return True
        plan = InstallPlan(report)
        if not plan.empty:
            if not self.confirm(plan.message()):
                return False
            self.install(plan)
            report = self.check(check_gpus=False)
            if report.missing:
                raise DependencyError("Still missing after installing: " + ", ".join(report.missing) + ". See the "
                                      "log for pip's messages.\n" + _next_step(report.python, [
                                          REQUIREMENTS[name][1] for name in report.missing]))
        if not report.backend_found:
            raise DependencyError("The micd backend cannot be imported by " + report.python + " (" +
                                  str(report.data.get("micd_error", "not found")) + "). Reinstall the extension, or "
                                  "set MICD_BACKEND_PATH to the folder that contains micd/.")
        return True

    def install(self, plan):
        if plan.torch:
            self.install_torch()
        if plan.packages:
            self.log("Installing " + " ".join(plan.packages))
            if self.launcher.uses_slicer_python:
                self._slicer_pip_install(list(plan.packages))
            else:
                self._run_pip(["pip", "install", *plan.packages], plan.packages)

    def install_torch(self):
        """torch for the driver's CUDA version (light-the-torch decides), installed by the chosen Python itself."""
        requirement = REQUIREMENTS["torch"][1]
        backend = os.environ.get(TORCH_BACKEND_VARIABLE)
        self.log("Installing PyTorch with light-the-torch" + (f" ({backend})" if backend else ""))
        self._run_pip(["pip", "install", LIGHT_THE_TORCH], [LIGHT_THE_TORCH])
        self._run_pip(["light_the_torch", "install", *([f"--pytorch-computation-backend={backend}"] if backend
                                                        else []), requirement], [requirement])

    def _slicer_pip_install(self, requirements):
        try:
            (self._pip_install or _slicer_pip())(requirements)
        except (subprocess.CalledProcessError, OSError) as e:
            raise DependencyError(f"Installing {', '.join(requirements)} failed ({e}).\n" +
                                  _next_step(self.launcher.python, requirements)) from None

    def _run_pip(self, module_args, requirements):
        """`python -m MODULE ARGS` in the chosen Python, its output in the log."""
        command = [self.launcher.python, "-m", *module_args]
        try:
            result = self.run(command, env=self.launcher.environment())
        except (OSError, subprocess.SubprocessError) as e:
            raise DependencyError(f"Could not run {command[0]} ({e}).\n" +
                                  _next_step(self.launcher.python, requirements)) from None
        output = (result.stdout or "") + (result.stderr or "")
        for line in output.splitlines()[-20:]:
            self.log(line)
        if result.returncode != 0:
            raise DependencyError(f"Installing {', '.join(requirements)} failed (exit code {result.returncode}): "
                                  f"{output.strip()[-500:]}\n" + _next_step(self.launcher.python, requirements))
