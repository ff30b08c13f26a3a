"""A run folder is safe and durable: checkpoints never run code, one trainer per folder, a torn last checkpoint and a
full disk (injected ENOSPC) lose nothing, and the run continues exactly with --resume."""

import errno
import json
import os
import pickle
import shutil
import signal
import subprocess

import numpy as np
import pytest
import torch

from realdata import TINY, losses_by_iter, micd_cmd, run_micd
from micd.cli import main
from micd.events import read_events
from micd.model_package import load_model_package
from micd.training.checkpoint import load_checkpoint, set_numpy_global_state
from test_training import _wait_for


def train_args(ds, out, *extra):
    return ["train", "--dataset", ds, "--out", out, "--iterations", "12", "--checkpoint-every", "5", "--seed", "3",
            *TINY, *extra]


def copy_run(run, dest):
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("train.lock"))
    return str(dest)


def ckpt(run, name="last.pt"):
    return os.path.join(run, "checkpoints", name)


def last_error(p):
    return [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")][-1]


def test_trapped_checkpoint_is_refused_and_its_code_never_runs(tiny_run, tmp_path):
    ds, run, _ = tiny_run
    out = copy_run(run, tmp_path / "run")
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(ckpt(out), "wb") as f:
        pickle.dump({"model": Payload()}, f)
    p = run_micd(*train_args(ds, out, "--iterations", "14"), "--resume")
    assert p.returncode == 2 and not marker.exists()
    assert "Traceback" not in p.stdout + p.stderr
    err = last_error(p)
    assert err["event"] == "error" and err["kind"] == "data" and ckpt(out) in err["message"]
    assert "convert-checkpoint" in err["hint"] and err["problems"][0]["file"] == ckpt(out)


def test_old_pickled_checkpoint_is_refused_then_converted_on_request(tiny_run, tmp_path):
    """A checkpoint as micd wrote it before (np.random's legacy tuple state, an ndarray inside): refused by --resume;
    `micd convert-checkpoint` rewrites it and the run then continues exactly."""
    ds, run, _ = tiny_run
    out = copy_run(run, tmp_path / "run")
    os.remove(ckpt(out))  # resume from previous.pt (iteration 10), so that iterations 11 and 12 are compared
    state = torch.load(ckpt(out, "previous.pt"), weights_only=True)
    set_numpy_global_state(state["rng"]["numpy"])
    state["rng"]["numpy"] = np.random.get_state()
    torch.save({k: v for k, v in state.items() if not k.startswith("format")}, ckpt(out, "previous.pt"))
    p = run_micd(*train_args(ds, out), "--resume")
    assert p.returncode == 2 and "convert-checkpoint" in last_error(p)["hint"]
    p = run_micd("convert-checkpoint", out)
    assert p.returncode == 0, p.stdout + p.stderr
    assert os.path.isfile(os.path.join(out, "checkpoints", "before-convert", "previous.pt"))
    assert load_checkpoint(ckpt(out, "previous.pt"))["iteration"] == 10
    p = run_micd(*train_args(ds, out), "--resume")
    assert p.returncode == 0, p.stdout[-1500:] + p.stderr[-1500:]
    reference = losses_by_iter(read_events(os.path.join(run, "events.jsonl")))
    resumed = losses_by_iter(read_events(os.path.join(out, "events.jsonl")))
    for it in (11, 12):
        assert resumed[it] == pytest.approx(reference[it], rel=1e-5), it


def test_convert_checkpoint_leaves_what_it_cannot_rewrite_as_it_was(tiny_run, tmp_path):
    """A pickle that is not a micd checkpoint, and an original already kept by an earlier conversion: refused with
    one line on stderr, every file as it was; a current checkpoint is left alone."""
    import datetime

    _, run, _ = tiny_run
    out = copy_run(run, tmp_path / "run")
    foreign = ckpt(out, "best.pt")
    torch.save({"when": datetime.date(2026, 1, 1)}, foreign)  # a pickled object: weights_only refuses it
    before = open(foreign, "rb").read()
    p = run_micd("convert-checkpoint", out)
    assert p.returncode == 1 and "not a checkpoint of micd" in p.stderr and "Traceback" not in p.stderr
    assert open(foreign, "rb").read() == before and "already in the current format" in p.stdout
    os.makedirs(os.path.join(out, "checkpoints", "before-convert"))
    with open(os.path.join(out, "checkpoints", "before-convert", "best.pt"), "wb") as f:
        f.write(b"the first original")
    p = run_micd("convert-checkpoint", out)
    assert p.returncode == 2 and "earlier conversion" in p.stderr and open(foreign, "rb").read() == before
    assert open(os.path.join(out, "checkpoints", "before-convert", "best.pt"), "rb").read() == b"the first original"


def test_torn_last_checkpoint_falls_back_to_the_previous_one(tiny_run, tmp_path):
    ds, run, _ = tiny_run
    out = copy_run(run, tmp_path / "run")
    size = os.path.getsize(ckpt(out))
    with open(ckpt(out), "r+b") as f:  # copied halfway
        f.truncate(size // 2)
    p = run_micd(*train_args(ds, out), "--resume")
    assert p.returncode == 0, p.stdout[-1500:] + p.stderr[-1500:]
    events = read_events(os.path.join(out, "events.jsonl"))
    n_before = len(read_events(os.path.join(run, "events.jsonl")))
    warn = [e for e in events[n_before:] if e["event"] == "warning"]
    assert warn and warn[0]["file"] == ckpt(out) and "previous.pt (iteration 10)" in warn[0]["message"]
    assert [e for e in events[n_before:] if e["event"] == "start"][0]["start_iter"] == 10
    reference = losses_by_iter(read_events(os.path.join(run, "events.jsonl")))
    resumed = losses_by_iter(events)
    for it in (11, 12):
        assert resumed[it] == pytest.approx(reference[it], rel=1e-5), it
    # the torn file was replaced, and it did not push the good previous checkpoint out
    assert load_checkpoint(ckpt(out))["iteration"] == 12
    assert load_checkpoint(ckpt(out, "previous.pt"))["iteration"] == 10

    # torn, and nothing earlier: a clear refusal, the torn file left for the user
    os.remove(ckpt(out, "previous.pt"))
    with open(ckpt(out), "r+b") as f:
        f.truncate(1000)
    p = run_micd(*train_args(ds, out, "--iterations", "14"), "--resume")
    assert p.returncode == 2 and "Traceback" not in p.stdout + p.stderr
    err = last_error(p)
    assert err["kind"] == "data" and "no earlier complete checkpoint" in err["message"]
    assert os.path.getsize(ckpt(out)) == 1000


def _full_disk(real, when):
    """A stand-in for `real` that writes a little, then fails as a full disk does, for the calls `when` picks."""
    def write(obj, f=None, *a, **kw):
        if not when(obj):
            return real(obj, f, *a, **kw)
        if f is not None:
            f.write(b"PK\x03\x04" + b"\0" * 4096)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return write


def test_full_disk_in_checkpoint_and_export_keeps_the_last_good_one(tiny_run, tmp_path, monkeypatch, capsys):
    ds, run, _ = tiny_run
    out = str(tmp_path / "full")
    real_save = torch.save
    monkeypatch.setattr(torch, "save", _full_disk(real_save, lambda s: "optimizer" in s and s["iteration"] == 10))
    assert main(train_args(ds, out)) == 1
    err = read_events(os.path.join(out, "events.jsonl"))[-1]
    assert err["event"] == "error" and err["kind"] == "disk", err
    assert err["path"] == ckpt(out) and isinstance(err["free_bytes"], int) and "free" in err["message"]
    assert load_checkpoint(ckpt(out))["iteration"] == 5
    assert not [f for f in os.listdir(os.path.join(out, "checkpoints")) if f.startswith(".tmp")]

    # space freed for the checkpoints, but the disk fills up again during the model export
    monkeypatch.setattr(torch, "save", real_save)
    import safetensors.torch
    monkeypatch.setattr(safetensors.torch, "save", _full_disk(None, lambda tensors: True))
    assert main(train_args(ds, out, "--resume")) == 1
    events = read_events(os.path.join(out, "events.jsonl"))
    assert events[-1]["kind"] == "disk" and events[-1]["path"] == os.path.join(out, "model")
    assert load_checkpoint(ckpt(out))["iteration"] == 12
    assert not os.path.exists(os.path.join(out, "model"))
    assert not [f for f in os.listdir(out) if f.startswith(".model-")]
    reference = losses_by_iter(read_events(os.path.join(run, "events.jsonl")))
    resumed = losses_by_iter(events)
    for it in range(6, 13):
        assert resumed[it] == pytest.approx(reference[it], rel=1e-5), it

    monkeypatch.undo()
    p = run_micd(*train_args(ds, out), "--resume")
    assert p.returncode == 0, p.stdout[-1500:] + p.stderr[-1500:]
    assert load_model_package(os.path.join(out, "model")).meta["provenance"]["iterations"] == 12
    capsys.readouterr()


def test_second_trainer_on_a_busy_run_folder_exits_2_and_a_killed_one_never_blocks(tiny_run, tmp_path):
    ds, _, _ = tiny_run
    out = str(tmp_path / "busy")
    args = train_args(ds, out, "--iterations", "100000", "--checkpoint-every", "100000")
    proc = subprocess.Popen(micd_cmd(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        _wait_for(os.path.join(out, "events.jsonl"), '"iteration"', proc)
        p = run_micd(*args, "--resume")
        assert p.returncode == 2 and "Traceback" not in p.stdout + p.stderr
        err = last_error(p)
        assert err["kind"] == "data" and f"pid {proc.pid}" in err["message"]
        assert not [e for e in read_events(os.path.join(out, "events.jsonl")) if e["event"] == "error"], \
            "the refused trainer wrote into the busy run's events"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    p = run_micd(*train_args(ds, out, "--iterations", "2"), "--resume")  # the dead holder's lock is gone
    assert p.returncode == 0, p.stdout[-1500:] + p.stderr[-1500:]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_events_still_reach_stdout_when_the_events_file_hits_a_full_disk():
    import io

    from micd.events import EventWriter

    out = io.StringIO()
    w = EventWriter("/dev/full", out)  # every write there fails with ENOSPC
    w.emit("checkpoint", path="x", iter=1, kind="last")
    w.error("disk", "no space left", "free space")
    w.close()
    assert [json.loads(line)["event"] for line in out.getvalue().splitlines()] == ["checkpoint", "error"]
