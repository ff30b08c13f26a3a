"""A run folder is safe and durable: checkpoints never run code, one trainer per folder, a torn last checkpoint and a
full disk (injected ENOSPC, and a real small tmpfs) lose nothing, and the run continues exactly with --resume."""

import errno
import fnmatch
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from realdata import TINY, losses_by_iter, micd_cmd, run_micd, write_dataset
from micd.cli import main
from micd.diskfull import DiskFull, disk_guard, is_disk_full
from micd.events import read_events
from micd.model_package import load_model_package
from micd.training.checkpoint import load_checkpoint, set_numpy_global_state
from micd.training.runlock import PID_WIDTH, RunFolderBusy, RunLock, read_holder_pid
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


HOLD_LOCK = ("import sys, time\nfrom micd.training.runlock import RunLock\nRunLock(sys.argv[1]).acquire()\n"
             "print('held', flush=True)\ntime.sleep(600)")


def test_a_refused_acquire_leaves_train_lock_as_it_was(tmp_path, shared_data):
    """Another process holds the lock; a second RunLock.acquire and a second real `micd train` are refused and leave
    train.lock's bytes and mtime alone. The holder alone writes: its pid, in fixed width, anything longer cut off."""
    run = tmp_path / "run"
    lock = run / "train.lock"
    run.mkdir()
    lock.write_bytes(b"x" * 2000)  # not written by micd: the holder cuts it to its pid
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, encoding="utf-8", errors="replace")
    try:
        assert holder.stdout.readline().strip() == "held"
        assert lock.read_bytes() == str(holder.pid).ljust(PID_WIDTH).encode()
        os.utime(lock, ns=(10 ** 18, 10 ** 18))  # an mtime no write now can keep, whatever the clock's grain
        before = lock.read_bytes(), lock.stat().st_mtime_ns
        with pytest.raises(RunFolderBusy) as busy:
            RunLock(str(run)).acquire()
        assert busy.value.pid == holder.pid
        assert (lock.read_bytes(), lock.stat().st_mtime_ns) == before
        p = run_micd("train", "--dataset", write_dataset(tmp_path), "--out", str(run), "--resume", *TINY)
        assert p.returncode == 2 and "Traceback" not in p.stdout + p.stderr, p.stdout[-1500:] + p.stderr[-1500:]
        assert f"pid {holder.pid}" in last_error(p)["message"]
        assert (lock.read_bytes(), lock.stat().st_mtime_ns) == before, "the refused trainer wrote into train.lock"
    finally:
        holder.kill()
        holder.wait()
    with RunLock(str(run)) as mine:  # the dead holder's lock is free
        assert read_holder_pid(mine.path) == os.getpid() and lock.stat().st_size == PID_WIDTH


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_a_full_disk_is_found_behind_torchs_zip_writer_error():
    """torch.save into a full file raises RuntimeError('... unexpected pos ...') with the ENOSPC only in its chain
    (and closing the file may raise ENOSPC again on top): both are a full disk; disk_guard turns them into DiskFull."""
    def failed_save():
        try:
            with open("/dev/full", "wb") as f:  # every write fails with ENOSPC
                torch.save({"w": torch.zeros(100_000)}, f)
        except Exception as e:  # noqa: BLE001
            return e
        raise AssertionError("torch.save into /dev/full succeeded")

    e = failed_save()
    chain = []
    while e is not None:
        chain.append(e)
        e = e.__cause__ or e.__context__
    writer = [x for x in chain if isinstance(x, RuntimeError) and "unexpected pos" in str(x)]
    assert writer and writer[0].__context__ is not None, [repr(x) for x in chain]
    assert is_disk_full(writer[0]) and all(is_disk_full(x) for x in chain)
    with pytest.raises(DiskFull) as full, disk_guard("/dev/full"):
        raise writer[0]
    assert full.value.path == "/dev/full" and full.value.__cause__ is writer[0]

    bare = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    assert not is_disk_full(bare)  # no errno in its chain: not taken for a full disk
    with pytest.raises(RuntimeError), disk_guard("/dev/full"):
        raise bare
    try:  # a different error raised while handling a full disk stays what it is
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise KeyError("a bug in the clean-up")
    except KeyError as e:
        assert not is_disk_full(e)
    a = RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
    b = RuntimeError("unexpected pos 1 vs 0")
    a.__context__, b.__context__ = b, a  # a cycle ends the walk
    assert not is_disk_full(a)
    b.__cause__ = OSError(getattr(errno, "EDQUOT", errno.ENOSPC), "Disk quota exceeded")
    assert is_disk_full(a)


