"""Packaging: every .py and resource under the module folders is listed in its CMakeLists.txt (or it would be
missing from the packaged extension), every listed file exists, the top level adds every folder; and the logic
files import only slicer, vtk, numpy, the standard library and our own packages (never qt or the backend)."""

import ast
import pathlib
import re
import sys
import sysconfig

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FOLDERS = ["MICDCommon", "MICDTraining", "MICDSegmentation"]
GUI_FILES = {"Widget.py", "TrainingPanel.py", "SettingsForm.py", "NextCasesPanel.py", "CurvesView.py", "RunDisplay.py",
             "qtsupport.py",
             "slicermodule.py", "MICDTraining.py", "MICDSegmentation.py", "MICDCommonModule.py"}


def listed_files(cmake_text):
    """Paths in the MODULE_PYTHON_SCRIPTS / MODULE_PYTHON_RESOURCES lists."""
    files = []
    for block in re.findall(r"set\(MODULE_PYTHON_(?:SCRIPTS|RESOURCES)(.*?)\)", cmake_text, re.S):
        files += [token for token in block.split() if not token.startswith("#")]
    return files


def shipped_files(folder):
    for path in sorted((ROOT / folder).rglob("*")):
        rel = path.relative_to(ROOT / folder)
        if path.is_file() and rel.parts[0] != "Testing" and path.name != "CMakeLists.txt" \
                and "__pycache__" not in rel.parts and path.suffix != ".pyc":
            yield rel.as_posix()


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_file_is_listed_and_every_listed_file_exists(folder):
    listed = listed_files((ROOT / folder / "CMakeLists.txt").read_text(encoding="utf-8"))
    assert listed, f"{folder}/CMakeLists.txt lists nothing"
    missing = [f for f in shipped_files(folder) if f not in listed]
    assert not missing, f"{folder}/CMakeLists.txt does not list {missing}"
    absent = [f for f in listed if not (ROOT / folder / f).is_file()]
    assert not absent, f"{folder}/CMakeLists.txt lists files that do not exist: {absent}"
    assert "slicerMacroBuildScriptedModule" in (ROOT / folder / "CMakeLists.txt").read_text(encoding="utf-8")


def test_top_level_cmake_adds_every_folder_and_has_metadata():
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    for folder in FOLDERS:
        assert f"add_subdirectory({folder})" in text
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL",
                "EXTENSION_DEPENDS", "EXTENSION_CONTRIBUTORS", "EXTENSION_SCREENSHOTURLS"):
        assert f"set({key}" in text
    assert (ROOT / "Resources" / "Icons" / "MICD.png").is_file()
    screenshots = re.search(r'set\(EXTENSION_SCREENSHOTURLS "([^"]*)"', text).group(1).split()
    assert screenshots, "no screenshot URLs"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for url in screenshots:
        path = url.split("/main/", 1)[1]
        assert (ROOT / path).is_file() and f"]({path})" in readme, url  # committed and shown in the README
    assert "backend/micd" in text  # the backend ships with the extension


def _stdlib_names():
    names = getattr(sys, "stdlib_module_names", None)  # Python 3.10+
    if names:
        return set(names)
    stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
    return {p.stem for p in stdlib.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()} | set(
        sys.builtin_module_names)


def _imported_modules(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module.split(".")[0]


def test_slicer_side_imports_only_slicer_vtk_qt_ctk_numpy_and_the_standard_library():
    """Nothing Slicer does not bundle (no psutil), and never torch or the PyTorch extension (which imports torch)
    in Slicer's process: the backend runs in subprocesses. qt and ctk only in the GUI files."""
    own = {"MICDCommon", "MICDTrainingLib", "MICDSegmentationLib"}
    allowed = {"slicer", "vtk", "numpy"} | own | _stdlib_names()
    offenders = {}
    for folder in FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            bad = sorted(set(_imported_modules(path)) - allowed - ({"qt", "ctk"} if path.name in GUI_FILES else set()))
            if bad:
                offenders[str(path.relative_to(ROOT))] = bad
    assert not offenders, offenders
