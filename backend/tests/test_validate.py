"""Validation before training: every bad input, built from real hippocampus files, appears in one report."""

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from micd.data.dataset import Case, DatasetSpec, load_dataset_spec
from micd.data.io import write_seg_nrrd
from micd.data.validate import Report, validate_dataset

HIPPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "hippocampus"))
CT = os.path.abspath(os.path.join(HIPPO, "..", "ct_abdomen_example", "ct.nii.gz"))
LABELS = {1: "hippocampus_anterior", 2: "hippocampus_posterior"}


def real(i, kind="images"):
    return os.path.join(HIPPO, f"{kind}Tr", sorted(os.listdir(os.path.join(HIPPO, "imagesTr")))[i])


def save(img, path):
    sitk.WriteImage(img, str(path))
    return str(path)


def altered_label(tmp_path, name, fn, i=0):
    """A label derived from a real one by `fn(label image) -> image`, paired with the real image."""
    return Case(real(i), save(fn(sitk.ReadImage(real(i, "labels"))), tmp_path / f"{name}.nii.gz"))


def with_array(img, arr):
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    return out


def truncated(src, dst, fraction=0.6):
    data = open(src, "rb").read()
    with open(dst, "wb") as f:
        f.write(data[: int(len(data) * fraction)])
    return str(dst)


@pytest.fixture(scope="module")
def bad_report(tmp_path_factory):
    """One dataset holding every kind of bad input; returns (report, {kind: file that must be named})."""
    t = tmp_path_factory.mktemp("bad")
    img0 = sitk.ReadImage(real(0))
    files = {}

    def add(kind, case, file_attr="label"):
        files[kind] = getattr(case, file_attr)
        return case

    def setter(method, value):
        def f(im):
            getattr(im, method)(value)
            return im
        return f

    cases = [
        Case(real(0), real(0, "labels")),  # a good case
        add("unreadable", Case(truncated(real(1), t / "trunc.nii.gz"), real(1, "labels")), "image"),
        add("missing", Case(real(2), str(t / "nowhere.nii.gz"))),
        add("unreadable_label", Case(real(13), truncated(real(13, "labels"), t / "trunc_label.nii.gz"))),
        add("size", altered_label(t, "size", lambda im: im[:-2, :, :], 3)),
        add("spacing", altered_label(t, "spacing", setter("SetSpacing", (1.5, 1.0, 1.0)), 4)),
        add("origin", altered_label(t, "origin", lambda im: setter("SetOrigin", tuple(
            np.array(im.GetOrigin()) + [2.0, 0, 0]))(im), 5)),
        add("direction", altered_label(t, "direction", setter("SetDirection", (1, 0, 0, 0, 1, 0, 0, 0, 1)), 6)),
        add("float", altered_label(t, "float", lambda im: with_array(
            im, sitk.GetArrayFromImage(im).astype(np.float32) * 0.5), 7)),
        add("undeclared", altered_label(t, "seven", lambda im: with_array(
            im, np.where(sitk.GetArrayFromImage(im) == 2, 7, sitk.GetArrayFromImage(im)).astype(np.uint8)), 8)),
        add("empty", altered_label(t, "empty", lambda im: with_array(im, 0 * sitk.GetArrayFromImage(im)), 9)),
        add("2d", Case(save(img0[:, :, 10], t / "img2d.nii.gz"),
                       save(sitk.ReadImage(real(0, "labels"))[:, :, 10], t / "lbl2d.nii.gz")), "image"),
        add("4d", Case(save(sitk.JoinSeries([img0, img0]), t / "img4d.nii.gz"), real(0, "labels")), "image"),
        add("vector", Case(save(sitk.Compose(img0, img0), t / "vec.nrrd"), real(0, "labels")), "image"),
    ]
    seg = sitk.ReadImage(real(10, "labels"))
    write_seg_nrrd(seg, str(t / "seg.seg.nrrd"), {1: "hippocampus anterior", 2: "fornix"})
    cases.append(add("segment", Case(real(10), str(t / "seg.seg.nrrd"))))
    (t / "empty_folder").mkdir()
    (t / "broken_folder").mkdir()
    broken = truncated(real(11), t / "broken_folder" / "b.nii.gz", 0.05)
    files.update(empty_folder=str(t / "empty_folder"), broken_folder=str(t / "broken_folder"), broken_file=broken,
                 glob=str(t / "nothing_*.nii.gz"))
    spec = DatasetSpec(labels=LABELS, labeled=cases, source=str(t / "ds.json"),
                       unlabeled_sources=[files["empty_folder"], files["broken_folder"], files["glob"], real(12)])
    return validate_dataset(spec, workers=2), files