def _mount_small_tmpfs(folder, size="3m"):
    os.makedirs(folder)
    try:
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                           capture_output=True, encoding="utf-8", errors="replace", timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot mount a tmpfs here ({e})")
    if p.returncode != 0:
        why = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[0][:200]
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {why}")


def test_checkpoint_and_model_writes_on_a_real_full_disk_raise_diskfull_and_leave_no_temporary_file(tmp_path):
    """On a 1 MiB tmpfs: a checkpoint and a model folder that do not fit raise DiskFull naming the file, keep what was
    there and leave no temporary file."""
    from micd.model_package import save_model_package
    from micd.training.checkpoint import save_checkpoint

    small = tmp_path / "small"
    _mount_small_tmpfs(small, "1m")
    try:
        last = str(small / "checkpoints" / "last.pt")
        save_checkpoint({"iteration": 1, "w": torch.zeros(1000)}, last)
        with pytest.raises(DiskFull) as full:
            save_checkpoint({"iteration": 2, "w": torch.zeros(2 ** 19)}, last, keep_previous=True)  # 2 MiB
        assert full.value.path == last and is_disk_full(full.value.__cause__)
        assert load_checkpoint(last)["iteration"] == 1 and os.listdir(os.path.dirname(last)) == ["last.pt"]
        model = str(small / "model")
        with pytest.raises(DiskFull) as full:
            save_model_package(model, {"labels": {"1": "a"}}, {"student": torch.nn.Linear(1024, 512)})
        assert full.value.path == model and not os.path.exists(model)
        assert sorted(os.listdir(small)) == ["checkpoints"]
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)


@pytest.mark.parametrize("length", [["--iterations", "12"], ["--time-budget", "3m"]], ids=["checkpoint", "calibration"])
def test_a_real_full_disk_ends_the_run_with_a_disk_error_and_no_traceback(tmp_path, shared_data, length):
    """A run folder on a 3 MiB tmpfs: the first checkpoint (or, with --time-budget, the calibration's timed checkpoint
    write) does not fit. torch's zip writer fails with a RuntimeError whose context holds the ENOSPC; the run ends
    with an error event of kind disk, exit 1, no traceback and no temporary file left."""
    small = tmp_path / "small"
    _mount_small_tmpfs(small)
    try:
        run = str(small / "run")
        p = run_micd("train", "--dataset", write_dataset(tmp_path), "--out", run, *length,
                     "--checkpoint-every", "4", "--cache-dir", str(tmp_path / "cache"), "--patch-size", "16", "32",
                     "16", "--filters", "16", "--device", "cpu", "--seed", "0", "--num-threads", "1")
        said = p.stdout[-3000:] + p.stderr[-3000:]
        assert "Traceback (most recent call last)" not in p.stdout + p.stderr, said
        err = last_error(p)
        assert err["event"] == "error" and err["kind"] == "disk", said
        assert p.returncode == 1, said
        assert err["path"].startswith(run) and isinstance(err["free_bytes"], int) and "free" in err["hint"]
        left = [os.path.join(d, n) for d, dirs, files in os.walk(small) for n in dirs + files
                if fnmatch.fnmatch(n, "*.tmp*") or fnmatch.fnmatch(n, ".calibration-*")
                or fnmatch.fnmatch(n, ".model-*")]
        assert not left, left
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)


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
