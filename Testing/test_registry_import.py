"""Registry imports take only the model: model.json and the weights, from a folder or a zip, whatever else the folder
or zip holds; a zip's sizes are checked from its directory before anything is extracted; links, unsafe zip paths and
oversized members are refused; a refused import leaves nothing in the registry."""

import os
import struct
import zipfile

import pytest

from MICDCommon import ModelRegistry, RegistryError
from MICDCommon.contract import LAST_CHECKPOINT, MODEL_JSON, WEIGHTS_FILE
from MICDSegmentationLib.Logic import SegmentationLogic
from model_folders import write_model_folder

MiB = 1024 ** 2
LABELS = {1: "liver", 2: "spleen"}


@pytest.fixture
def model(tmp_path):
    return write_model_folder(tmp_path / "src" / "Liver", LABELS)


@pytest.fixture
def registry(tmp_path):
    return ModelRegistry(tmp_path / "models")


def model_zip(path, model, extra=(), weights=None):
    """A zip of the model folder under Liver/; `extra` (name, bytes) members are added after it, stored."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.write(os.path.join(model, MODEL_JSON), f"Liver/{MODEL_JSON}")
        if weights is None:
            z.write(os.path.join(model, WEIGHTS_FILE), f"Liver/{WEIGHTS_FILE}")
        else:
            z.writestr(f"Liver/{WEIGHTS_FILE}", weights)
        for name, data in extra:
            z.writestr(name, data)
    return str(path)


def declare_size(path, member, size):
    """Rewrite the zip's central directory so that it declares `member` `size` bytes long (in a zip64 field), the
    member's data unchanged: what a zip bomb's directory says."""
    data = bytearray(open(path, "rb").read())
    eocd = data.rindex(b"PK\x05\x06")
    cd_size, cd_offset = struct.unpack_from("<II", data, eocd + 12)
    pos = cd_offset
    while True:
        n, m, k = struct.unpack_from("<HHH", data, pos + 28)
        if data[pos + 46:pos + 46 + n].decode() == member:
            break
        pos += 46 + n + m + k
    struct.pack_into("<I", data, pos + 24, 0xFFFFFFFF)
    struct.pack_into("<H", data, pos + 30, m + 12)
    struct.pack_into("<I", data, eocd + 12, cd_size + 12)
    data[pos + 46 + n + m:pos + 46 + n + m] = struct.pack("<HHQ", 1, 8, size)
    open(path, "wb").write(bytes(data))


def registry_entries(registry):
    return sorted(os.listdir(registry.root)) if os.path.isdir(registry.root) else []


def test_a_zip_with_junk_gives_only_the_models_files(model, registry, tmp_path):
    junk = os.urandom(50 * MiB)
    path = model_zip(tmp_path / "liver.zip", model,
                     [("Liver/junk.bin", junk), ("Liver/notes/readme.txt", b"notes"), ("other/big.bin", junk)])
    imported = registry.import_path(path)
    assert imported.name == "Liver" and imported.labels == LABELS
    assert registry_entries(registry) == ["Liver"]
    assert sorted(os.listdir(imported.path)) == [MODEL_JSON, WEIGHTS_FILE]
    with open(os.path.join(model, WEIGHTS_FILE), "rb") as f:
        assert open(os.path.join(imported.path, WEIGHTS_FILE), "rb").read() == f.read()


def test_a_folder_gives_only_the_models_files(model, registry):
    os.makedirs(os.path.join(model, "checkpoints"))
    with open(os.path.join(model, "checkpoints", LAST_CHECKPOINT), "wb") as f:
        f.write(b"\0" * MiB)
    with open(os.path.join(model, "notes.txt"), "w") as f:
        f.write("notes")
    imported = registry.import_path(model, name="From folder")
    assert imported.name == "From folder"
    assert sorted(os.listdir(imported.path)) == [MODEL_JSON, WEIGHTS_FILE]


def test_the_ordinary_imports_still_work(model, registry, tmp_path):
    """Through the Segment panel's logic: an exported zip, a flat zip (named after the file), a folder."""
    logic = SegmentationLogic(registry=registry)
    first = logic.import_model(model)
    exported = registry.export_zip(first, str(tmp_path / "liver.zip"))
    assert logic.import_model(exported).folder_name == "Liver_2"
    flat = tmp_path / "flat.zip"
    with zipfile.ZipFile(flat, "w") as z:
        for name in (MODEL_JSON, WEIGHTS_FILE):
            z.write(os.path.join(model, name), name)
    assert logic.import_model(str(flat)).name == "flat"
    assert registry_entries(registry) == ["Liver", "Liver_2", "flat"]


