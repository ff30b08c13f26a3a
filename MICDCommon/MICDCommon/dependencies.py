"""Does the chosen Python have what the backend needs, and how what is missing gets installed.

A short probe script runs in the chosen interpreter and reports package versions and GPUs as JSON. Everything is
installed by pip in subprocesses of that interpreter (PythonSlicer for Slicer's own Python), never imported into
Slicer; InstallPlan says how, backendsetup.py runs it off Slicer's main thread.
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

TORCH_BACKEND_VARIABLE = "MICD_TORCH_BACKEND"  # e.g. cu128 or cpu: the PyTorch build, instead of the driver's
LIGHT_THE_TORCH = "light-the-torch>=0.7"
PROBE_PREFIX = "MICD-PROBE "  # the probe's report line

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
print(%(prefix)r + json.dumps(report))
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
        return self.missing_of(REQUIREMENTS)

    def missing_of(self, requirements):
        return [name for name in requirements if not self.packages.get(name)]

    @property
    def backend_found(self):
        return bool(self.data.get("micd"))

    @property
    def gpus(self):
        return list(self.data.get("gpus") or [])

    @property
    def ready(self):
        return not self.missing and self.backend_found

    def not_ready_reason(self, requirements=None):
        """Why the backend cannot run from this Python (None when it can)."""
        missing = self.missing_of(requirements or REQUIREMENTS)
        if missing:
            return "Still missing: " + ", ".join(missing) + "."
        if not self.backend_found:
            return (f"The micd backend cannot be imported by {self.python} ({self.data.get('micd_error', 'not found')})"
                    ". Reinstall the extension, or set MICD_BACKEND_PATH to the folder that contains micd/.")
        return None

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


def probe_command(python, check_gpus=True, requirements=None):
    """The command that prints the probe's report (a `MICD-PROBE {json}` line)."""
    names = {dist: module for dist, (module, _req) in (requirements or REQUIREMENTS).items()}
    return [python, "-c", PROBE_SCRIPT % {"names": names, "gpus": bool(check_gpus), "prefix": PROBE_PREFIX}]


def report_from_lines(lines):
    """The probe's report among output lines (None if it printed none)."""
    for line in lines:
        if line.startswith(PROBE_PREFIX):
            return EnvironmentReport(json.loads(line[len(PROBE_PREFIX):]))
    return None


def probe(launcher, check_gpus=True, timeout=300, run=None):
    """Run the probe in `launcher.python` and wait for it (a console or script call; the panels run it as a job,
    see backendsetup.py); raises DependencyError when the interpreter cannot run at all."""
    command = probe_command(launcher.python, check_gpus)
    try:
        result = (run or processes.run)(command, timeout=timeout, env=launcher.environment())
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DependencyError(f"Could not run the Python interpreter {launcher.python!r} ({e}). Choose a working "
                              "interpreter in the MICD settings, or leave it empty to use Slicer's Python.") from None
    report = report_from_lines((result.stdout or "").splitlines())
    if report is not None:
        return report
    raise DependencyError(f"{launcher.python} did not report its packages (exit code {result.returncode}): "
                          f"{(result.stderr or '').strip()[-500:]}")


class InstallPlan:
    """What is missing, how it will be installed, and the question that asks the user.

    Online, everything missing resolves in ONE pip run (light-the-torch's `install --dry-run --report`, which picks
    the PyTorch index for the graphics driver; MICD_TORCH_BACKEND, e.g. `cu128` or `cpu`, overrides it), so MONAI can
    never pull a CPU torch over the CUDA one. The resolved files are downloaded into a staging folder (Cancel is safe:
    the environment is untouched), then installed from there without the internet. Offline, the last step alone runs
    on a folder of wheels the user made on another machine."""

    def __init__(self, report, requirements=None, wheel_folder=None, torch_backend=None):
        self.report = report
        self.requirements = requirements or REQUIREMENTS
        self.wheel_folder = wheel_folder
        self.torch_backend = torch_backend if torch_backend is not None else os.environ.get(TORCH_BACKEND_VARIABLE)
        self.missing = [self.requirements[name][1] for name in report.missing_of(self.requirements)]

    def message(self):
        lines = [f"MICD needs these Python packages in {self.report.python or 'the chosen Python'}:"]
        for requirement in self.missing:
            lines.append("  - PyTorch (about 2-3 GB with GPU support; the build is chosen for your graphics driver)"
                         if requirement == self.requirements.get("torch", (None, None))[1] else f"  - {requirement}")
        source = (f"from the wheels in {self.wheel_folder}" if self.wheel_folder else
                  "from the internet (several minutes; Slicer stays usable and Cancel is safe until the download "
                  "has finished)")
        lines.append("They are used by the training and segmentation process, not by Slicer itself. They will be "
                     f"installed {source}. Install now?")
        return "\n".join(lines)

    def bootstrap_command(self, python):
        """Installs light-the-torch itself (small; it never touches torch or MONAI)."""
        return [python, "-m", "pip", "install", LIGHT_THE_TORCH]

    def resolve_command(self, python, report_path):
        """One resolution of everything missing, nothing installed: pip writes what it would install to a report."""
        backend = [f"--pytorch-computation-backend={self.torch_backend}"] if self.torch_backend else []
        return [python, "-m", "light_the_torch", "install", "--dry-run", "--quiet", "--report", report_path,
                *backend, *self.missing]

    @staticmethod
    def download_command(python, urls, staging):
        return [python, "-m", "pip", "download", "--no-deps", "--progress-bar", "off", "--dest", staging, *urls]

    def install_command(self, python, folder):
        """Installs from `folder` only (the staging folder or the user's wheels): never from the internet."""
        return [python, "-m", "pip", "install", "--no-index", "--find-links", folder, *self.missing]


def resolved_urls(report_path):
    """The files pip's `--report` says it would install (its schema: install[].download_info.url)."""
    with open(report_path, encoding="utf-8") as f:
        report = json.load(f)
    return [item["download_info"]["url"] for item in report.get("install", [])]


def next_step(python, requirements):
    """What a user can do when an install failed: the proxy, the offline route, the terminal command."""
    quoted = " ".join(f'"{r}"' for r in requirements)
    return ("What to do: check the internet connection (behind a proxy, set HTTPS_PROXY before starting Slicer) and "
            "try again; or install from a folder of wheels made on a machine with internet (see the README, "
            "'Installing without internet'); or install them in a terminal with\n"
            f'  "{python}" -m pip install {quoted}')
