"""Headless test set-up on PyPI slicer-core: module folders on sys.path, stand-ins for qt/ctk and the few
application-level pieces slicer-core lacks (slicer.modules, ScriptedLoadableModule, node combo boxes), and a fresh
MRML scene with the Colors/Volumes/Segmentations/SubjectHierarchy logics per test."""

import os
import pathlib
import sys
import types

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
for folder in ("MICDCommon", "MICDTraining", "MICDSegmentation", "Testing"):
    sys.path.insert(0, str(ROOT / folder))

import slicer  # noqa: E402

import qt_standin  # noqa: E402

qt_standin.install()

DATA = pathlib.Path(os.environ.get("SHARED", ROOT.parent / "shared")) / "data"
if not DATA.is_dir():
    DATA = pathlib.Path("/work/shared/data")
HIPPOCAMPUS = DATA / "hippocampus"
CT_EXAMPLE = DATA / "ct_abdomen_example"


def _new_scene():
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    colors = app.GetColorLogic()
    colors.SetMRMLScene(scene)
    colors.AddDefaultColorNodes()
    app.SetModuleLogic("Colors", colors)
    logics = {"segmentations": slicer.vtkSlicerSegmentationsModuleLogic(), "volumes": slicer.vtkSlicerVolumesLogic()}
    for name, logic in logics.items():
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(app)
        app.SetModuleLogic(name.capitalize(), logic)
    sh_logic = slicer.vtkSlicerSubjectHierarchyModuleLogic()
    sh_logic.SetMRMLScene(scene)
    scene.GetSubjectHierarchyNode()
    slicer.modules = types.SimpleNamespace(**{n: types.SimpleNamespace(logic=(lambda lg=lg: lg))
                                              for n, lg in logics.items()})
    return scene, (app, logics, sh_logic)


@pytest.fixture
def scene():
    scene, keep_alive = _new_scene()
    yield scene
    scene.Clear(True)
    del keep_alive


@pytest.fixture(autouse=True)
def micd_home(tmp_path, monkeypatch):
    """Models and runs go to a temporary MICD home, never to the user's."""
    home = tmp_path / "micd-home"
    monkeypatch.setenv("MICD_HOME", str(home))
    return home


@pytest.fixture
def hippocampus_cases():
    names = sorted(p.name for p in (HIPPOCAMPUS / "imagesTr").iterdir())
    return [(HIPPOCAMPUS / "imagesTr" / n, HIPPOCAMPUS / "labelsTr" / n) for n in names]