def test_padded_weights_are_refused_without_extracting_them(model, registry, tmp_path, monkeypatch):
    """The weights member is 20 MiB longer than its safetensors header describes: refused after reading the header
    only, with the member and both sizes named."""
    with open(os.path.join(model, WEIGHTS_FILE), "rb") as f:
        weights = f.read()
    path = model_zip(tmp_path / "padded.zip", model, weights=weights + os.urandom(20 * MiB))
    read, real_read = [], zipfile.ZipExtFile.read

    def counting_read(self, n=-1):
        data = real_read(self, n)
        read.append(len(data))
        return data

    monkeypatch.setattr(zipfile.ZipExtFile, "read", counting_read)
    with pytest.raises(RegistryError) as e:
        registry.import_path(path)
    message = str(e.value)
    assert f"Liver/{WEIGHTS_FILE}" in message and f"{len(weights) + 20 * MiB} bytes" in message
    assert f"the header describes {len(weights)}" in message
    assert sum(read) < 64 * 1024  # the header, not the 20 MiB
    assert registry_entries(registry) == []


def test_a_zip_bomb_is_refused_from_its_directory(model, registry, tmp_path, monkeypatch):
    """A weights member of a few bytes whose directory entry declares 100 GiB: refused before any member is
    opened."""
    path = model_zip(tmp_path / "bomb.zip", model)
    declare_size(path, f"Liver/{WEIGHTS_FILE}", 100 * 1024 ** 3)
    assert zipfile.ZipFile(path).getinfo(f"Liver/{WEIGHTS_FILE}").file_size == 100 * 1024 ** 3

    def no_open(*args, **kwargs):
        raise AssertionError("a member was opened")

    monkeypatch.setattr(zipfile.ZipFile, "open", no_open)
    with pytest.raises(RegistryError, match=rf"\(Liver/{WEIGHTS_FILE}\) is 102400\.0 MiB, more than the 8192\.0 MiB"):
        registry.import_path(path)
    assert registry_entries(registry) == []


def test_an_oversized_model_json_is_refused(model, registry, tmp_path):
    path = tmp_path / "big-json.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"Liver/{MODEL_JSON}", b" " * (17 * MiB))
        z.write(os.path.join(model, WEIGHTS_FILE), f"Liver/{WEIGHTS_FILE}")
    with pytest.raises(RegistryError, match=rf"\(Liver/{MODEL_JSON}\) is 17\.0 MiB; a {MODEL_JSON} is at most"):
        registry.import_path(str(path))
    assert registry_entries(registry) == []


@pytest.mark.parametrize("member", ["../evil", "Liver/../../evil", "/tmp/evil", "C:/evil"])
def test_unsafe_member_paths_are_refused(model, registry, tmp_path, member):
    path = model_zip(tmp_path / "evil.zip", model, [(member, b"evil")])
    with pytest.raises(RegistryError, match="unsafe entry"):
        registry.import_path(path)
    assert registry_entries(registry) == [] and not (tmp_path / "evil").exists()


@pytest.mark.parametrize("linked", [MODEL_JSON, WEIGHTS_FILE])
def test_a_link_to_a_file_outside_is_refused(model, registry, tmp_path, linked):
    outside = tmp_path / "outside"
    outside.mkdir()
    os.replace(os.path.join(model, linked), outside / linked)
    os.symlink(outside / linked, os.path.join(model, linked))
    with pytest.raises(RegistryError, match=f"{linked} is a link; a model is imported only from regular files"):
        registry.import_path(model)
    assert registry_entries(registry) == []


def test_a_link_inside_the_folder_is_refused_too(model, registry):
    os.replace(os.path.join(model, WEIGHTS_FILE), os.path.join(model, "real.safetensors"))
    os.symlink("real.safetensors", os.path.join(model, WEIGHTS_FILE))
    with pytest.raises(RegistryError, match="is a link"):
        registry.add_folder(model, "Linked")
    assert registry_entries(registry) == []


