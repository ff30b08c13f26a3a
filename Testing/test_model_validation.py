"""One validator for model folders: the registry lists, adds and imports (folder or zip) only folders that
`micd predict` accepts. Each broken folder is refused by the registry's own checks (standard library, in Slicer's
process) and by the backend's loader (`micd info --check`, through the launcher), with the backend's reason."""

import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from MICDCommon import BackendLauncher, ModelRegistry, RegistryError
from MICDCommon.contract import MODEL_JSON, WEIGHTS_FILE
from MICDCommon.registry import check_model_folder, check_with_backend
from MICDSegmentationLib.Logic import SegmentationLogic
from MICDTrainingLib.Logic import TrainingLogic
from model_folders import write_model_folder

LABELS = {"1": "anterior", "2": "posterior"}
MAKE_MODEL = """
import sys, torch
from micd.data.preprocess import PreprocessPlan
from micd.model_package import save_model_package
from micd.nets.vnet import NetworkConfig, build_network
torch.manual_seed(0)
cfg = NetworkConfig(out_channels=3, filters=4)
nets = {b: build_network(cfg).eval() for b in ("student_a", "student_b")}
save_model_package(sys.argv[1], dict(name="runs", labels={"1": "anterior", "2": "posterior"},
                   network=cfg.to_dict(), preprocessing=PreprocessPlan().to_dict(), patch_size=[16, 32, 16],
                   method="supervised", default_ensemble=["student_a", "student_b"]), nets)
"""


@pytest.fixture(scope="module")
def runnable(tmp_path_factory):
    """A model folder written by the backend itself (random weights of a width-4 VNet): `micd predict` runs it."""
    folder = tmp_path_factory.mktemp("runnable") / "model"
    subprocess.run([sys.executable, "-c", MAKE_MODEL, str(folder)], check=True, timeout=300)
    return folder


@pytest.fixture(scope="module")
def launcher():
    return BackendLauncher(python=sys.executable, threads=1)


def _edit(folder, **changes):
    meta = json.loads((folder / MODEL_JSON).read_text(encoding="utf-8"))
    meta.update(changes)
    (folder / MODEL_JSON).write_text(json.dumps(meta), encoding="utf-8")


def _cut_weights(f):  # a copy that stopped half-way
    data = (f / WEIGHTS_FILE).read_bytes()
    (f / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])


def _one_byte_short(f):
    data = (f / WEIGHTS_FILE).read_bytes()
    (f / WEIGHTS_FILE).write_bytes(data[:-1])


def _garbage_weights(f):
    (f / WEIGHTS_FILE).write_bytes(b"\x89PNG\r\n" + bytes(range(256)) * 8)


def _no_weights(f):
    os.remove(f / WEIGHTS_FILE)


def _missing_branch(f):
    meta = json.loads((f / MODEL_JSON).read_text(encoding="utf-8"))
    _edit(f, branches=meta["branches"] + ["teacher_a"])


def _label_zero(f):
    _edit(f, labels={"0": "background", **LABELS})


def _out_channels_mismatch(f):
    _edit(f, labels={**LABELS, "3": "extra"})


def _channels_not_labels(f):  # a channel map (sparse label values packed) that names other values
    _edit(f, labels={"5": "anterior", "117": "posterior"}, channels=[0, 5, 116])


def _channels_not_outputs(f):
    _edit(f, labels={**LABELS, "7": "extra"}, channels=[0, 1, 2, 7])


def _future_schema(f):
    _edit(f, schema_version=2)


def _wider_network(f):  # the header is fine; only loading the tensors into the declared network tells
    meta = json.loads((f / MODEL_JSON).read_text(encoding="utf-8"))
    _edit(f, network={**meta["network"], "filters": 8})


# (breaker, the reason both checks give, whether the registry's own checks see it without the backend)
BROKEN = [(_cut_weights, "not a readable safetensors file", True),
          (_one_byte_short, "not a readable safetensors file", True),
          (_garbage_weights, "not a readable safetensors file", True),
          (_no_weights, "no weights.safetensors", True),
          (_missing_branch, "no weights for branch 'teacher_a'", True),
          (_label_zero, "not 0", True),
          (_out_channels_mismatch, "has 3 outputs but the labels go up to 3", True),
          (_channels_not_labels, "do not list the labels' values", True),
          (_channels_not_outputs, "has 3 outputs but 'channels' lists 4", True),
          (_future_schema, "schema version 2", True),
          (_wider_network, "do not match the declared network", False)]
IDS = [b.__name__.lstrip("_") for b, _, _ in BROKEN]


def broken_copy(runnable, tmp_path, breaker):
    bad = tmp_path / "bad-model"
    shutil.copytree(runnable, bad)
    breaker(bad)
    return bad


