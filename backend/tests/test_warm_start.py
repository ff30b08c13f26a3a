"""`micd train --init-from MODEL_DIR` on real hippocampus cases: the weights really come from the parent (students,
teachers, BatchNorm statistics), the run is otherwise fresh, the parent is recorded, and mismatches are refused."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from realdata import LABELS, TINY, run_micd, write_dataset
from micd.events import read_events


@pytest.fixture(scope="module")
def parents(tmp_path_factory, shared_data):
    """A MICD and a CPS model of width 4, trained for a few iterations on the same dataset."""
    folder = tmp_path_factory.mktemp("warm")
    ds = write_dataset(folder, n_lab=3, n_unlab=2, n_val=1)
    out = {}
    for method in ("micd", "cps"):
        run = os.path.join(folder, f"parent-{method}")
        p = run_micd("train", "--dataset", ds, "--out", run, "--method", method, "--iterations", "4", "--seed", "2",
                     "--progress", "none", *TINY)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
        out[method] = os.path.join(run, "model")
    return ds, out


def weights(model_dir):
    return load_file(os.path.join(model_dir, "weights.safetensors"))


def same(a, b):
    return sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def train(ds, out, *extra):
    return run_micd("train", "--dataset", ds, "--out", str(out), "--seed", "5", "--progress", "jsonl", *TINY, *extra)


def test_weights_come_from_the_parent_and_it_is_recorded(parents, tmp_path):
    ds, models = parents
    parent = weights(models["micd"])
    p = train(ds, tmp_path / "child", "--iterations", "0", "--init-from", models["micd"])
    assert p.returncode == 0, p.stdout[-2000:]
    assert same(weights(tmp_path / "child" / "model"), parent), "students, teachers and BN buffers are the parent's"
    cold = train(ds, tmp_path / "cold", "--iterations", "0")
    assert cold.returncode == 0 and not same(weights(tmp_path / "cold" / "model"), parent), "the check can fail"
    meta = json.load(open(tmp_path / "child" / "model" / "model.json"))
    rec = meta["provenance"]["parent_model"]
    assert rec["path"] == os.path.abspath(models["micd"]) and rec["method"] == "micd" and rec["iterations"] == 4
    import hashlib
    assert rec["weights_sha256"] == hashlib.sha256(
        open(os.path.join(models["micd"], "weights.safetensors"), "rb").read()).hexdigest()
    assert json.load(open(tmp_path / "cold" / "model" / "model.json"))["provenance"]["parent_model"] is None


def test_loaded_teachers_keep_the_full_ema_decay(parents, tmp_path):
    """Two steps from a MICD parent: each teacher stays near the parent's teacher (decay 0.99 from the first step)
    instead of becoming a copy of its student, which the warm-up of new teachers (0 at step 0) would make it."""
    ds, models = parents
    p = train(ds, tmp_path / "child", "--iterations", "2", "--init-from", models["micd"])
    assert p.returncode == 0, p.stdout[-2000:]
    w, parent = weights(tmp_path / "child" / "model"), weights(models["micd"])
    for branch in ("a", "b"):
        keys = [k for k in parent if k.startswith(f"teacher_{branch}.") and parent[k].is_floating_point()]
        moved_teacher = sum(float((w[k] - parent[k]).norm() ** 2) for k in keys) ** 0.5
        moved_student = sum(float((w[k.replace("teacher", "student")] - parent[k]).norm() ** 2) for k in keys) ** 0.5
        assert moved_student > 0 and moved_teacher < 0.1 * moved_student, (branch, moved_teacher, moved_student)


def test_continues_as_a_fresh_run(parents, tmp_path):
    """Own run folder, schedule from the start (iteration 1 at --lr), checkpoints; a CPS parent's students seed
    MICD's teachers too."""
    ds, models = parents
    run = tmp_path / "child"
    p = train(ds, run, "--iterations", "4", "--checkpoint-every", "2", "--lr", "0.02", "--init-from", models["cps"])
    assert p.returncode == 0, p.stdout[-2000:]
    events = read_events(str(run / "events.jsonl"))
    start = next(e for e in events if e["event"] == "start")
    assert start["start_iter"] == 0 and not start["resumed"]
    assert any("no teachers" in n and "copies of the students" in n for n in start["notes"])
    its = [e for e in events if e["event"] == "iteration"]
    assert its[0]["iter"] == 1 and its[0]["lr"] == pytest.approx(0.02)
    assert [e["iter"] for e in events if e["event"] == "checkpoint" and e["kind"] == "last"][0] == 2
    assert os.path.isfile(run / "checkpoints" / "last.pt") and os.path.isfile(run / "model" / "model.json")
    assert json.load(open(run / "config.json"))["init_from"] == models["cps"]
    # teachers from the CPS parent's students (0 iterations: nothing trained after the copy)
    q = train(ds, tmp_path / "zero", "--iterations", "0", "--init-from", models["cps"])
    assert q.returncode == 0, q.stdout[-2000:]
    w, parent = weights(tmp_path / "zero" / "model"), weights(models["cps"])
    for k, v in parent.items():
        assert torch.equal(w[k], v) and torch.equal(w[k.replace("student", "teacher")], v)


