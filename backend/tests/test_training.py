"""Integration tests of `micd train` on real hippocampus cases: events, model folder, determinism, resume after
SIGKILL, SIGTERM, bad input and protection of an existing run."""

import json
import os
import signal
import subprocess
import time

import pytest

from realdata import TINY, losses_by_iter, micd_cmd, run_micd, write_dataset
from micd.events import EVENT_KINDS, read_events
from micd.model_package import load_model_package


def test_events_and_model_folder(tiny_run):
    ds, run, p = tiny_run
    events = read_events(os.path.join(run, "events.jsonl"))
    stdout_events = [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")]
    assert [e["event"] for e in stdout_events] == [e["event"] for e in events], "stdout mirrors events.jsonl"
    assert all(e["event"] in EVENT_KINDS and "time" in e and e["schema"] == 1 for e in events)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    start = events[0]
    assert (start["labeled"], start["unlabeled"], start["validation"], start["iterations"]) == (3, 3, 1, 12)
    its = [e for e in events if e["event"] == "iteration"]
    assert [e["iter"] for e in its] == list(range(1, 13))
    assert set(its[-1]["loss"]) == {"sup", "mcpc", "cfc", "cmd", "total"}
    assert its[-1]["eta_s"] == 0 and its[0]["lr"] == pytest.approx(0.03) and its[-1]["lr"] < its[0]["lr"]
    assert its[0]["beta"] < its[-1]["beta"] <= 0.1 + 1e-9  # Gaussian ramp-up
    assert [e["iter"] for e in events if e["event"] == "checkpoint" and e["kind"] == "last"] == [5, 10, 12]
    val = [e for e in events if e["event"] == "validation"]
    assert val and set(val[-1]["dice"]) == {"hippocampus_anterior", "hippocampus_posterior"}
    model = events[-1]["model"]
    pkg = load_model_package(model)
    assert pkg.labels == {1: "hippocampus_anterior", 2: "hippocampus_posterior"}
    assert set(pkg.networks) == {"student_a", "student_b", "teacher_a", "teacher_b"}
    assert pkg.default_ensemble == ["student_a", "student_b"]
    prov = pkg.meta["provenance"]
    assert prov["seed"] == 3 and prov["iterations"] == 12 and prov["counts"]["labeled"] == 3
    assert pkg.meta["method"] == "micd" and pkg.meta["patch_size"] == [16, 32, 16]
    cfg = json.load(open(os.path.join(run, "config.json")))
    assert cfg["iterations"] == 12 and cfg["seed"] == 3
    assert not [f for f in os.listdir(model) if f.endswith((".pt", ".pth", ".pkl"))], "no pickle in the model"


def test_same_seed_repeats_and_existing_run_is_protected(tiny_run, tmp_path):
    ds, run, _ = tiny_run
    first = losses_by_iter(read_events(os.path.join(run, "events.jsonl")))
    again = os.path.join(tmp_path, "again")
    p = run_micd("train", "--dataset", ds, "--out", again, "--iterations", "12", "--checkpoint-every", "5",
                 "--seed", "3", *TINY)
    assert p.returncode == 0
    assert losses_by_iter(read_events(os.path.join(again, "events.jsonl"))) == first
    before = os.path.getmtime(os.path.join(run, "events.jsonl"))
    p = run_micd("train", "--dataset", ds, "--out", run, "--iterations", "12", *TINY)
    assert p.returncode == 2 and "already holds a training run" in p.stdout
    assert os.path.getmtime(os.path.join(run, "events.jsonl")) == before


def test_a_kept_model_or_config_without_the_logs_is_protected(tiny_run, tmp_path):
    """A run folder whose logs and checkpoints were cleaned up still holds the user's model (which the end of a run
    would replace) and config.json (which its start would rewrite): both refused, both left byte-identical."""
    import shutil

    ds, run, _ = tiny_run
    for kept in ("model", "config.json"):
        folder = tmp_path / f"kept-{kept}"
        folder.mkdir()
        src = os.path.join(run, kept)
        (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, folder / kept)
        before = {f: open(os.path.join(dp, f), "rb").read() for dp, _, fs in os.walk(folder) for f in fs}
        p = run_micd("train", "--dataset", ds, "--out", str(folder), "--iterations", "12", *TINY)
        assert p.returncode == 2 and "already holds a training run" in p.stdout and "Traceback" not in p.stderr
        after = {f: open(os.path.join(dp, f), "rb").read() for dp, _, fs in os.walk(folder) for f in fs
                 if f != "train.lock"}
        assert after == before


def test_a_damaged_saved_config_is_a_clear_error_on_resume(tiny_run, tmp_path):
    ds, run, _ = tiny_run
    folder = tmp_path / "torn"
    folder.mkdir()
    (folder / "config.json").write_text('{"iterations": 12, "see')  # what a full disk mid-write used to leave
    p = run_micd("train", "--dataset", ds, "--out", str(folder), "--resume", *TINY)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    err = [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")][-1]
    assert err["event"] == "error" and "saved options cannot be read" in err["message"] and err["hint"]


def _wait_for(path, text, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if os.path.exists(path) and text in open(path).read():
            return
        if proc.poll() is not None:
            raise AssertionError(f"process ended early with {proc.returncode}")
        time.sleep(0.05)
    raise AssertionError(f"{text} not seen in {path}")


def test_sigkill_then_resume_continues_exactly(tiny_run, tmp_path):
    ds, run, _ = tiny_run
    reference = losses_by_iter(read_events(os.path.join(run, "events.jsonl")))
    out = os.path.join(tmp_path, "killed")
    args = ["train", "--dataset", ds, "--out", out, "--iterations", "12", "--checkpoint-every", "5", "--seed", "3",
            *TINY]
    proc = subprocess.Popen(micd_cmd(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    _wait_for(os.path.join(out, "events.jsonl"), '"kind": "last"', proc)
    proc.kill()
    proc.wait()
    p = run_micd(*args, "--resume")
    assert p.returncode == 0, p.stdout[-1500:] + p.stderr[-1500:]
    events = read_events(os.path.join(out, "events.jsonl"))
    starts = [e for e in events if e["event"] == "start"]
    assert len(starts) == 2 and starts[1]["start_iter"] in (5, 10) and starts[1]["resumed"]
    assert max(e["iter"] for e in events if e["event"] == "iteration") == 12 and events[-1]["event"] == "done"
    resumed = losses_by_iter(events)
    for it in range(starts[1]["start_iter"] + 1, 13):  # the same data, masks and state as the uninterrupted run
        assert resumed[it] == pytest.approx(reference[it], rel=1e-5), it


def test_sigterm_saves_checkpoint_and_exits_3(tmp_path, shared_data):
    ds = write_dataset(tmp_path)
    out = os.path.join(tmp_path, "term")
    proc = subprocess.Popen(micd_cmd("train", "--dataset", ds, "--out", out, "--iterations", "100000",
                                     "--checkpoint-every", "100000", *TINY), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(os.environ, OMP_NUM_THREADS="1"))
    _wait_for(os.path.join(out, "events.jsonl"), '"iteration"', proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 3
    events = read_events(os.path.join(out, "events.jsonl"))
    err = events[-1]
    assert err["event"] == "error" and err["kind"] == "cancelled" and "SIGTERM" in err["message"]
    assert os.path.isfile(err["checkpoint"]) and err["iter"] >= 1
    assert events[-2]["event"] == "checkpoint"


def test_bad_dataset_reports_every_problem_with_exit_2(tmp_path, shared_data):
    ds = json.load(open(write_dataset(tmp_path)))
    ds["labeled"][0]["image"] += ".missing"
    ds["labeled"][1]["label"] = ds["labeled"][2]["label"]  # another case's label: size mismatch
    bad = os.path.join(tmp_path, "bad.json")
    json.dump(ds, open(bad, "w"))
    p = run_micd("train", "--dataset", bad, "--out", os.path.join(tmp_path, "r"), "--iterations", "5", *TINY)
    assert p.returncode == 2
    err = [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")][-1]
    assert err["event"] == "error" and err["kind"] == "data" and err["hint"]
    files = " ".join(pr["file"] for pr in err["problems"])
    assert ".missing" in files and os.path.basename(ds["labeled"][1]["label"]) in files
    assert len(err["problems"]) >= 2


def test_api_train_streams_events_and_returns_model(tmp_path, shared_data):
    from micd import api

    ds = write_dataset(tmp_path, n_lab=2, n_unlab=2, n_val=0)
    seen = []
    model = api.train(ds, os.path.join(tmp_path, "run"), iterations=3, patch_size=(16, 32, 16), filters=4,
                      device="cpu", num_threads=1, on_event=seen.append)
    assert os.path.isfile(os.path.join(model, "model.json"))
    assert [e["event"] for e in seen][0] == "start" and seen[-1]["event"] == "done"
    with pytest.raises(api.TrainingFailed) as err:
        api.train(ds + ".missing", os.path.join(tmp_path, "bad"), iterations=3, device="cpu")
    assert err.value.event["kind"] == "data" and err.value.returncode == 2


def test_resuming_with_changed_training_options_warns(tiny_run, tmp_path):
    """A resume that changes what is trained (here the class weighting) is allowed but said, with the old and new
    values; options that only say how long or how often (here --iterations) are not listed."""
    import shutil

    ds, run, _ = tiny_run
    out = str(tmp_path / "resumed")
    shutil.copytree(run, out)
    p = run_micd("train", "--dataset", ds, "--out", out, "--resume", "--iterations", "14", "--class-weights", "none",
                 *TINY)
    assert p.returncode == 0, p.stdout[-1500:] + p.stderr[-1500:]
    warnings = [e["message"] for e in read_events(os.path.join(out, "events.jsonl"))[-40:] if e["event"] == "warning"]
    changed = [w for w in warnings if w.startswith("resumed with options")]
    assert len(changed) == 1 and "class_weights: default -> none" in changed[0] and "iterations" not in changed[0]


def test_a_supervised_warmup_is_planned_and_run_as_supervised_steps(tmp_path, shared_data):
    """--warmup-fraction 0.5 under a time budget: the planner times the warm-up's supervised step apart from MICD's
    step (the supervised one is the cheaper), the warm-up's iterations report the supervised loss alone, and the
    ramp-up's iterations MICD's terms."""
    ds = write_dataset(tmp_path, n_lab=2, n_unlab=2, n_val=0)
    run = tmp_path / "run"
    p = run_micd("train", "--dataset", ds, "--out", str(run), "--iterations", "6", "--time-budget", "10m",
                 "--warmup-fraction", "0.5", "--batch-labeled", "2", "--batch-unlabeled", "2", "--val-fraction", "0",
                 *TINY)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    events = list(read_events(str(run / "events.jsonl")))
    (start,) = [e for e in events if e["event"] == "start"]
    cal = start["budget_plan"]["calibration"]
    assert 0 < cal["supervised_step_s"] < cal["full_step_s"]
    assert start["warmup_iterations"] == 3
    iters = {e["iter"]: e for e in events if e["event"] == "iteration"}
    assert sorted(iters) == [1, 2, 3, 4, 5, 6]
    for it in (1, 2, 3):
        assert set(iters[it]["loss"]) == {"sup", "total"} and iters[it]["beta"] == 0
    for it in (4, 5, 6):
        assert {"sup", "mcpc", "cfc", "cmd", "total"} <= set(iters[it]["loss"]) and iters[it]["beta"] > 0
