"""Does the chosen Python have what the backend needs, and installing what is missing after the user agrees.

A short probe script runs in the chosen interpreter and reports package versions and GPUs as JSON. Installation:
torch through the PyTorch extension's utilities when that extension is present (it picks the CUDA build for the
driver), other packages with Slicer's pip helpers (`slicer.packaging`, Slicer >= 5.12, else `slicer.util`);
for a user-chosen interpreter, `python -m pip install` in that interpreter.
"""

import json
import subprocess

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


def probe(launcher, check_gpus=True, timeout=300, run=subprocess.run):
    """Run the probe in `launcher.python`; raises DependencyError when the interpreter cannot run at all."""
    names = {dist: module for dist, (module, _req) in REQUIREMENTS.items()}
    script = PROBE_SCRIPT % {"names": names, "gpus": bool(check_gpus)}
    try:
        result = run([launcher.python, "-c", script], capture_output=True, text=True, timeout=timeout,
                     env=launcher.environment())
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


def _slicer_packaging():
    """Slicer's pip helpers: `slicer.packaging` (5.12+) or `slicer.util.pip_install`."""
    import slicer
    packaging = getattr(slicer, "packaging", None)
    if packaging is None:
        try:
            import slicer.packaging as packaging
        except ImportError:
            import slicer.util as packaging
    return packaging


def _torch_utils():
    """The PyTorch extension's logic, or None when that extension is not installed."""
    try:
        import PyTorchUtils
        return PyTorchUtils.PyTorchUtilsLogic()
    except Exception:  # noqa: BLE001 - extension absent or broken
        return None


class DependencyInstaller:
    """Checks the chosen Python and installs what is missing, only after `confirm(message) -> bool` says yes.

    packaging / torch_utils / run are injectable (tests pass fakes); by default they are looked up in Slicer."""

    def __init__(self, launcher, confirm, packaging=None, torch_utils=None, run=subprocess.run, log=print):
        self.launcher = launcher
        self.confirm = confirm
        self._packaging = packaging
        self._torch_utils = torch_utils
        self.run = run
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
                                      "log for pip's messages; behind a proxy set HTTPS_PROXY, or install them by "
                                      "hand in " + report.python)
        if not report.backend_found:
            raise DependencyError("The micd backend cannot be imported by " + report.python + " (" +
                                  str(report.data.get("micd_error", "not found")) + "). Reinstall the extension, or "
                                  "set MICD_BACKEND_PATH to the folder that contains micd/.")
        return True

    def install(self, plan):
        if self.launcher.uses_slicer_python:
            self._install_in_slicer(plan)
        else:
            self._install_with_pip(([REQUIREMENTS["torch"][1]] if plan.torch else []) + plan.packages)

    def _install_in_slicer(self, plan):
        packaging = self._packaging or _slicer_packaging()
        if plan.torch:
            torch_utils = self._torch_utils if self._torch_utils is not None else _torch_utils()
            if torch_utils is not None:
                self.log("Installing PyTorch with the PyTorch extension")
                if torch_utils.installTorch(askConfirmation=False, torchVersionRequirement=">=2.0") is None:
                    raise DependencyError("The PyTorch extension could not install torch. Open the PyTorch Utils "
                                          "module, install it there, restart Slicer and try again.")
            else:
                self.log("PyTorch extension not found: installing torch with pip (CPU or default CUDA build)")
                packaging.pip_install(REQUIREMENTS["torch"][1])
        if plan.packages:
            self.log("Installing " + " ".join(plan.packages))
            packaging.pip_install(list(plan.packages))  # both Slicer helpers take a list of requirement strings

    def _install_with_pip(self, requirements):
        self.log(f"Installing into {self.launcher.python}: " + " ".join(requirements))
        result = self.run([self.launcher.python, "-m", "pip", "install", *requirements], capture_output=True,
                          text=True, env=self.launcher.environment())
        if result.returncode != 0:
            raise DependencyError(f"pip failed in {self.launcher.python} (exit code {result.returncode}): "
                                  f"{(result.stderr or result.stdout or '').strip()[-800:]}")