@pytest.mark.parametrize("kind, words", [
    ("unreadable", ["unreadable"]),
    ("missing", ["not found"]),
    ("unreadable_label", ["truncated"]),
    ("size", ["size", "differs"]),
    ("spacing", ["spacing", "differs"]),
    ("origin", ["origin", "differs"]),
    ("direction", ["direction", "differs"]),
    ("float", ["not integers", "0.5"]),
    ("undeclared", ["[7]", "not declared"]),
    ("empty", ["empty"]),
    ("2d", ["not a 3D image"]),
    ("4d", ["not a 3D image", "2 volumes"]),
    ("vector", ["components"]),
    ("segment", ["'fornix'"]),
    ("empty_folder", ["no image files"]),
    ("broken_file", ["unreadable"]),
    ("broken_folder", ["no readable image"]),
    ("glob", ["matches no image"]),
])
def test_each_bad_input_is_reported_with_its_file(bad_report, kind, words):
    report, files = bad_report
    reasons = [p.reason for p in report.problems if p.file == files[kind]]
    assert reasons, f"no problem reported for {kind} ({files[kind]}):\n{report.format()}"
    assert any(all(w in r for w in words) for r in reasons), reasons


def test_bad_report_is_one_report_and_spares_good_files(bad_report):
    report, files = bad_report
    assert not report.ok
    named = {p.file for p in report.problems}
    assert real(0) not in named and real(0, "labels") not in named and real(12) not in named
    assert real(3) not in named  # only the label of a mismatched pair is blamed
    text = report.format()
    assert text.startswith("Dataset check") and all(f in text for f in files.values())
    assert len(report.to_dict()["problems"]) == len(report.problems)


def test_no_labeled_cases(tmp_path):
    spec = DatasetSpec(labels=LABELS, labeled=[], unlabeled=[real(0)], source="ds.json")
    report = validate_dataset(spec)
    assert not report.ok and any("no labeled cases" in p.reason for p in report.problems)


def test_real_dataset_file_is_ok_and_warns_on_outliers(tmp_path):
    ds = {"labels": {"1": "hippocampus_anterior", "2": "hippocampus_posterior"}, "modality": "MR",
          "labeled": [{"image": real(i), "label": real(i, "labels")} for i in range(4)],
          "unlabeled": [real(20), CT]}
    (tmp_path / "ds.json").write_text(json.dumps(ds))
    report = validate_dataset(load_dataset_spec(str(tmp_path / "ds.json")))
    assert report.ok, report.format()
    warned = {p.file: p.reason for p in report.warnings}
    assert set(warned) == {CT}, report.format()
    ct_warnings = [p.reason for p in report.warnings]
    assert any("looks like a CT" in r for r in ct_warnings) and any("spacing outlier" in r for r in ct_warnings)


def test_header_only_mode_still_checks_labels(tmp_path):
    lbl = save(with_array(sitk.ReadImage(real(0, "labels")), 0 * sitk.GetArrayFromImage(
        sitk.ReadImage(real(0, "labels")))), tmp_path / "l.nii.gz")
    spec = DatasetSpec(labels=LABELS, labeled=[Case(real(0), lbl)], source="x")
    report = validate_dataset(spec, read_voxels=False)
    assert [p.file for p in report.problems] == [lbl]
    assert isinstance(report, Report)
