"""The dependency setup runs off Slicer's main thread: probe, one resolution of everything missing, a staged download
that Cancel can stop without touching the environment, an install from the staging folder (or from a user's folder
of wheels, offline), a final probe. Driven through processes like the real ones: a fake interpreter that records its
command lines (fake_python.py), and a real pip in a fresh virtual environment for the offline route."""

import json
import os
import pathlib
import subprocess
import sys
import time
import zipfile

import pytest

from MICDCommon import dependencies
from MICDCommon.backend import BackendLauncher
from MICDCommon.backendsetup import CANCELLED, DECLINED, FAILED, READY, BackendSetup
from fake_python import PRESENT, FakePython

HERE = pathlib.Path(__file__).resolve().parent
BACKEND = HERE.parent / "backend"


def _setup(fake, tmp_path, answer=True, **kwargs):
    questions, lines = [], []
    setup = BackendSetup(fake.launcher, tmp_path / "setup", ask=lambda m: questions.append(m) or answer,
                         on_progress=lines.append, **kwargs)
    return setup, questions, lines


@pytest.mark.skipif(os.name == "nt", reason="the fake interpreter is a shell script")
def test_online_install_resolves_everything_in_one_run_downloads_then_installs_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("MICD_TORCH_BACKEND", "cu128")
    fake = FakePython(tmp_path, PRESENT)
    setup, questions, lines = _setup(fake, tmp_path)
    assert setup.wait(timeout=60) == READY, setup.message
    assert "PyTorch" in questions[0] and "monai>=1.3" in questions[0]
    modules = [c[1:3] for c in fake.calls() if c[0] == "-m"]
    assert modules == [["pip", "install"], ["light_the_torch", "install"], ["pip", "download"], ["pip", "install"]]
    bootstrap, resolve, download, install = [c for c in fake.calls() if c[0] == "-m"]
    assert bootstrap[3:] == [dependencies.LIGHT_THE_TORCH]
    # torch and MONAI in ONE resolution, with the driver's index: MONAI cannot replace the CUDA torch afterwards
    assert "--dry-run" in resolve and "--pytorch-computation-backend=cu128" in resolve
    assert {"torch>=2.0", "monai>=1.3"} <= set(resolve)
    assert [a for a in download if "://" in a] == ["https://files.example/torch-1.0.whl",
                                                  "https://files.example/monai-1.0.whl"]
    staging = str(tmp_path / "setup" / "downloads")
    assert install[3:] == ["--no-index", "--find-links", staging, "torch>=2.0", "monai>=1.3"]
    assert fake.calls()[-1][0] == "-c"  # the final probe
    assert fake.packages()["torch"] == "1.0" and not os.path.exists(staging)  # the downloads are gone, the log stays
    assert any(line.startswith("Step 3 of 4") for line in lines) and (tmp_path / "setup" / "setup.log").exists()


@pytest.mark.skipif(os.name == "nt", reason="the fake interpreter is a shell script")
def test_declined_installs_nothing_and_ready_asks_nothing(tmp_path):
    fake = FakePython(tmp_path, PRESENT)
    setup, questions, _ = _setup(fake, tmp_path, answer=False)
    assert setup.wait(timeout=60) == DECLINED and len(questions) == 1
    assert [c[0] for c in fake.calls()] == ["-c"]
    (tmp_path / "ready").mkdir()
    ready = FakePython(tmp_path / "ready", {**PRESENT, "torch": "2.9", "monai": "1.5"})
    setup, questions, _ = _setup(ready, tmp_path / "ready")
    assert setup.wait(timeout=60) == READY and not questions


@pytest.mark.timing
@pytest.mark.skipif(os.name == "nt", reason="the fake interpreter is a shell script")
def test_cancel_during_the_download_leaves_the_environment_untouched(tmp_path):
    fake = FakePython(tmp_path, PRESENT, download_s=120)  # a 2-minute download
    setup, _, lines = _setup(fake, tmp_path)
    deadline = time.monotonic() + 60
    while not any(line.startswith("Downloading torch") for line in lines) and time.monotonic() < deadline:
        setup.poll()
        time.sleep(0.05)
    slowest = 0.0
    for _ in range(40):  # the polls a Qt timer would make meanwhile: each returns at once
        t0 = time.perf_counter()
        setup.poll()
        slowest = max(slowest, time.perf_counter() - t0)
        time.sleep(0.05)
    assert slowest < 0.1
    t0 = time.monotonic()
    setup.request_cancel()
    assert setup.wait(timeout=30) == CANCELLED and time.monotonic() - t0 < 15
    assert "nothing was installed" in setup.message
    assert fake.packages() == PRESENT  # the environment as it was
    assert not any(c[1:3] == ["pip", "install"] and "--no-index" in c for c in fake.calls() if c[0] == "-m")
    assert not (tmp_path / "setup" / "downloads").exists()


