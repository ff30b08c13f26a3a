"""Model folder contract: every broken folder is refused with its own one-line message; info; zip round trip."""

import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
import SimpleITK as sitk
import torch
from safetensors.torch import load_file, save_file

from inference_helpers import LABELS, make_model, oblique_image
from micd.cli import main
from micd.model_package import (MODEL_JSON, WEIGHTS_FILE, ModelPackageError, export_zip, import_zip,
                                load_model_package)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("good") / "model")


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    p = tmp_path_factory.mktemp("img") / "in.nii.gz"
    sitk.WriteImage(oblique_image((20, 24, 22)), str(p))
    return str(p)


def _copy(good, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    return bad


def _edit_json(folder, **changes):
    meta = json.load(open(folder / MODEL_JSON))
    meta.update(changes)
    json.dump(meta, open(folder / MODEL_JSON, "w"))


def _no_json(f):
    os.remove(f / MODEL_JSON)


def _malformed(f):
    (f / MODEL_JSON).write_text("{not json")


def _future_schema(f):
    _edit_json(f, schema_version=99)


def _wider_network(f):  # declared network no longer matches the stored tensors
    meta = json.load(open(f / MODEL_JSON))
    meta["network"]["filters"] = 8
    json.dump(meta, open(f / MODEL_JSON, "w"))


def _truncated_weights(f):
    t = load_file(str(f / WEIGHTS_FILE))
    save_file({k: v for k, v in t.items() if "head" not in k}, str(f / WEIGHTS_FILE))


def _no_weights(f):
    os.remove(f / WEIGHTS_FILE)


def _not_a_model(f):
    _edit_json(f, format="something-else")


def _cut_weights_file(f):  # a copy or download that stopped half-way
    data = (f / WEIGHTS_FILE).read_bytes()
    (f / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])


def _garbage_weights(f):  # not a safetensors file at all
    (f / WEIGHTS_FILE).write_bytes(b"\x89PNG\r\n" + bytes(range(256)) * 8)


def _missing_branch(f):  # model.json declares a network the weights file does not hold
    meta = json.load(open(f / MODEL_JSON))
    meta["branches"] = meta["branches"] + ["teacher_a"]
    json.dump(meta, open(f / MODEL_JSON, "w"))


def _label_zero(f):
    _edit_json(f, labels={"0": "background", "1": "hippocampus_anterior", "2": "hippocampus_posterior"})


def _out_channels_mismatch(f):  # three labels declared, the network has three outputs (background + 2)
    _edit_json(f, labels={**LABELS, "3": "extra"})


BAD = [(_no_json, "no model.json"), (_malformed, "malformed JSON"), (_future_schema, "schema version 99"),
       (_wider_network, "do not match the declared network"), (_truncated_weights, "do not match the declared"),
       (_no_weights, "no weights.safetensors"), (_not_a_model, "not a MICD model description"),
       (_cut_weights_file, "not a readable safetensors file"), (_garbage_weights, "not a readable safetensors file"),
       (_missing_branch, "no weights for branch 'teacher_a'"), (_label_zero, "not 0"),
       (_out_channels_mismatch, "has 3 outputs but the labels go up to 3")]


@pytest.mark.parametrize("breaker,message", BAD, ids=[b.__name__ for b, _ in BAD])
def test_predict_refuses_bad_model_folder(good, image, tmp_path, capsys, breaker, message):
    bad = _copy(good, tmp_path)
    breaker(bad)
    with pytest.raises(ModelPackageError, match=message):
        load_model_package(str(bad))
    code = main(["predict", "--model", str(bad), "--input", image, "--output", str(tmp_path / "o.nii.gz"),
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o.nii.gz").exists()
    # `micd info --check` (what the Slicer model list and zip import ask) refuses it for the same reason
    assert main(["info", str(bad), "--check", "--json"]) == 2
    out, err = capsys.readouterr()
    answer = json.loads(out)
    assert answer["ok"] is False and message in answer["error"] and message in err


def test_info_check_accepts_a_model_that_runs(good, capsys):
    assert main(["info", str(good), "--check", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer == {"ok": True, "model": str(good), "branches": ["student_a", "student_b"], "labels": LABELS}
    assert main(["info", str(good), "--check"]) == 0
    assert capsys.readouterr().out.strip() == f"{good}: ok (student_a, student_b)"


def test_refusal_as_a_process_has_no_traceback(good, image, tmp_path):
    bad = _copy(good, tmp_path)
    _malformed(bad)
    p = subprocess.run([sys.executable, "-m", "micd", "predict", "--model", str(bad), "--input", image, "--output",
                        str(tmp_path / "o.nii.gz"), "--device", "cpu"], capture_output=True, encoding="utf-8", errors="replace", timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "malformed JSON" in p.stderr


def test_info_text_and_json(good, tmp_path, capsys):
    assert main(["info", str(good)]) == 0
    out = capsys.readouterr().out
    assert "method: micd" in out and "hippocampus_posterior" in out and "best_mean_dice" in out and "seed" in out
    assert main(["info", str(good), "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["labels"] == LABELS and meta["schema_version"] == 1
    assert main(["info", str(tmp_path / "missing")]) == 2
    assert "not a model folder" in capsys.readouterr().err


def test_zip_round_trip(good, tmp_path):
    z = export_zip(str(good), str(tmp_path / "m.zip"))
    dest = import_zip(z, str(tmp_path / "imported"))
    a, b = load_model_package(str(good)), load_model_package(dest)
    assert a.meta == b.meta
    for k, v in a.networks["student_a"].state_dict().items():
        assert torch.equal(v, b.networks["student_a"].state_dict()[k])
    with pytest.raises(ModelPackageError, match="already exists"):
        import_zip(z, dest)
    with pytest.raises(ModelPackageError, match="already exists"):  # an earlier export is not replaced unasked
        export_zip(str(good), z)
    assert export_zip(str(good), z, overwrite=True) == os.path.abspath(z)
    with pytest.raises(ModelPackageError, match="own folder"):
        export_zip(str(good), os.path.join(str(good), "m.zip"))
    assert import_zip(z, dest, overwrite=True) == dest
    # an archive made by hand with a top folder is unpacked from inside it
    with zipfile.ZipFile(tmp_path / "top.zip", "w") as zf:
        for f in (MODEL_JSON, WEIGHTS_FILE):
            zf.write(os.path.join(good, f), f"mymodel/{f}")
    load_model_package(import_zip(str(tmp_path / "top.zip"), str(tmp_path / "top")))


@pytest.mark.parametrize("entry", ["../evil.txt", "/abs/evil.txt", "a/../../evil.txt"])
def test_zip_import_refuses_path_traversal(good, tmp_path, entry):
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as zf:
        zf.write(os.path.join(good, MODEL_JSON), MODEL_JSON)
        zf.write(os.path.join(good, WEIGHTS_FILE), WEIGHTS_FILE)
        zf.writestr(entry, "x")
    with pytest.raises(ModelPackageError, match="unsafe entry"):
        import_zip(str(tmp_path / "evil.zip"), str(tmp_path / "dest"))
    assert not (tmp_path / "dest").exists() and not (tmp_path.parent / "evil.txt").exists()


def test_zip_import_refuses_a_broken_model(good, tmp_path):
    bad = _copy(good, tmp_path)
    _wider_network(bad)
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as zf:
        for f in (MODEL_JSON, WEIGHTS_FILE):
            zf.write(os.path.join(bad, f), f)
    with pytest.raises(ModelPackageError, match="do not match"):
        import_zip(str(tmp_path / "bad.zip"), str(tmp_path / "dest"))
    assert not (tmp_path / "dest").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".import-")]
