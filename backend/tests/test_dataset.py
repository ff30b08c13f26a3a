"""The dataset file and MSD/nnU-Net folders: loading, structural errors, validation split, .seg.nrrd label mapping."""

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from micd.data.dataset import (Case, DatasetError, LabelMappingError, canonical_spacing, case_name, load_dataset_spec,
                               load_label_for_case, read_case_label, split_validation)
from micd.data.io import write_seg_nrrd

HIPPO = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "hippocampus")
HIPPO = os.path.abspath(HIPPO)
LABELS = {1: "hippocampus_anterior", 2: "hippocampus_posterior"}


def hippo(i: int, kind: str = "images") -> str:
    names = sorted(os.listdir(os.path.join(HIPPO, "imagesTr")))
    return os.path.join(HIPPO, f"{kind}Tr", names[i])


def write_json(path, obj):
    path.write_text(json.dumps(obj))
    return str(path)


def test_msd_folder_pairs_images_and_labels_by_name():
    spec = load_dataset_spec(HIPPO)
    assert spec.labels == LABELS  # "0": "background" dropped
    assert len(spec.labeled) == 260 and spec.unlabeled == [] and spec.validation == []
    assert spec.modality == "MR"  # "MRI" in dataset.json
    assert all(os.path.basename(c.image) == os.path.basename(c.label) for c in spec.labeled)
    assert all(os.path.isfile(c.image) and os.path.isfile(c.label) for c in spec.labeled)
    assert spec.problems == []


def test_nnunet_folder_with_channel_suffix_v2_labels_and_imagests(tmp_path):
    for d in ("imagesTr", "labelsTr", "imagesTs"):
        (tmp_path / d).mkdir()
    for i, name in enumerate(("a", "b")):
        os.symlink(hippo(i), tmp_path / "imagesTr" / f"{name}_0000.nii.gz")
        os.symlink(hippo(i, "labels"), tmp_path / "labelsTr" / f"{name}.nii.gz")
    os.symlink(hippo(0), tmp_path / "imagesTr" / "a_0001.nii.gz")  # a second channel: ignored
    os.symlink(hippo(2), tmp_path / "imagesTr" / "c_0000.nii.gz")  # no label: unlabeled
    os.symlink(hippo(3, "labels"), tmp_path / "labelsTr" / "orphan.nii.gz")  # no image: a problem
    os.symlink(hippo(4), tmp_path / "imagesTs" / "t_0000.nii.gz")
    write_json(tmp_path / "dataset.json", {"channel_names": {"0": "CT"}, "file_ending": ".nii.gz",
                                           "labels": {"background": 0, "anterior": 1, "posterior": 2}})
    spec = load_dataset_spec(str(tmp_path))
    assert spec.labels == {1: "anterior", 2: "posterior"}
    assert spec.modality == "CT"
    assert [(case_name(c.image), case_name(c.label)) for c in spec.labeled] == [("a", "a"), ("b", "b")]
    assert sorted(os.path.basename(p) for p in spec.unlabeled) == ["c_0000.nii.gz", "t_0000.nii.gz"]
    assert [os.path.basename(p.file) for p in spec.problems] == ["orphan.nii.gz"]
    assert any("channel" in n for n in spec.notes)


def test_json_spec_resolves_paths_against_its_folder_and_expands_unlabeled(tmp_path):
    (tmp_path / "unl").mkdir()
    for i in (5, 6):
        os.symlink(hippo(i), tmp_path / "unl" / os.path.basename(hippo(i)))
    # what unpacking the MSD tarball on a Mac leaves beside each volume: an AppleDouble fork, not an image
    (tmp_path / "unl" / ("._" + os.path.basename(hippo(5)))).write_bytes(b"\x00\x05\x16\x07" + bytes(80))
    os.symlink(hippo(0), tmp_path / "img0.nii.gz")
    os.symlink(hippo(0, "labels"), tmp_path / "lbl0.nii.gz")
    path = write_json(tmp_path / "ds.json", {
        "labels": {"0": "background", "1": "hippocampus_anterior", "2": "hippocampus_posterior"},
        "labeled": [{"image": "img0.nii.gz", "label": "lbl0.nii.gz"}],
        "unlabeled": ["unl", os.path.join(HIPPO, "imagesTr", "hippocampus_00*.nii.gz"), "img0.nii.gz"],
        "validation": [{"image": hippo(1), "label": hippo(1, "labels")}], "modality": "MR"})
    spec = load_dataset_spec(path)
    assert spec.labeled == [Case(str(tmp_path / "img0.nii.gz"), str(tmp_path / "lbl0.nii.gz"))]
    assert spec.labels == LABELS and spec.modality == "MR" and spec.source == path
    assert spec.unlabeled_sources[0] == str(tmp_path / "unl")
    names = [os.path.basename(p) for p in spec.unlabeled]
    assert names[:2] == [os.path.basename(hippo(5)), os.path.basename(hippo(6))]
    assert "img0.nii.gz" not in names  # a labeled image is not also unlabeled
    assert os.path.basename(hippo(1)) not in names  # nor is a validation image
    assert len(names) == len(set(names)) and not any(n.startswith(".") for n in names)
    assert not spec.problems  # the fork is skipped, not reported as an unreadable image
    assert any("also labeled" in n for n in spec.notes)


