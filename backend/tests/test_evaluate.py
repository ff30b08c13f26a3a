"""`micd evaluate` and `micd.api.evaluate`: self-comparison, documented empty cases, known values, grid checks."""

import csv
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from realdata import HIPPO
from micd import api
from micd.cli import main


def _img(arr, spacing=(1.0, 1.0, 1.0)):
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetSpacing(spacing)
    img.SetOrigin((5.0, -3.0, 2.0))
    return img


def _evaluate(tmp_path, pred, ref, *extra):
    sitk.WriteImage(pred, str(tmp_path / "p.nii.gz"))
    sitk.WriteImage(ref, str(tmp_path / "r.nii.gz"))
    code = main(["evaluate", "--pred", str(tmp_path / "p.nii.gz"), "--label", str(tmp_path / "r.nii.gz"),
                 "--json", str(tmp_path / "ev.json"), *extra])
    return code, (json.load(open(tmp_path / "ev.json")) if code == 0 else None)


def test_label_against_itself_is_perfect(tmp_path, shared_data):
    lbl = os.path.join(HIPPO, "labelsTr", "hippocampus_001.nii.gz")
    code = main(["evaluate", "--pred", lbl, "--label", lbl, "--json", str(tmp_path / "ev.json"), "--labels",
                 os.path.join(HIPPO, "dataset.json")])
    assert code == 0
    r = json.load(open(tmp_path / "ev.json"))
    assert set(r["per_label"]) == {"hippocampus_anterior", "hippocampus_posterior"}
    for s in r["per_label"].values():
        assert s["dice"]["mean"] == 1.0 and s["hd95"]["mean"] == 0.0 and s["asd"]["mean"] == 0.0
    assert r["overall"]["dice"]["mean"] == 1.0
    assert os.path.exists(tmp_path / "ev.csv") and os.path.exists(tmp_path / "ev.md")
    assert "| **overall** | 1.0000" in open(tmp_path / "ev.md", encoding="utf-8").read()


def test_documented_empty_cases(tmp_path):
    ref = np.zeros((10, 12, 14), np.uint8)
    ref[2:6, 3:8, 4:9] = 1  # label 1 only in the reference
    pred = np.zeros_like(ref)
    pred[1:3, 1:3, 1:3] = 2  # label 2 only in the prediction; label 3 in neither
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"1": "a", "2": "b", "3": "c"}))
    code, r = _evaluate(tmp_path, _img(pred), _img(ref), "--labels", str(names))
    assert code == 0
    m = r["cases"][0]["metrics"]
    assert m["a"] == {"label": 1, "dice": 0.0, "hd95": None, "asd": None, "empty": "prediction"}
    assert m["b"] == {"label": 2, "dice": 0.0, "hd95": None, "asd": None, "empty": "reference"}
    assert m["c"] == {"label": 3, "dice": 1.0, "hd95": 0.0, "asd": 0.0, "empty": "both"}
    assert r["per_label"]["a"]["hd95"]["n_undefined"] == 1 and r["per_label"]["a"]["hd95"]["mean"] is None
    assert r["per_label"]["c"]["n_both_empty"] == 1
    assert r["overall"]["dice"]["mean"] == pytest.approx(1 / 3)
    rows = list(csv.DictReader(open(tmp_path / "ev.csv")))
    assert rows[0]["empty"] == "prediction" and rows[0]["hd95_mm"] == ""


def test_known_values_use_the_spacing(tmp_path):
    ref = np.zeros((20, 20, 20), np.uint8)
    ref[5:15, 5:15, 5:15] = 1
    pred = np.zeros_like(ref)
    pred[7:17, 5:15, 5:15] = 1  # shifted by 2 voxels along z, where the spacing is 3 mm
    code, r = _evaluate(tmp_path, _img(pred, (1.0, 1.0, 3.0)), _img(ref, (1.0, 1.0, 3.0)))
    m = r["cases"][0]["metrics"]["label_1"]
    assert m["dice"] == pytest.approx(0.8)
    assert 3.0 < m["hd95"] <= 6.0 + 1e-6 and 0 < m["asd"] < m["hd95"]
    res = api.evaluate(pred, ref, spacing=(1.0, 1.0, 3.0))
    assert res["cases"][0]["metrics"]["label_1"]["hd95"] == pytest.approx(m["hd95"])


def test_grid_mismatch_is_a_clear_error(tmp_path, capsys):
    a = np.zeros((8, 8, 8), np.uint8)
    a[2:5, 2:5, 2:5] = 1
    code, _ = _evaluate(tmp_path, _img(a, (1.0, 1.0, 2.0)), _img(a))
    err = capsys.readouterr().err
    assert code == 2 and "spacing" in err and "Traceback" not in err


def test_folders_are_matched_by_name(tmp_path, capsys, shared_data):
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir(), ref.mkdir()
    names = sorted(os.listdir(os.path.join(HIPPO, "labelsTr")))[:3]
    for n in names:
        src = os.path.join(HIPPO, "labelsTr", n)
        img = sitk.ReadImage(src)
        sitk.WriteImage(img, str(ref / n))
        sitk.WriteImage(img, str(pred / n.replace(".nii.gz", ".nrrd")))
    os.remove(ref / names[2])  # a reference without a prediction is fine, a prediction without one is not
    os.remove(pred / names[2].replace(".nii.gz", ".nrrd"))
    sitk.WriteImage(sitk.ReadImage(os.path.join(HIPPO, "labelsTr", names[0])), str(ref / "extra.nii.gz"))
    assert main(["evaluate", "--pred", str(pred), "--label", str(ref), "--json", str(tmp_path / "e.json"),
                 "--csv", str(tmp_path / "t.csv"), "--markdown", str(tmp_path / "t.md")]) == 0
    r = json.load(open(tmp_path / "e.json"))
    assert [c["case"] for c in r["cases"]] == [n[:-7] for n in names[:2]]
    assert r["overall"]["dice"]["mean"] == 1.0 and os.path.exists(tmp_path / "t.md")
    sitk.WriteImage(sitk.ReadImage(os.path.join(HIPPO, "labelsTr", names[0])), str(pred / "orphan.nii.gz"))
    assert main(["evaluate", "--pred", str(pred), "--label", str(ref), "--json", str(tmp_path / "e2.json")]) == 2
    assert "orphan" in capsys.readouterr().err


def test_existing_report_files_are_kept_unless_overwrite(tmp_path, capsys, shared_data):
    """--json results/summary.json also writes summary.csv and summary.md beside it: a hand-written summary.md there
    is refused before any case is evaluated, a folder as --json is a one-line error, --overwrite replaces them."""
    lbl = os.path.join(HIPPO, "labelsTr", "hippocampus_001.nii.gz")
    results = tmp_path / "results"
    results.mkdir()
    notes = results / "summary.md"
    notes.write_text("my notes")
    args = ["evaluate", "--pred", lbl, "--label", lbl, "--json", str(results / "summary.json")]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{notes} already exists" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert notes.read_text(encoding="utf-8") == "my notes" and sorted(os.listdir(results)) == ["summary.md"]
    assert main(["evaluate", "--pred", lbl, "--label", lbl, "--json", str(results)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    assert json.load(open(results / "summary.json"))["overall"]["dice"]["mean"] == 1.0
    assert notes.read_text(encoding="utf-8") != "my notes"
