"""`micd predict` progress: the window total known up front matches the windows MONAI runs (whole grid and slabs),
progress events on stdout count up to it, and the plan says which precision and why."""

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from realdata import HIPPO
from inference_helpers import make_model
from micd.cli import main
from micd.training.devices import cpu_has_fast_bf16
from micd.inference.memory import AccumulationPlan
from micd.inference.progress import CountingPredictor, count_windows
from micd.inference.sliding import segment_grid

torch.set_num_threads(1)


def _hippo(i=0):
    return os.path.join(HIPPO, "imagesTr", sorted(os.listdir(os.path.join(HIPPO, "imagesTr")))[i])


def test_window_total_matches_what_monai_runs(shared_data):
    arr = sitk.GetArrayFromImage(sitk.ReadImage(_hippo())).astype(np.float32)  # a real volume, (z, y, x)
    arr = np.concatenate([arr, arr[::-1]], 0)  # long enough along z for several slabs

    def pointwise(x):
        return torch.softmax(torch.cat([x, -x, 0.3 * x ** 2], 1).float(), 1)

    roi = (16, 32, 16)
    plans = [AccumulationPlan("cpu", "cpu", "float32", 0, arr.shape[0], 0, 1, 0, 0, "")]
    plans += [AccumulationPlan("cpu", "cpu", "float16", ax, keep, 4, 0, 0, 0, "") for ax, keep in ((0, 9), (1, 13),
                                                                                                    (2, 20))]
    for plan in plans:
        for overlap in (0.25, 0.5):
            reports = []
            counter = CountingPredictor(pointwise, count_windows(arr.shape, roi, plan, overlap), reports.append,
                                        min_interval_s=0.0)
            segment_grid(arr, counter, roi, plan, 3, False, overlap, sw_batch_size=3)
            assert counter.done == counter.total, (plan.slab_axis, overlap)
            done = [r["windows_done"] for r in reports]
            assert done == sorted(done) and len(done) >= counter.total // 3 - 1
            assert all(0 < r["fraction"] < 1 and r["eta_s"] is not None for r in reports)
            counter.finish()
            assert reports[-1]["windows_done"] == reports[-1]["windows_total"] and reports[-1]["fraction"] == 1.0
            assert reports[-1]["eta_s"] == 0


def test_predict_prints_progress_events(tmp_path, shared_data, capsys):
    model = make_model(tmp_path / "model")
    folder = tmp_path / "in"
    folder.mkdir()
    for i in (0, 1):
        sitk.WriteImage(sitk.ReadImage(_hippo(i)), str(folder / f"case{i}.nii.gz"))
    # a buffer this small cuts the grid into slabs: progress runs across them
    assert main(["predict", "--device", "cpu", "--num-threads", "1", "--model", str(model), "--input", str(folder),
                 "--output", str(tmp_path / "out"), "--max-buffer-gb", "0.0005"]) == 0
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines() if l.startswith("{")]
    plans = [l for l in lines if l["event"] == "plan"]
    assert len(plans) == 2 and all(p["plan"]["n_slabs"] > 1 for p in plans)
    # bf16 autocast where the CPU has fast bf16 (as training chooses it), fp32 elsewhere; the reason names the CPU
    assert plans[0]["precision"] == ("bf16" if cpu_has_fast_bf16() else "fp32")
    assert "AMX/AVX512-BF16" in plans[0]["precision_reason"]
    for index, plan in enumerate(plans, 1):
        prog = [l for l in lines if l["event"] == "progress" and l["input"] == plan["input"]]
        assert prog and {(p["image"], p["images"]) for p in prog} == {(index, 2)}
        assert prog[-1]["windows_done"] == prog[-1]["windows_total"] == plan["windows"] and prog[-1]["fraction"] == 1
        assert [p["windows_done"] for p in prog] == sorted(p["windows_done"] for p in prog)
        # each image's progress comes after its plan and before its prediction
        kinds = [l["event"] for l in lines if l.get("input") == plan["input"]]
        assert kinds[0] == "plan" and kinds[-1] == "prediction" and set(kinds[1:-1]) == {"progress"}


def _run_on_terminal(argv, timeout=300):
    """Run `argv` with stdout and stderr on a pseudo-terminal (as at a shell prompt); (exit code, what it showed)."""
    import fcntl
    import pty
    import select
    import struct
    import subprocess
    import sys
    import termios
    import time

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "micd", *argv], stdin=subprocess.DEVNULL, stdout=slave,
                            stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks, deadline = [], time.time() + timeout
    try:
        while time.time() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=max(1.0, deadline - time.time()))
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return code, b"".join(chunks).decode("utf-8", "replace")


def test_predict_at_a_terminal_shows_a_bar_and_summaries_not_json(tmp_path, shared_data):
    """At a terminal (auto): a bar and one summary line per image and at the end, no JSON; through a pipe the JSON
    events come as before (the Slicer panels read them so)."""
    from realdata import run_micd

    model = make_model(tmp_path / "model")
    folder = tmp_path / "in"
    folder.mkdir()
    for i in (0, 1):
        sitk.WriteImage(sitk.ReadImage(_hippo(i)), str(folder / f"case{i}.nii.gz"))
    common = ["predict", "--device", "cpu", "--num-threads", "1", "--model", str(model), "--input", str(folder)]
    code, shown = _run_on_terminal(common + ["--output", str(tmp_path / "tty")])
    assert code == 0, shown[-2000:]
    lines = [l.strip("\r") for l in shown.replace("\r\n", "\n").split("\n")]
    assert not any(l.lstrip().startswith("{") or '"event"' in l for l in lines), shown[-2000:]
    for i in (0, 1):
        summary = [l for l in lines if f"case{i}.nii.gz -> " in l]
        assert len(summary) == 1 and f"[{i + 1}/2]" in summary[0], shown[-2000:]
        assert (tmp_path / "tty" / f"case{i}.nii.gz").is_file()
    assert any("micd predict: 2 images segmented in" in l for l in lines), shown[-2000:]
    assert "window" in shown  # the bar of the windows

    piped = run_micd(*common, "--output", str(tmp_path / "pipe"))  # stdout a pipe: JSON lines, as the panels read
    assert piped.returncode == 0, piped.stderr[-2000:]
    events = [json.loads(l) for l in piped.stdout.splitlines() if l.strip()]  # every stdout line is an event
    kinds = [e["event"] for e in events]
    assert kinds.count("plan") == 2 and kinds.count("prediction") == 2 and kinds[-1] == "done"
    assert "progress" in kinds and "segmented in" not in piped.stdout
    # asked for, the events come at a terminal too
    code, shown = _run_on_terminal(common + ["--output", str(tmp_path / "asked"), "--progress", "jsonl"])
    assert code == 0 and '{"event": "done"' in shown, shown[-2000:]
