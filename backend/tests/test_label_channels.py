"""Sparse label values get contiguous network outputs: a dataset whose labels are 5 and 117 trains a 3-output network
that learns exactly what the same dataset labelled 1 and 2 teaches, and `micd predict` writes 5 and 117 back."""

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
from safetensors.numpy import load_file, save_file

from micd.cli import main
from micd.data.label_channels import LabelChannels
from micd.data.preprocess import PreprocessPlan
from micd.model_package import ModelPackageError, read_model_json
from micd.nets.vnet import NetworkConfig
from realdata import LABELS, TINY, hippo_cases, run_micd

SPARSE = {1: 5, 2: 117}


def test_channels_map_values_both_ways():
    ch = LabelChannels.for_labels([117, 5, 40])
    assert ch.values == (0, 5, 40, 117) and ch.count == 4 and not ch.identity
    values = np.array([[0, 5], [117, 40]], np.uint8)
    channels = ch.to_channels(values)
    assert channels.tolist() == [[0, 1], [3, 2]]
    assert ch.to_values(channels).tolist() == values.tolist()
    assert ch.names({5: "a", 40: "b", 117: "c"}) == {1: "a", 2: "b", 3: "c"}
    with pytest.raises(ValueError, match=r"\[6\]"):
        ch.to_channels(np.array([0, 6, 5]))
    assert LabelChannels.for_labels([1, 2]).identity
    assert LabelChannels.for_labels([300]).to_values(np.array([1], np.uint8)).dtype == np.uint16
    with pytest.raises(ValueError):
        LabelChannels((0, 3, 2))


def _relabelled_cases(folder, cases):
    """Copies of the cases' label files with 1 -> 5 and 2 -> 117 (images stay the shared files)."""
    os.makedirs(folder, exist_ok=True)
    out = []
    for c in cases:
        img = sitk.ReadImage(c["label"])
        arr = sitk.GetArrayFromImage(img)
        new = np.zeros_like(arr, np.uint8)
        for old, value in SPARSE.items():
            new[arr == old] = value
        assert set(np.unique(new)) == {0, 5, 117}
        lbl = sitk.GetImageFromArray(new)
        lbl.CopyInformation(img)
        path = os.path.join(folder, os.path.basename(c["label"]))
        sitk.WriteImage(lbl, path)
        out.append({"image": c["image"], "label": path})
    return out


def _train(folder, cases, labels):
    os.makedirs(folder, exist_ok=True)
    ds = os.path.join(folder, "dataset.json")
    with open(ds, "w") as f:
        json.dump({"labels": labels, "labeled": cases[:2], "unlabeled": [], "validation": cases[2:]}, f)
    p = run_micd("train", "--dataset", ds, "--out", os.path.join(folder, "run"), "--method", "supervised",
                 "--iterations", "12", "--validate-every", "12", "--seed", "3", "--progress", "none", *TINY)
    assert p.returncode == 0, p.stderr[-2000:]
    return os.path.join(folder, "run", "model")


def _without_background(model):
    """Lower the background logit of every output head: 12 iterations may not yet predict foreground (on some CPU
    kinds they do not), and the channel-to-value mapping must be compared on foreground of both labels."""
    path = os.path.join(model, "weights.safetensors")
    weights = load_file(path)
    for k in [k for k in weights if k.endswith("head.bias")]:
        weights[k] = weights[k].copy()
        weights[k][0] -= 100.0
    save_file(weights, path)