@pytest.mark.parametrize("content, expected", [
    ("{not json", ["not valid JSON"]),
    ("[]", ["JSON object"]),
    ("{}", ['missing "labels"', 'missing "labeled"']),
    (json.dumps({"labels": {"x": "liver"}, "labeled": {}, "unlabeled": "folder"}),
     ["not a non-negative integer", '"labeled" must be a list', '"unlabeled" must be a list']),
    (json.dumps({"labels": {"1": "liver"}, "labeled": [{"image": "a.nii.gz"}, 3]}), ["labeled[0]", "labeled[1]"]),
    (json.dumps({"labels": {"0": "background"}, "labeled": []}), ["no foreground label"]),
])
def test_structurally_bad_json_raises_with_every_problem(tmp_path, content, expected):
    path = tmp_path / "ds.json"
    path.write_text(content)
    with pytest.raises(DatasetError) as err:
        load_dataset_spec(str(path))
    text = str(err.value)
    assert len(err.value.problems) >= len(expected)
    for e in expected:
        assert e in text
    assert all(p.file == str(path) for p in err.value.problems)


def test_missing_dataset_and_non_dataset_folder(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_dataset_spec(str(tmp_path / "nope.json"))
    with pytest.raises(DatasetError, match="not a dataset"):
        load_dataset_spec(str(tmp_path))


def _spec(n):
    spec = load_dataset_spec(HIPPO)
    spec.labeled = spec.labeled[:n]
    return spec


def test_split_validation_rules():
    spec, note = split_validation(_spec(3), seed=0)
    assert len(spec.labeled) == 3 and spec.validation == [] and "none held out" in note
    spec10 = _spec(10)
    a, note = split_validation(spec10, seed=1)
    b, _ = split_validation(spec10, seed=1)
    c, _ = split_validation(spec10, seed=2)
    assert len(a.validation) == 2 and len(a.labeled) == 8 and "2 of 10" in note
    assert a.validation == b.validation and a.validation != c.validation  # seeded, reproducible
    assert not {x.image for x in a.validation} & {x.image for x in a.labeled}
    assert len(spec10.labeled) == 10  # the input spec is not modified
    four, _ = split_validation(_spec(4), seed=0)
    assert len(four.validation) == 1 and len(four.labeled) == 3
    capped, _ = split_validation(_spec(100), seed=0, max_cases=5)
    assert len(capped.validation) == 5
    given = _spec(5)
    given.validation = [given.labeled.pop()]
    same, note = split_validation(given, seed=0)
    assert same is given and "from the dataset file" in note


def test_seg_nrrd_segments_map_to_declared_labels_by_name(tmp_path):
    lbl = sitk.ReadImage(hippo(0, "labels"))
    arr = sitk.GetArrayFromImage(lbl)
    swapped = sitk.GetImageFromArray(np.choose(arr, [0, 2, 1]).astype(np.uint8))
    swapped.CopyInformation(lbl)
    path = str(tmp_path / "l.seg.nrrd")
    write_seg_nrrd(swapped, path, {1: "Hippocampus Posterior", 2: "hippocampus-anterior"})
    out = load_label_for_case(path, LABELS)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), arr)  # back in the dataset's numbering
    assert np.allclose(out.GetOrigin(), lbl.GetOrigin()) and np.allclose(out.GetDirection(), lbl.GetDirection())

    write_seg_nrrd(swapped, path, {1: "tumour", 2: "hippocampus_anterior"})
    img, undeclared = read_case_label(path, LABELS)
    assert undeclared == ["tumour"] and set(np.unique(sitk.GetArrayFromImage(img))) == {0, 1}
    with pytest.raises(LabelMappingError, match="tumour"):
        load_label_for_case(path, LABELS)


def test_canonical_spacing_follows_axis_permutation():
    # image axis 0 runs along world z, axis 1 along x, axis 2 along y
    direction = [0, 1, 0, 0, 0, -1, 1, 0, 0]
    assert canonical_spacing((3.0, 1.0, 2.0), direction) == (1.0, 2.0, 3.0)
    assert canonical_spacing((3.0, 1.0, 2.0), np.eye(3).ravel()) == (3.0, 1.0, 2.0)


def test_progress_none_still_says_why_training_did_not_start(tmp_path):
    from realdata import run_micd
    missing = str(tmp_path / "hippocampus_999.nii.gz")
    ds = write_json(tmp_path / "dataset.json", {"labels": {"1": "a"}, "labeled": [{"image": missing, "label": missing}]})
    p = run_micd("train", "--dataset", ds, "--out", str(tmp_path / "run"), "--progress", "none")
    assert p.returncode == 2 and p.stdout == ""  # "none": nothing on stdout
    assert "error (data)" in p.stderr and f"{missing}: file not found" in p.stderr and "hint:" in p.stderr