def test_mismatches_are_refused_with_exit_2(parents, tmp_path):
    ds, models = parents
    wide = [a for a in TINY] + ["--filters", "8"]  # argparse keeps the last --filters
    p = run_micd("train", "--dataset", ds, "--out", str(tmp_path / "wide"), "--iterations", "2", *wide,
                 "--init-from", models["micd"])
    err = [json.loads(l) for l in p.stdout.splitlines() if '"error"' in l]
    assert p.returncode == 2 and err and err[-1]["kind"] == "data"
    assert "filters 8 here, 4 in the parent" in err[-1]["message"] and "--filters 4" in err[-1]["hint"]
    assert not os.path.exists(tmp_path / "wide" / "model")
    d = json.load(open(ds))
    d["labels"] = {"1": "anterior", "2": LABELS["2"]}
    other = tmp_path / "renamed.json"
    other.write_text(json.dumps(d))
    p = train(other, tmp_path / "renamed", "--iterations", "2", "--init-from", models["micd"])
    err = [json.loads(l) for l in p.stdout.splitlines() if '"error"' in l]
    assert p.returncode == 2 and err[-1]["kind"] == "data" and "labels do not match" in err[-1]["message"]
    assert "1=anterior" in err[-1]["message"] and "1=hippocampus_anterior" in err[-1]["message"]
    p = train(ds, tmp_path / "nomodel", "--iterations", "2", "--init-from", str(tmp_path))
    err = [json.loads(l) for l in p.stdout.splitlines() if '"error"' in l]
    assert p.returncode == 2 and err[-1]["kind"] == "data" and "--init-from" in err[-1]["message"]


def test_resume_keeps_its_own_weights_and_the_parent(parents, tmp_path):
    """--resume of a warm-started run continues from its checkpoint (the parent is not copied in again) and the
    model still names the parent."""
    import shutil

    ds, models = parents
    parent = tmp_path / "parent"
    shutil.copytree(models["micd"], parent)
    run = tmp_path / "child"
    p = train(ds, run, "--iterations", "2", "--checkpoint-every", "1", "--init-from", parent)
    assert p.returncode == 0, p.stdout[-2000:]
    first = json.load(open(run / "model" / "model.json"))["provenance"]["parent_model"]
    # the parent folder is replaced by another model before the resume: the record stays the one the run started from
    shutil.copy(os.path.join(models["cps"], "weights.safetensors"), parent / "weights.safetensors")
    q = train(ds, run, "--iterations", "3", "--resume")
    assert q.returncode == 0, q.stdout[-2000:]
    starts = [e for e in read_events(str(run / "events.jsonl")) if e["event"] == "start"]
    assert len(starts) == 2 and starts[1]["start_iter"] == 2
    assert any("--init-from" in n for n in starts[0]["notes"])
    assert not any("--init-from" in n for n in starts[1]["notes"]), "weights come from the checkpoint on resume"
    meta = json.load(open(run / "model" / "model.json"))
    assert meta["provenance"]["iterations"] == 3
    assert meta["provenance"]["parent_model"] == first and first["path"] == os.path.abspath(parent)
    assert first["weights_sha256"] and first["method"] == "micd"
    assert [s["parent_model"] for s in starts] == [first, first], "the start event names the parent"


def test_any_tensor_shape_difference_is_a_clear_refusal(parents):
    """What the options do not set directly (e.g. strides planned from the data) is caught by comparing every
    tensor before loading, with the differing setting named, instead of a torch error."""
    from micd.model_package import load_model_package
    from micd.nets.vnet import NetworkConfig, build_network
    from micd.training.warm_start import WarmStartError, check_shapes

    _, models = parents
    pkg = load_model_package(models["micd"])
    check_shapes(pkg, "student_a", build_network(NetworkConfig(out_channels=3, filters=4)))
    with pytest.raises(WarmStartError) as e:
        check_shapes(pkg, "student_a", build_network(NetworkConfig(out_channels=3, filters=4,
                                                                   normalization="none")))
    assert "normalization none here, batchnorm in the parent" in str(e.value) and "tensor(s) differ" in str(e.value)