def test_a_runnable_model_passes_both_checks(runnable, launcher, tmp_path):
    assert check_model_folder(str(runnable))["labels"] == LABELS
    assert check_with_backend(str(runnable), launcher)["branches"] == ["student_a", "student_b"]
    registry = ModelRegistry(tmp_path / "models", launcher=launcher)
    added = registry.add_folder(str(runnable), "Hippo")
    assert [m.name for m in registry.models()] == ["Hippo"] and registry.refused == []
    zipped = registry.export_zip(added, str(tmp_path / "hippo.zip"))
    assert registry.import_path(zipped).folder_name == "Hippo_2"
    sparse = tmp_path / "sparse"  # label values 5 and 117 on outputs 1 and 2
    shutil.copytree(runnable, sparse)
    _edit(sparse, labels={"5": "anterior", "117": "posterior"}, channels=[0, 5, 117])
    assert check_model_folder(str(sparse))["channels"] == [0, 5, 117]
    assert check_with_backend(str(sparse), launcher)["labels"] == {"5": "anterior", "117": "posterior"}


@pytest.mark.parametrize("breaker,reason,seen_without_backend", BROKEN, ids=IDS)
def test_registry_refuses_what_predict_refuses(runnable, launcher, tmp_path, breaker, reason, seen_without_backend):
    bad = broken_copy(runnable, tmp_path, breaker)
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as z:
        for name in os.listdir(bad):
            z.write(bad / name, f"bad-model/{name}")
    # with the backend check (as the panels' registries have it): neither as a folder nor as a zip
    registry = ModelRegistry(tmp_path / "models", launcher=launcher)
    with pytest.raises(RegistryError, match=reason):
        registry.add_folder(str(bad), "Broken")
    with pytest.raises(RegistryError, match=reason):
        registry.import_path(str(tmp_path / "bad.zip"))
    assert not os.path.exists(registry.root) or os.listdir(registry.root) == []
    # the registry's own checks, without the backend
    if not seen_without_backend:
        check_model_folder(str(bad))  # shapes need the network: this one is the backend's to refuse
        return
    plain = ModelRegistry(tmp_path / "plain")
    with pytest.raises(RegistryError, match=reason):
        plain.add_folder(str(bad), "Broken")
    with pytest.raises(RegistryError, match=reason):
        plain.import_path(str(tmp_path / "bad.zip"))
    # a broken folder already inside the models folder is not listed, and the reason is kept
    os.makedirs(plain.root, exist_ok=True)
    shutil.copytree(bad, os.path.join(plain.root, "Broken"))
    assert plain.models() == []
    ((folder, why),) = plain.refused
    assert folder == os.path.join(plain.root, "Broken") and reason in why


LOAD_EACH = """
import json, sys
from micd.model_package import ModelPackageError, load_model_package
reasons = {}
for folder in sys.argv[1:]:
    try:
        load_model_package(folder)
        reasons[folder] = None
    except ModelPackageError as e:
        reasons[folder] = str(e)
print(json.dumps(reasons))
"""


def test_both_checks_give_the_backends_reasons(runnable, tmp_path):
    """Every broken folder, loaded by `micd predict`'s loader in one backend process and checked here: the same
    reason on both sides (where the standard library can see it)."""
    folders = {}
    for (breaker, reason, seen), name in zip(BROKEN, IDS):
        folders[name] = broken_copy(runnable, tmp_path / name, breaker)
    p = subprocess.run([sys.executable, "-c", LOAD_EACH, *map(str, folders.values())], capture_output=True,
                       encoding="utf-8", errors="replace", timeout=300, check=True)
    backend = json.loads(p.stdout.strip().splitlines()[-1])
    for (breaker, reason, seen), name in zip(BROKEN, IDS):
        assert backend[str(folders[name])] and reason in backend[str(folders[name])], (name, backend)
        if seen:
            with pytest.raises(RegistryError) as e:
                check_model_folder(str(folders[name]))
            assert reason in str(e.value)


def test_registry_checks_accept_the_test_model_folders(tmp_path):
    """The stand-in folders of the other Slicer tests pass the registry's checks (and only those)."""
    folder = write_model_folder(tmp_path / "m", {1: "liver", 2: "spleen"})
    assert check_model_folder(folder)["network"]["out_channels"] == 3
    with pytest.raises(RegistryError, match="do not match the declared network"):
        check_with_backend(folder, BackendLauncher(python=sys.executable, threads=1))


def test_a_backend_that_cannot_run_is_a_clear_refusal(runnable, tmp_path):
    registry = ModelRegistry(tmp_path / "models", launcher=BackendLauncher(python=str(tmp_path / "no-python")))
    with pytest.raises(RegistryError, match="could not run the MICD backend"):
        registry.add_folder(str(runnable), "Hippo")
    assert registry.models() == []


def test_the_panels_registries_check_with_their_launcher(launcher):
    assert SegmentationLogic(launcher=launcher).registry.launcher is launcher
    assert TrainingLogic(launcher=launcher).registry.launcher is launcher