def test_sparse_label_values_train_and_predict_like_contiguous_ones(shared_data, tmp_path):
    cases = hippo_cases(10, 3)
    plain = _train(str(tmp_path / "plain"), cases, LABELS)
    sparse_labels = {str(SPARSE[int(k)]): v for k, v in LABELS.items()}
    sparse = _train(str(tmp_path / "sparse"), _relabelled_cases(str(tmp_path / "labels"), cases), sparse_labels)

    meta = read_model_json(sparse)
    assert meta["channels"] == [0, 5, 117] and meta["network"]["out_channels"] == 3
    assert read_model_json(plain)["channels"] == [0, 1, 2]
    # the labels reach the network as channels 1 and 2 in both runs: the same seed learns the same weights
    a, b = load_file(os.path.join(plain, "weights.safetensors")), load_file(os.path.join(sparse, "weights.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert meta["metrics"]["dice"] == read_model_json(plain)["metrics"]["dice"]

    image = hippo_cases(200, 1)[0]["image"]
    outs = {}
    for name, model in (("plain", plain), ("sparse", sparse)):
        _without_background(model)
        out = str(tmp_path / f"{name}.nii.gz")
        assert main(["predict", "--model", model, "--input", image, "--output", out, "--device", "cpu",
                     "--num-threads", "1"]) == 0
        outs[name] = sitk.GetArrayFromImage(sitk.ReadImage(out))
    assert set(np.unique(outs["plain"])) == {1, 2}, "both labels must be predicted for the mapping to be compared"
    mapped = np.zeros_like(outs["plain"])
    for old, value in SPARSE.items():
        mapped[outs["plain"] == old] = value
    assert np.array_equal(outs["sparse"], mapped)


def _model_json(tmp_path, **changes):
    meta = {"format": "micd-model", "schema_version": 1, "labels": {"5": "a", "117": "b"}, "channels": [0, 5, 117],
            "network": NetworkConfig(out_channels=3).to_dict(), "branches": ["student_a"],
            "preprocessing": PreprocessPlan().to_dict(), "patch_size": [16, 16, 16]}
    meta.update(changes)
    with open(tmp_path / "model.json", "w") as f:
        json.dump(meta, f)
    return str(tmp_path)


@pytest.mark.parametrize("changes, message", [
    (dict(channels=[0, 5, 116]), "do not list the labels"),
    (dict(channels=[0, 117, 5]), "invalid 'channels'"),
    (dict(network=NetworkConfig(out_channels=118).to_dict()), "118 outputs but 'channels' lists 3"),
    (dict(channels=None), None),
])
def test_model_json_channels_must_match_labels_and_outputs(tmp_path, changes, message):
    if changes.get("channels", 1) is None:  # an older folder: no map, one output per value up to the largest
        folder = _model_json(tmp_path)
        meta = json.load(open(tmp_path / "model.json"))
        del meta["channels"]
        json.dump(meta, open(tmp_path / "model.json", "w"))
        with pytest.raises(ModelPackageError, match="3 outputs but the labels go up to 117"):
            read_model_json(folder)
        return
    with pytest.raises(ModelPackageError, match=message):
        read_model_json(_model_json(tmp_path, **changes))


def test_a_parent_from_before_the_channel_map_warm_starts_on_its_label_outputs(tmp_path):
    """--init-from a folder with one output per value (118 for values up to 117): the students take the parent's
    body and the output rows of background, 5 and 117, so they compute exactly the parent's outputs for those."""
    import torch

    from micd.methods import MethodConfig, build_method
    from micd.model_package import load_model_package, save_model_package
    from micd.nets.vnet import build_network
    from micd.training.warm_start import apply

    labels = {5: "a", 117: "b"}
    torch.manual_seed(0)
    old = NetworkConfig(out_channels=118, filters=4)
    nets = {b: build_network(old).eval() for b in ("student_a", "student_b", "teacher_a", "teacher_b")}
    save_model_package(str(tmp_path / "old"), dict(name="old", labels={"5": "a", "117": "b"}, network=old.to_dict(),
                       preprocessing=PreprocessPlan().to_dict(), patch_size=[16, 16, 16], method="micd",
                       default_ensemble=["student_a", "student_b"]), nets)
    parent = load_model_package(str(tmp_path / "old"))
    assert "channels" not in parent.meta and parent.channels.count == 118
    method = build_method("micd", NetworkConfig(out_channels=3, filters=4), 3, MethodConfig())
    notes = apply(method, parent, labels, PreprocessPlan())
    assert any("one output per label value (118" in n for n in notes)
    x = torch.randn(1, 1, 16, 16, 16)
    for name, net in [*method.students.items(), *method.teachers.items()]:
        with torch.no_grad():
            mine = net.eval()(x, turnoff_drop=True)[0]
            theirs = parent.networks[name](x, turnoff_drop=True)[0][:, [0, 5, 117]]
        torch.testing.assert_close(mine, theirs)
