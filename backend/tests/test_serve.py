"""`micd serve`: a warm worker that answers predict / suggest / info requests over stdin and stdout, on real
hippocampus volumes: the same labels as `micd predict`, the model loaded once, bad requests answered without
stopping, cancel at the next window batch (running or queued), shutdown and end of stdin exit 0."""

import json
import os
import queue
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from micd.data.preprocess import PreprocessPlan
from micd.inference.model_cache import ModelCache
from micd.model_package import save_model_package
from micd.nets.vnet import NetworkConfig, build_network
from realdata import hippo_cases, micd_cmd, run_micd


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A runnable model folder (random weights of a width-4 VNet: what is tested is the serving, not the Dice)."""
    folder = str(tmp_path_factory.mktemp("serve") / "model")
    torch.manual_seed(0)
    cfg = NetworkConfig(out_channels=3, filters=4)
    nets = {b: build_network(cfg).eval() for b in ("student_a", "student_b")}
    save_model_package(folder, dict(name="Hippo", labels={"1": "anterior", "2": "posterior"}, network=cfg.to_dict(),
                                    preprocessing=PreprocessPlan().to_dict(), patch_size=[16, 32, 16],
                                    method="supervised", default_ensemble=["student_a", "student_b"]), nets)
    return folder


class Worker:
    def __init__(self, *args):
        self.proc = subprocess.Popen(micd_cmd("serve", *args), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, encoding="utf-8", errors="replace", bufsize=1,
                                     env=dict(os.environ, OMP_NUM_THREADS="1"))
        self.lines = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(json.loads(l)) for l in self.proc.stdout],
                         daemon=True).start()
        self.seen = []
        assert self.next(60)["event"] == "ready"

    def send(self, obj):
        self.proc.stdin.write((obj if isinstance(obj, str) else json.dumps(obj)) + "\n")
        self.proc.stdin.flush()

    def next(self, timeout=120):
        event = self.lines.get(timeout=timeout)
        self.seen.append(event)
        return event

    def until_end(self, rid, timeout=120):
        """The events of request `rid` up to its one done/error (other ids' events are kept in `seen`)."""
        out, deadline = [], time.time() + timeout
        while True:
            event = self.next(max(0.1, deadline - time.time()))
            if event.get("id") == rid:
                out.append(event)
                if event["event"] in ("done", "error"):
                    return out


def test_requests_answer_as_predict_does_with_the_model_kept_warm(model, tmp_path, shared_data):
    cases = [c["image"] for c in hippo_cases(10, 3)]
    t = time.time()
    cold = run_micd("predict", "--model", model, "--input", cases[0], "--output", str(tmp_path / "cold.nii.gz"),
                    "--device", "cpu")
    cold_s = time.time() - t
    assert cold.returncode == 0, cold.stderr[-1500:]
    w = Worker()
    try:
        times = []
        for i, case in enumerate(cases[:2]):
            t = time.time()
            w.send({"id": str(i), "command": "predict", "model": model, "input": case,
                    "output": str(tmp_path / f"warm{i}.nii.gz"), "device": "cpu"})
            events = w.until_end(str(i))
            times.append(time.time() - t)
            assert [e["event"] for e in events][0] == "plan" and events[-1]["event"] == "done"
            assert "prediction" in [e["event"] for e in events] and "progress" in [e["event"] for e in events]
        # the same labels, voxel for voxel, as a cold `micd predict` of the same case
        same = [sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / n))) for n in ("cold.nii.gz", "warm0.nii.gz")]
        assert np.array_equal(*same)
        w.send({"id": "info", "command": "info", "model": model})
        info = w.until_end("info")[-1]
        assert info["event"] == "done" and info["cache"]["loads"] == 1 and info["cache"]["hits"] >= 2
        # keys as in micd predict's options; unknown commands, options and lines are answered, the worker goes on
        w.send({"id": "x", "command": "segment-everything"})
        assert w.until_end("x")[-1]["kind"] == "data"
        w.send({"id": "y", "command": "predict", "model": model, "input": cases[2], "bogus": 1})
        assert "no option 'bogus'" in w.until_end("y")[-1]["message"]
        w.send({"id": "z", "command": "predict", "model": model, "input": cases[2], "output": str(tmp_path / "z.nii.gz"),
                "tta": "yes"})
        assert w.until_end("z")[-1]["event"] == "error"
        w.send("this is not JSON")
        bad = w.next(30)
        assert (bad["id"], bad["event"], bad["kind"]) == (None, "error", "data") and "not a request" in bad["message"]
        w.send({"id": "n", "command": "predict", "model": str(tmp_path / "nowhere"), "input": cases[2],
                "output": str(tmp_path / "n.nii.gz")})
        assert w.until_end("n")[-1]["event"] == "error"
        w.send({"id": "ok", "command": "predict", "model": model, "input": cases[2],
                "output": str(tmp_path / "ok.nii.gz"), "device": "cpu", "tta": True})
        assert w.until_end("ok")[-1]["event"] == "done" and os.path.isfile(tmp_path / "ok.nii.gz")
        w.send({"command": "shutdown"})
        assert w.proc.wait(timeout=60) == 0
    finally:
        w.proc.kill()
    # warm is the prediction alone: far below a cold `micd predict` process (start-up and imports, seconds here)
    assert times[1] < 0.35 * cold_s, (times, cold_s)


