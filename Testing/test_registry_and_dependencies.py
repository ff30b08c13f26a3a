"""Model registry (list with provenance, rename, delete, zip export/import) and the dependency step (probe, plan,
install only after confirmation, with Slicer's helpers or pip), with fakes for Slicer's installers."""

import json
import subprocess
import sys
import zipfile
from types import SimpleNamespace
from unittest import mock

import pytest

from MICDCommon import BackendLauncher, ModelRegistry, RegistryError
from MICDCommon.dependencies import DependencyError, DependencyInstaller, InstallPlan, probe
from test_result_import import make_model_folder


@pytest.fixture
def registry(tmp_path):
    registry = ModelRegistry(tmp_path / "models")
    registry.add_folder(str(make_model_folder(tmp_path / "run" / "model", {1: "liver", 2: "spleen"}, {})), "Liver")
    return registry


def test_registry_lists_renames_deletes(registry, tmp_path):
    (model,) = registry.models()
    assert model.name == "Liver" and model.labels == {1: "liver", 2: "spleen"}
    assert "Labels: liver, spleen" in model.summary() and "3 labeled / 10 unlabeled" in model.summary()
    assert "validation Dice 0.800" in model.summary()
    renamed = registry.rename("Liver", "Liver v2 (CT)")
    assert renamed.name == "Liver v2 (CT)" and renamed.folder_name == "Liver_v2_CT"
    assert [m.name for m in registry.models()] == ["Liver v2 (CT)"]
    with pytest.raises(RegistryError):
        registry.get("Liver")
    registry.delete(renamed)
    assert registry.models() == []


def test_registry_zip_round_trip_and_folder_import(registry, tmp_path):
    zip_path = registry.export_zip("Liver", str(tmp_path / "liver.zip"))
    assert sorted(zipfile.ZipFile(zip_path).namelist()) == ["Liver/model.json", "Liver/weights.safetensors"]
    other = ModelRegistry(tmp_path / "elsewhere")
    imported = other.import_path(zip_path)
    assert imported.name == "Liver" and imported.labels == {1: "liver", 2: "spleen"}
    again = other.import_path(zip_path)  # a second import does not overwrite the first
    assert again.folder_name == "Liver_2"
    flat = tmp_path / "flat.zip"  # model.json at the top of the zip
    with zipfile.ZipFile(flat, "w") as z:
        z.write(tmp_path / "run" / "model" / "model.json", "model.json")
    assert other.import_path(str(flat)).name == "flat"
    assert other.import_path(str(tmp_path / "run" / "model"), name="From folder").name == "From folder"
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../outside/model.json", "{}")
    with pytest.raises(RegistryError, match="unsafe"):
        other.import_path(str(evil))
    with pytest.raises(RegistryError, match="not a MICD model"):
        other.import_path(str(tmp_path))  # a folder without model.json


def test_probe_in_this_python_finds_the_backend():
    report = probe(BackendLauncher(python=sys.executable), check_gpus=False)
    assert report.python and report.backend_found and report.packages["torch"]
    assert report.ready and "micd backend" in report.describe()
    assert report.device_choices()[0] == "auto" and report.device_choices()[-1] == "cpu"


def _fake_run(packages, micd="0.1.0"):
    """A subprocess.run stand-in answering the probe with the given package versions."""
    calls = []

    def run(command, **kwargs):
        calls.append(command)
        if command[1:3] == ["-m", "pip"]:
            for requirement in command[4:]:
                packages[requirement.split(">")[0]] = "1.0"
            return subprocess.CompletedProcess(command, 0, "", "")
        data = {"python": command[0], "version": "3.12", "packages": dict(packages), "micd": micd}
        return subprocess.CompletedProcess(command, 0, "MICD-PROBE " + json.dumps(data) + "\n", "")

    run.calls = calls
    return run


def test_install_asks_first_and_uses_slicer_helpers(tmp_path):
    packages = {"numpy": "2.0", "SimpleITK": "2.5", "scipy": "1.1", "tqdm": "4", "pynrrd": "1", "safetensors": "0.4"}
    run = _fake_run(packages)
    launcher = mock.MagicMock(python="/slicer/bin/PythonSlicer", uses_slicer_python=True)
    launcher.environment.return_value = {}
    packaging = mock.MagicMock()
    torch_utils = mock.MagicMock()
    questions = []

    declined = DependencyInstaller(launcher, confirm=lambda m: questions.append(m) or False, packaging=packaging,
                                   torch_utils=torch_utils, run=run, log=lambda m: None)
    assert declined.ensure() is False
    assert "PyTorch" in questions[0] and "monai>=1.3" in questions[0]
    assert not packaging.pip_install.called and not torch_utils.installTorch.called

    def install_torch(**kwargs):
        packages["torch"] = "2.13"
        return SimpleNamespace(__version__="2.13")

    def pip_install(requirements):
        packages.update({r.split(">")[0]: "1.0" for r in requirements})

    torch_utils.installTorch.side_effect = install_torch
    packaging.pip_install.side_effect = pip_install
    accepted = DependencyInstaller(launcher, confirm=lambda m: True, packaging=packaging, torch_utils=torch_utils,
                                   run=run, log=lambda m: None)
    assert accepted.ensure() is True
    torch_utils.installTorch.assert_called_once_with(askConfirmation=False, torchVersionRequirement=">=2.0")
    packaging.pip_install.assert_called_once_with(["monai>=1.3"])


def test_install_into_a_chosen_python_uses_its_pip_and_reports_failures():
    packages = {}
    run = _fake_run(packages)
    launcher = mock.MagicMock(python="/envs/cuda/bin/python", uses_slicer_python=False)
    launcher.environment.return_value = {}
    installer = DependencyInstaller(launcher, confirm=lambda m: True, run=run, log=lambda m: None)
    assert installer.ensure() is True
    pip_call = next(c for c in run.calls if c[1:3] == ["-m", "pip"])
    assert pip_call[0] == "/envs/cuda/bin/python" and "torch>=2.0" in pip_call

    no_backend = DependencyInstaller(launcher, confirm=lambda m: True, run=_fake_run(dict(packages), micd=None),
                                     log=lambda m: None)
    with pytest.raises(DependencyError, match="MICD_BACKEND_PATH"):
        no_backend.ensure()
    missing_python = BackendLauncher(python="/no/such/python")
    with pytest.raises(DependencyError, match="Choose a working interpreter"):
        probe(missing_python)
    assert InstallPlan(installer.check()).empty
