"""Model registry (list with provenance, rename, delete, zip export/import) and the dependency step (probe, plan,
install only after confirmation, with Slicer's helpers or pip), with fakes for Slicer's installers."""

import json
import locale
import re
import subprocess
import sys
import zipfile
from unittest import mock

import pytest

from MICDCommon import BackendLauncher, ModelRegistry, RegistryError
from MICDCommon.contract import MODEL_JSON, WEIGHTS_FILE
from MICDCommon.dependencies import DependencyError, probe
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


def test_registry_never_replaces_or_moves_what_it_does_not_own(registry, tmp_path):
    """A zip already on disk is kept unless the caller says so (the panel's save dialog asks first); a model cannot
    be zipped into its own folder; a folder outside the registry (a run's model/) is not moved by a rename."""
    kept = tmp_path / "liver.zip"
    kept.write_bytes(b"an earlier export")
    with pytest.raises(RegistryError, match="already exists"):
        registry.export_zip("Liver", str(kept))
    assert kept.read_bytes() == b"an earlier export" and not (tmp_path / "liver.zip.part").exists()
    registry.export_zip("Liver", str(kept), overwrite=True)
    assert sorted(zipfile.ZipFile(kept).namelist()) == [f"Liver/{MODEL_JSON}", f"Liver/{WEIGHTS_FILE}"]
    (model,) = registry.models()
    with pytest.raises(RegistryError, match="own folder"):
        registry.export_zip(model, str(tmp_path / "models" / "Liver" / "self.zip"))
    # a folder name is unique and wins; a display name two models share is refused (delete took the newest)
    second = registry.add_folder(str(tmp_path / "run" / "model"), "Liver")
    assert second.folder_name == "Liver_2" and registry.get("Liver").folder_name == "Liver"
    ct = [registry.add_folder(str(tmp_path / "run" / "model"), "Liver (CT)") for _ in range(2)]
    assert [m.folder_name for m in ct] == ["Liver_CT", "Liver_CT_2"]
    with pytest.raises(RegistryError, match="2 models are named 'Liver \\(CT\\)'"):
        registry.delete("Liver (CT)")
    assert len(registry.models()) == 4
    for m in [second, *ct]:
        registry.delete(m)
    run_model = tmp_path / "run" / "model"
    with pytest.raises(RegistryError, match="not inside the model folder"):
        registry.rename(str(run_model), "Liver v3")
    assert (run_model / MODEL_JSON).is_file() and [m.name for m in registry.models()] == ["Liver"]


def test_registry_zip_round_trip_and_folder_import(registry, tmp_path):
    zip_path = registry.export_zip("Liver", str(tmp_path / "liver.zip"))
    assert sorted(zipfile.ZipFile(zip_path).namelist()) == [f"Liver/{MODEL_JSON}", f"Liver/{WEIGHTS_FILE}"]
    other = ModelRegistry(tmp_path / "elsewhere")
    imported = other.import_path(zip_path)
    assert imported.name == "Liver" and imported.labels == {1: "liver", 2: "spleen"}
    again = other.import_path(zip_path)  # a second import does not overwrite the first
    assert again.folder_name == "Liver_2"
    flat = tmp_path / "flat.zip"  # model.json at the top of the zip
    with zipfile.ZipFile(flat, "w") as z:
        z.write(tmp_path / "run" / "model" / MODEL_JSON, MODEL_JSON)
        z.write(tmp_path / "run" / "model" / WEIGHTS_FILE, WEIGHTS_FILE)
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


def test_probe_of_a_missing_python_says_to_choose_another():
    with pytest.raises(DependencyError, match="Choose a working interpreter"):
        probe(BackendLauncher(python="/no/such/python"))


def test_helper_processes_read_utf8_and_open_no_window(monkeypatch):
    from MICDCommon import processes

    previous = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")  # as under a C locale, or Windows' code page: locale-decoding would fail
    try:
        # the child writes UTF-8 bytes; the command line stays ASCII (its escapes are the child's to decode)
        child = r"import sys; sys.stdout.buffer.write('J\xfcrgen \u2713 \u809d\u81d3'.encode())"
        result = processes.run([sys.executable, "-c", child])
    finally:
        locale.setlocale(locale.LC_CTYPE, previous)
    assert result.stdout == "Jürgen ✓ 肝臓"
    seen = {}
    monkeypatch.setattr(processes, "WINDOWS", True)
    monkeypatch.setattr(processes.subprocess, "run", lambda command, **kwargs: seen.update(kwargs))
    processes.run(["python", "-c", "pass"])
    assert seen["creationflags"] == processes.CREATE_NO_WINDOW and seen["encoding"] == "utf-8"
    assert processes.new_group_popen_kwargs()["creationflags"] & processes.CREATE_NO_WINDOW
