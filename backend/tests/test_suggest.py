"""`micd suggest` on real hippocampus cases: the ranking, its score against an independent computation, determinism,
agreement of its segmentations with `micd predict`, and the refusals (nothing of the user's is replaced)."""

import copy
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from realdata import HIPPO, TINY, run_micd, write_dataset
from micd.model_package import load_model_package, save_model_package

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_data):
    """A tiny model trained on cases 0-2 (validation 3) and a folder of four other, unlabeled volumes."""
    folder = tmp_path_factory.mktemp("suggest")
    ds = write_dataset(folder, n_lab=3, n_unlab=0, n_val=1)
    run = os.path.join(folder, "run")
    p = run_micd("train", "--dataset", ds, "--out", run, "--iterations", "12", "--seed", "1", "--progress", "none",
                 *TINY)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    unl = folder / "unlabeled"
    unl.mkdir()
    names = sorted(os.listdir(os.path.join(HIPPO, "imagesTr")))[10:14]
    for n in names:
        os.symlink(os.path.join(HIPPO, "imagesTr", n), unl / n)
    return os.path.join(run, "model"), str(unl), names


def suggest(*args):
    return run_micd("suggest", "--device", "cpu", "--num-threads", "1", *map(str, args))


def suggest_here(*args):
    """`micd suggest` in this process (the refusals return before any prediction; start-up would dominate)."""
    import contextlib
    import io
    import types

    from micd.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["suggest", "--device", "cpu", "--num-threads", "1", *map(str, args)])
    return types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def test_ranks_folder_deterministically_and_segments_as_predict(trained, tmp_path):
    model, unl, names = trained
    runs = []
    for k in (1, 2):
        p = suggest("--model", model, "--input", unl, "--json", tmp_path / f"s{k}.json",
                    *(["--predictions", tmp_path / "seg"] if k == 1 else []))
        assert p.returncode == 0, p.stderr[-2000:]
        runs.append(json.load(open(tmp_path / f"s{k}.json")))
    a, b = runs
    rank = a["ranking"]
    assert sorted(os.path.basename(e["file"]) for e in rank) == names
    assert [e["rank"] for e in rank] == [1, 2, 3, 4]
    assert [e["score"] for e in rank] == sorted((e["score"] for e in rank), reverse=True)
    assert len({e["score"] for e in rank}) > 1, "scores should tell the volumes apart"
    for e in rank:
        assert 0 <= e["disagreement"] <= 1 and 0 <= e["entropy"] <= 1 and e["foreground_voxels"] > 0
        assert e["score"] == pytest.approx((e["disagreement"] + e["entropy"]) / 2, abs=2e-6)
        assert set(e["labels"]) == {"1", "2"} and e["labels"]["1"]["name"] == "hippocampus_anterior"
        assert e["least_certain_label"] in (1, 2)
        assert e["plan"] == {"device": "cpu", "buffer_device": "cpu", "dtype": "float32", "n_slabs": 1,
                             "sw_batch_size": 2, "precision": e["plan"]["precision"]}
    b_rank = [{k: v for k, v in e.items() if k != "prediction"} for e in b["ranking"]]
    assert [{k: v for k, v in e.items() if k != "prediction"} for e in rank] == b_rank, "two runs disagree"
    # stdout: a plan and a scored event per volume, then done with the same order as the JSON
    events = [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")]
    progress = [e for e in events if e["event"] == "progress"]
    assert [e["image"] for e in progress if e["fraction"] == 1.0] == [1, 2, 3, 4], "progress reaches 100 % per volume"
    events = [e for e in events if e["event"] != "progress"]
    assert [e["event"] for e in events] == ["plan", "scored"] * 4 + ["done"]
    assert [e["file"] for e in events[-1]["ranking"]] == [e["file"] for e in b["ranking"]]
    assert "rank  score" in p.stderr
    # --predictions holds the ensemble segmentation micd predict makes of the same volume
    top = rank[0]
    assert top["prediction"] and os.path.isfile(top["prediction"])
    ref = tmp_path / "ref.nii.gz"
    q = run_micd("predict", "--model", model, "--input", top["file"], "--output", ref, "--device", "cpu")
    assert q.returncode == 0, q.stderr[-2000:]
    mine = sitk.GetArrayFromImage(sitk.ReadImage(top["prediction"]))
    theirs = sitk.GetArrayFromImage(sitk.ReadImage(str(ref)))
    assert mine.shape == theirs.shape and (mine == theirs).mean() > 0.999
    found = sorted(int(v) for v in np.unique(mine) if v)
    assert found == top["labels_found"]


def test_score_matches_an_independent_computation(trained, tmp_path):
    """Recompute the documented score with MONAI directly, one student at a time."""
    from monai.inferers import sliding_window_inference

    from micd.data.io import read_image
    from micd.data.preprocess import preprocess_image

    model, unl, names = trained
    path = os.path.join(unl, names[0])
    # fp32, as the recomputation below (the CPU default is bf16 autocast where the CPU has fast bf16)
    p = suggest("--model", model, "--input", path, "--json", tmp_path / "one.json", "--amp", "off")
    assert p.returncode == 0, p.stderr[-2000:]
    got = json.load(open(tmp_path / "one.json"))["ranking"][0]
    pkg = load_model_package(model)
    arr, _ = preprocess_image(read_image(path), pkg.plan)
    x = torch.from_numpy(arr)[None, None]
    probs = []
    for b in ("student_a", "student_b"):
        net = pkg.networks[b].eval()
        with torch.no_grad():
            probs.append(sliding_window_inference(
                x, tuple(pkg.patch_size), 2, lambda t: torch.softmax(net(t, turnoff_drop=True)[0], 1),
                overlap=0.25, mode="gaussian", cval=float(arr.min()))[0].numpy())
    pa, pb = probs
    mean = (pa + pb) / 2
    fg = (mean.argmax(0) > 0) | (pa.argmax(0) > 0) | (pb.argmax(0) > 0)
    tv = 0.5 * np.abs(pa - pb).sum(0)
    ent = -(mean * np.log(np.clip(mean, 1e-12, None))).sum(0) / np.log(mean.shape[0])
    assert got["foreground_voxels"] == int(fg.sum())
    assert got["disagreement"] == pytest.approx(float(tv[fg].mean()), abs=1e-4)
    assert got["entropy"] == pytest.approx(float(ent[fg].mean()), abs=1e-4)
    lab1 = (mean.argmax(0) == 1) | (pa.argmax(0) == 1) | (pb.argmax(0) == 1)
    assert got["labels"]["1"]["disagreement"] == pytest.approx(float(tv[lab1].mean()), abs=1e-4)
    a1, b1 = pa.argmax(0) == 1, pb.argmax(0) == 1
    assert got["labels"]["1"]["student_dice"] == pytest.approx(2 * (a1 & b1).sum() / (a1.sum() + b1.sum()), abs=1e-5)


def test_identical_students_disagree_nowhere(trained, tmp_path):
    """A model whose student B is a copy of student A: disagreement is 0 on every volume, the entropy stays."""
    model, unl, _ = trained
    pkg = load_model_package(model)
    twin = save_model_package(str(tmp_path / "twin"), pkg.meta, {"student_a": pkg.networks["student_a"],
                                                                 "student_b": copy.deepcopy(pkg.networks["student_a"])})
    p = suggest("--model", twin, "--input", unl, "--top", "2", "--json", tmp_path / "t.json")
    assert p.returncode == 0, p.stderr[-2000:]
    rank = json.load(open(tmp_path / "t.json"))["ranking"]
    assert len(rank) == 2, "--top 2 keeps two"
    for e in rank:
        assert e["disagreement"] == 0 and e["entropy"] > 0
        assert all(v["student_dice"] in (None, 1.0) for v in e["labels"].values())


def test_one_volume_named_twice_is_ranked_once(trained, tmp_path):
    """The same file through the folder's link and by its own path is one volume, not two (nor a case-name clash)."""
    model, unl, names = trained
    link = os.path.join(unl, names[0])
    p = suggest("--model", model, "--input", link, os.path.realpath(link), unl + "/" + names[0],
                "--predictions", tmp_path / "seg", "--json", tmp_path / "one.json")
    assert p.returncode == 0, p.stderr[-2000:]
    rank = json.load(open(tmp_path / "one.json"))["ranking"]
    assert [e["file"] for e in rank] == [link] and os.listdir(tmp_path / "seg") == [rank[0]["case"] + ".seg.nrrd"]


def test_refusals_leave_user_files_alone(trained, tmp_path):
    model, unl, names = trained
    mine = tmp_path / "notes.json"
    mine.write_text('{"my": "notes"}')
    p = suggest_here("--model", model, "--input", unl, "--json", mine)
    assert p.returncode == 2 and "not a micd suggest file" in p.stderr
    assert mine.read_text() == '{"my": "notes"}'
    seg = tmp_path / "seg"
    seg.mkdir()
    taken = seg / (names[1].replace(".nii.gz", ".seg.nrrd"))
    taken.write_text("a user's segmentation")
    p = suggest_here("--model", model, "--input", unl, "--predictions", seg)
    assert p.returncode == 2 and "already exists" in p.stderr and taken.read_text() == "a user's segmentation"
    empty = tmp_path / "empty"
    empty.mkdir()
    p = suggest_here("--model", model, "--input", empty)
    assert p.returncode == 2 and "no image files" in p.stderr
    p = suggest_here("--model", tmp_path / "nothing", "--input", unl)
    assert p.returncode == 2 and "not a model folder" in p.stderr
    # programs (the Slicer panel) get the same refusal as an error event on stdout
    (event,) = [e for e in map(json.loads, p.stdout.splitlines()) if e["event"] == "error"]
    assert event["kind"] == "data" and "not a model folder" in event["message"]
    pkg = load_model_package(model)
    one = save_model_package(str(tmp_path / "one"), {**pkg.meta, "default_ensemble": ["student_a"]},
                             {"student_a": pkg.networks["student_a"]})
    p = suggest_here("--model", one, "--input", unl)
    assert p.returncode == 2 and "two students" in p.stderr
    # an unreadable volume is reported, the others are still ranked, and the exit code says so
    bad = tmp_path / "mixed"
    bad.mkdir()
    os.symlink(os.path.join(unl, names[0]), bad / names[0])
    (bad / "broken.nii.gz").write_bytes(b"not an image")
    p = suggest_here("--model", model, "--input", bad, "--json", tmp_path / "m.json")
    assert p.returncode == 2 and "broken.nii.gz" in p.stderr
    out = json.load(open(tmp_path / "m.json"))
    assert [os.path.basename(e["file"]) for e in out["ranking"]] == [names[0]]
    assert [os.path.basename(f) for f in out["failed"]] == ["broken.nii.gz"]


def test_slabs_add_up_to_the_whole_volume(trained, tmp_path):
    """A memory budget too small for one pass cuts the grid into slabs: the per-label counts summed over the slabs
    are those of the written segmentation (hippocampus is at the training spacing, so the grids coincide), which is
    what micd predict makes under the same budget."""
    model, unl, names = trained
    path = os.path.join(unl, names[1])
    p = suggest("--model", model, "--input", path, "--json", tmp_path / "slabs.json", "--max-buffer-gb", "0.0004",
                "--predictions", tmp_path / "seg")
    assert p.returncode == 0, p.stderr[-2000:]
    plan = next(json.loads(l) for l in p.stdout.splitlines() if '"plan"' in l)["plan"]
    assert plan["n_slabs"] > 2
    got = json.load(open(tmp_path / "slabs.json"))["ranking"][0]
    assert got["plan"]["n_slabs"] == plan["n_slabs"] and got["plan"]["dtype"] == "float16"
    seg = sitk.GetArrayFromImage(sitk.ReadImage(got["prediction"]))
    for v in ("1", "2"):
        assert got["labels"][v]["predicted_voxels"] == int((seg == int(v)).sum())
    assert got["foreground_voxels"] >= int((seg > 0).sum())
    q = run_micd("predict", "--model", model, "--input", path, "--output", tmp_path / "ref.nii.gz", "--device", "cpu",
                 "--max-buffer-gb", "0.0004")
    assert q.returncode == 0, q.stderr[-2000:]
    assert (seg == sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "ref.nii.gz")))).mean() > 0.995
