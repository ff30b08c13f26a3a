"""Headless Slicer for the tests (slicer_harness.py): PyPI slicer-core, `qt` with PythonQt's rules over real PyQt5
widgets, strict ctk/application stand-ins, Slicer's ScriptedLoadableModule; a fresh MRML scene with the Colors,
Volumes, Segmentations and SubjectHierarchy logics per test. After each test: no slot may have raised, every dialog
must have had the main window as parent, and every queued dialog answer must have been used."""

import os
import pathlib
import sys
import tempfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "Testing"))

import slicer  # noqa: E402

import slicer_harness  # noqa: E402
import slicer_standin  # noqa: E402

MAIN_WINDOW = slicer_harness.install(tempfile.mkdtemp(prefix="micd-qsettings-"))

import pythonqt  # noqa: E402
import qt  # noqa: E402
from dialogs import DIALOGS  # noqa: E402
from scene_helpers import new_scene  # noqa: E402

DATA = pathlib.Path(os.environ.get("SHARED", ROOT.parent / "shared")) / "data"
if not DATA.is_dir():
    DATA = pathlib.Path("/work/shared/data")
HIPPOCAMPUS = DATA / "hippocampus"
CT_EXAMPLE = DATA / "ct_abdomen_example"


def pytest_configure(config):
    config.addinivalue_line("markers", "timing: bounds a callback's wall time; scripts/test.sh runs these alone, after "
                                       "the rest, as the timing rules ask (a second test process on two cores "
                                       "inflates wall times several fold)")


@pytest.fixture
def scene():
    scene, keep_alive = new_scene()
    yield scene
    slicer_standin.release_scene(scene)
    keep_alive.release()
    scene.Clear(True)
    del keep_alive


@pytest.fixture(autouse=True)
def slicer_session():
    """Empty settings and dialog records; afterwards the PythonQt-level checks above."""
    qt.QSettings().clear()
    DIALOGS.reset()
    yield DIALOGS
    pythonqt.raise_slot_errors()
    orphans = [d for d in DIALOGS.shown if d.parent != MAIN_WINDOW]
    assert not orphans, f"dialogs without the main window as parent: {orphans}"
    assert not DIALOGS.unused_answers, f"answers queued for dialogs that never opened: {DIALOGS.unused_answers}"


@pytest.fixture(autouse=True)
def micd_home(tmp_path, monkeypatch):
    """Models and runs go to a temporary MICD home, never to the user's."""
    home = tmp_path / "micd-home"
    monkeypatch.setenv("MICD_HOME", str(home))
    return home


@pytest.fixture(autouse=True)
def no_worker_left_running(monkeypatch):
    """Every segmentation worker (`micd serve`) a test started is ended with it, as module exit would."""
    from MICDCommon.worker import BackendWorker

    started = []
    real_start = BackendWorker.start

    def start(self):
        started.append(self)
        return real_start(self)

    monkeypatch.setattr(BackendWorker, "start", start)
    yield
    for worker in started:
        worker.shutdown()


@pytest.fixture
def hippocampus_cases():
    names = sorted(p.name for p in (HIPPOCAMPUS / "imagesTr").iterdir())
    return [(HIPPOCAMPUS / "imagesTr" / n, HIPPOCAMPUS / "labelsTr" / n) for n in names]