def start_two_slow_requests(w, model, tmp_path, control):
    """Requests 1 and 2 (many small windows: seconds each), then `control`; returns once request 1 is running.
    Returns the input volume."""
    case = hippo_cases(20, 1)[0]["image"]
    slow = {"command": "predict", "model": model, "input": case, "device": "cpu", "overlap": 0.9, "sw_batch_size": 1}
    w.send({"id": "1", **slow, "output": str(tmp_path / "1.nii.gz")})
    w.send({"id": "2", **slow, "output": str(tmp_path / "2.nii.gz")})
    w.send(control)
    while not any(e.get("id") == "1" and e["event"] == "progress" for e in w.seen):
        w.next()
    return case


def test_cancel_stops_the_running_request_and_a_queued_one(model, tmp_path, shared_data):
    w = Worker()
    try:
        case = start_two_slow_requests(w, model, tmp_path, {"id": "c2", "command": "cancel", "target": "2"})
        t = time.time()
        w.send({"id": "c1", "command": "cancel", "target": "1"})
        end1 = w.until_end("1")[-1]
        assert end1["event"] == "error" and end1["kind"] == "cancelled" and time.time() - t < 5
        end2 = w.until_end("2")[-1]
        assert end2["kind"] == "cancelled" and "before it started" in end2["message"]
        assert not os.path.exists(tmp_path / "1.nii.gz") and not os.path.exists(tmp_path / "2.nii.gz")
        answers = {e["target"]: e for e in w.seen if e.get("command") == "cancel"}
        assert answers["1"]["running"] is True and answers["2"]["running"] is False
        # the worker goes on
        w.send({"id": "3", "command": "predict", "model": model, "input": case, "device": "cpu",
                "output": str(tmp_path / "3.nii.gz")})
        assert w.until_end("3")[-1]["event"] == "done"
        w.proc.stdin.close()  # the end of stdin is a shutdown: the caller is gone
        assert w.proc.wait(timeout=60) == 0
    finally:
        w.proc.kill()


def test_the_model_cache_keeps_the_recent_models_within_its_bounds(model, tmp_path):
    import shutil

    copies = []
    for i in range(3):
        shutil.copytree(model, tmp_path / f"m{i}")
        copies.append(str(tmp_path / f"m{i}"))
    cache = ModelCache(max_models=2)
    first = cache.get(copies[0])
    assert cache.get(copies[0]) is first and (cache.loads, cache.hits) == (1, 1)
    cache.get(copies[1])
    cache.get(copies[2])  # the least recently used (copies[0]) goes
    assert len(cache) == 2 and cache.peek(copies[0]) is None and cache.peek(copies[2]) is not None
    one = cache.bytes // 2
    small = ModelCache(max_models=4, max_bytes=one)  # room for one model: the one in use always stays
    small.get(copies[0])
    small.get(copies[1])
    assert len(small) == 1 and small.peek(copies[1]) is not None
    # a model rewritten in place is loaded again, never served stale
    time.sleep(0.01)
    os.utime(os.path.join(copies[1], "weights.safetensors"))
    before = small.peek(copies[1])
    assert small.get(copies[1]) is not before and small.loads == 3


def test_shutdown_stops_the_running_request_and_answers_the_queued_ones(model, tmp_path, shared_data):
    w = Worker()
    try:
        start_two_slow_requests(w, model, tmp_path, {"id": "c", "command": "cancel", "target": "no-such-request"})
        t = time.time()
        w.send({"command": "shutdown"})
        assert w.until_end("1")[-1]["kind"] == "cancelled"
        end2 = w.until_end("2")[-1]
        assert end2["kind"] == "cancelled" and "shutting down" in end2["message"]
        assert w.proc.wait(timeout=30) == 0 and time.time() - t < 10
        unknown = next(e for e in w.seen if e.get("id") == "c")
        assert unknown["found"] is False and unknown["running"] is False
        assert not os.path.exists(tmp_path / "1.nii.gz") and not os.path.exists(tmp_path / "2.nii.gz")
    finally:
        w.proc.kill()