@pytest.mark.skipif(os.name == "nt", reason="the fake interpreter is a shell script")
def test_cancel_during_the_install_step_waits_for_it(tmp_path):
    fake = FakePython(tmp_path, PRESENT)
    setup, _, lines = _setup(fake, tmp_path)
    while setup.step_text and not setup.step_text.startswith("Step 4") and not setup.finished:
        setup.poll()
        time.sleep(0.02)
    setup.request_cancel()
    assert any("setup stops as soon as that has finished" in line for line in lines)
    assert setup.wait(timeout=60) == CANCELLED and setup.installed
    assert fake.packages()["torch"] == "1.0"  # installed whole, never cut


@pytest.mark.skipif(os.name == "nt", reason="the fake interpreter is a shell script")
def test_failed_download_says_what_to_do_and_offers_the_offline_route(tmp_path):
    fake = FakePython(tmp_path, PRESENT, fail="download")
    setup, _, _ = _setup(fake, tmp_path)
    assert setup.wait(timeout=60) == FAILED
    assert "Step 3 of 4: downloading failed" in setup.message and "Could not find a version" in setup.message
    assert "HTTPS_PROXY" in setup.message and "folder of wheels" in setup.message
    assert fake.packages() == PRESENT


@pytest.mark.skipif(os.name == "nt", reason="the fake interpreter is a shell script")
def test_wheel_folder_route_is_one_offline_install(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name in ("torch-2.9.0-cp39-none-any.whl", "monai-1.5.0-py3-none-any.whl"):
        (wheels / name).write_bytes(b"")
    fake = FakePython(tmp_path, PRESENT)
    setup, questions, _ = _setup(fake, tmp_path, wheel_folder=str(wheels))
    assert setup.wait(timeout=60) == READY, setup.message
    assert str(wheels) in questions[0]
    installs = [c for c in fake.calls() if c[0] == "-m"]
    assert installs == [["-m", "pip", "install", "--no-index", "--find-links", str(wheels), "torch>=2.0",
                         "monai>=1.3"]]


def _wheel(folder, name, version, module_source):
    """A real wheel file (the format pip installs: the module, METADATA, WHEEL, RECORD)."""
    dist_info = f"{name}-{version}.dist-info"
    files = {f"{name}.py": module_source,
             f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: micd-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{dist_info}/RECORD"] = "".join(f"{p},,\n" for p in files) + f"{dist_info}/RECORD,,\n"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for member, text in files.items():
            z.writestr(member, text)
    return path


def test_offline_install_from_a_real_wheel_folder_with_real_pip(tmp_path):
    """A fresh virtual environment without internet access: pip installs the requirement from the folder and the
    probe then finds it."""
    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True, timeout=300)
    python = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "micdwheeltest", "1.2", "VALUE = 42\n")
    requirements = {"micdwheeltest": ("micdwheeltest", "micdwheeltest>=1.0")}
    launcher = BackendLauncher(python=str(python), backend_path=str(BACKEND),
                               extra_env={"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    questions = []
    setup = BackendSetup(launcher, tmp_path / "setup", ask=lambda m: questions.append(m) or True,
                         wheel_folder=str(wheels), requirements=requirements)
    assert setup.wait(timeout=300) == READY, setup.message
    assert setup.report.packages == {"micdwheeltest": "1.2"} and setup.installed
    out = subprocess.run([str(python), "-c", "import micdwheeltest; print(micdwheeltest.VALUE)"],
                         capture_output=True, encoding="utf-8", timeout=60)
    assert out.stdout.strip() == "42"
    log = (tmp_path / "setup" / "setup.log").read_text(encoding="utf-8")
    assert "Successfully installed micdwheeltest-1.2" in log


# --- through the panels, in the harness -------------------------------------------------------------------------
def _spin(until, timeout, calls):
    """Run Qt's event loop (the setup's QTimer polls) until `until()`; record each processEvents call's (wall, CPU)
    seconds on this thread."""
    import slicer

    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:
        t0, c0 = time.perf_counter(), time.thread_time()
        slicer.app.processEvents()
        calls.append((time.perf_counter() - t0, time.thread_time() - c0))
        time.sleep(0.01)
    return until()


def _responsive(calls):
    """Main-thread work under 100 ms per call. Wall time alone would measure the other processes on 2 busy cores
    (a call that waited for a process, as the old synchronous pip did, waits seconds: the wall bound catches it)."""
    walls, cpus = sorted(w for w, _ in calls), [c for _, c in calls]
    return max(cpus) < 0.1 and walls[len(walls) // 2] < 0.02 and walls[-1] < 0.5


def _training_widget(launcher):
    from unittest import mock

    from MICDTrainingLib.Widget import TrainingWidget

    logic = mock.MagicMock(name="TrainingLogic")
    logic.launcher = launcher
    logic.runs_to_attach.return_value = []
    logic.resumable_runs.return_value = []
    return TrainingWidget(logic)  # the real dependency step, progress dialog and error display


@pytest.mark.skipif(os.name == "nt", reason="the fake interpreter is a shell script")
def test_slow_install_leaves_slicer_responsive_and_cancels_cleanly(scene, tmp_path):
    import qt
    from dialogs import DIALOGS

    from MICDCommon import qtsupport

    fake = FakePython(tmp_path, PRESENT, download_s=120)  # a 2-minute download
    panel = _training_widget(fake.launcher)
    DIALOGS.answer(qt.QMessageBox.Yes)  # "MICD needs these Python packages ... Install now?"
    panel.training.form.dependenciesButton.click()  # returns at once: the setup runs in the background
    running = qtsupport._SETUPS[str(fake.python)]
    calls = []
    assert _spin(lambda: running.dialog is not None and "Downloading torch" in running.dialog.labelText, 60, calls)
    assert running.dialog.visible and "Step 3 of 4" in running.dialog.labelText
    calls.clear()
    _spin(lambda: False, 5, calls)  # five seconds of Slicer's event loop during the download
    assert len(calls) > 100 and _responsive(calls), sorted(calls)[-5:]
    running.dialog.canceled.emit()  # what its Cancel button does
    assert _spin(lambda: running.setup.finished, 30, calls)
    assert running.setup.state == CANCELLED and running.dialog is None
    assert fake.packages() == PRESENT
    assert "nothing was installed" in panel.training.logText.toPlainText()
    assert [d.kind for d in DIALOGS.shown] == ["QMessageBox.question"]  # no error for a cancel


@pytest.mark.skipif(os.name == "nt", reason="the fake interpreter is a shell script")
def test_failed_online_install_offers_the_wheel_folder_which_installs_and_continues(scene, tmp_path):
    import qt
    from dialogs import DIALOGS

    from MICDCommon import qtsupport

    fake = FakePython(tmp_path, PRESENT, fail="download")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name in ("torch-2.9.0-cp39-none-any.whl", "monai-1.5.0-py3-none-any.whl"):
        (wheels / name).write_bytes(b"")
    panel = _training_widget(fake.launcher)
    DIALOGS.answer(qt.QMessageBox.Yes, qt.QMessageBox.Yes, str(wheels), qt.QMessageBox.Yes)
    panel.training.form.dependenciesButton.click()
    assert _spin(lambda: str(fake.python) in qtsupport._READY_PYTHONS, 60, [])
    kinds = [d.kind for d in DIALOGS.shown]
    assert kinds == ["QMessageBox.question", "slicer.util.errorDisplay", "QMessageBox.question",
                     "QFileDialog.getExistingDirectory", "QMessageBox.question"]
    error, offer, _folder, second = DIALOGS.shown[1:]
    assert "downloading failed" in error.text and "What to do" in error.text and "-m pip install" in error.text
    assert "folder of wheels" in offer.text and str(wheels) in second.text
    assert fake.packages()["torch"] == "1.0"
    # the click that started it goes on: the check's continuation logs the ready backend
    assert "The backend is ready in" in panel.training.logText.toPlainText()
    assert qtsupport.ensure_backend_ready(fake.launcher) is True  # the session remembers