def test_a_runs_model_is_registered_by_linking_its_weights_and_keeps_them(model, registry, tmp_path):
    """A trained run's model is registered in the training panel's finish callback, on Slicer's main thread: its
    weights are hard-linked (O(1)), not copied; the backend replaces a model folder whole, so a later run that writes
    the same folder leaves the registered weights as they were. model.json is copied (the registry rewrites it)."""
    import shutil

    run_model = tmp_path / "run" / "model"
    shutil.copytree(model, run_model)
    info = registry.add_folder(str(run_model), "Liver", backend_check=False, link_weights=True)
    registered = os.path.join(info.path, WEIGHTS_FILE)
    original = open(registered, "rb").read()
    assert os.path.samefile(registered, run_model / WEIGHTS_FILE)  # linked
    assert not os.path.samefile(os.path.join(info.path, MODEL_JSON), run_model / MODEL_JSON)  # copied
    # the backend writes a new model folder beside the old one and renames it into place (model_package)
    replacement = tmp_path / "run" / "model.tmp"
    shutil.copytree(model, replacement)
    (replacement / WEIGHTS_FILE).write_bytes(original[:-4] + b"\0\0\0\0")
    shutil.rmtree(run_model)
    os.replace(replacement, run_model)
    assert open(registered, "rb").read() == original
    shutil.rmtree(tmp_path / "run")  # the run folder deleted: the registered model stays whole
    assert open(registered, "rb").read() == original and registry.get("Liver").path == info.path


def test_a_refused_check_leaves_nothing_and_names_the_source(model, registry, tmp_path):
    """A zip whose model.json fails the registry's checks after extraction: the message names the zip, not the
    hidden folder it was checked in, and that folder is gone."""
    with open(os.path.join(model, MODEL_JSON), "w") as f:
        f.write('{"format": "micd-model", "schema_version": 2, "labels": {"1": "liver"}}')
    path = model_zip(tmp_path / "future.zip", model)
    with pytest.raises(RegistryError, match="schema version 2") as e:
        registry.import_path(path)
    assert path in str(e.value) and ".import-" not in str(e.value)
    assert registry_entries(registry) == []


@pytest.mark.timing
def test_the_panel_imports_in_the_background_and_the_backend_checks_the_model(tmp_path, scene):
    """Import model zip... in the Segment panel: the click returns at once; the copy and the backend's own load of the
    model (`micd info --check`, seconds: it imports torch) run in a worker thread while Slicer's event loop goes on;
    the model is then listed and selected."""
    import sys
    import time

    import slicer
    from dialogs import DIALOGS

    from backend_models import make_runnable_model
    from MICDCommon import BackendLauncher, qtsupport
    from MICDSegmentationLib.Widget import SegmentationWidget

    model = str(make_runnable_model(tmp_path / "src" / "Liver", name="Liver", labels=LABELS))

    launcher = BackendLauncher(python=sys.executable)
    logic = SegmentationLogic(launcher=launcher, registry=ModelRegistry(tmp_path / "models", launcher=launcher),
                              job_poller=qtsupport.QtJobPoller(interval_ms=50))
    panel = SegmentationWidget(logic, dependency_check=lambda then=None: True)
    zip_path = model_zip(tmp_path / "liver.zip", model)
    DIALOGS.answer(zip_path)
    t0 = time.perf_counter()
    panel.importZipButton.click()
    assert time.perf_counter() - t0 < 0.1 and panel.importJob is not None
    calls, deadline = [], time.monotonic() + 120
    while panel.importJob is not None and time.monotonic() < deadline:
        c0 = time.thread_time()
        slicer.app.processEvents()
        calls.append(time.thread_time() - c0)
        time.sleep(0.01)
    assert panel.importJob is None and len(calls) > 20 and max(calls) < 0.1
    assert [m.name for m in panel.models] == ["Liver"] and panel.selectedModel().name == "Liver"
    assert "Imported model 'Liver'" in panel.logText.toPlainText()
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(broken, "w") as z:
        z.writestr(MODEL_JSON, "{}")
    DIALOGS.answer(str(broken))
    panel.importZipButton.click()
    panel.importJob.wait(60)
    assert DIALOGS.shown[-1].kind == "slicer.util.errorDisplay" and "broken.zip" in DIALOGS.shown[-1].text
