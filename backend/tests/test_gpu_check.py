"""benchmarks/gpu_check.py, the prepared GPU check (issue 31, item 5), run for real on the CPU at toy scale.

`gpu_check.py --device cpu --tiny` trains MICD (width 4, patch 16 x 32 x 16, 6 iterations) on 7 shared hippocampus
cases, predicts a synthetic 64 x 64 x 40 CT, trains with `--nproc 1`, runs the one-rank DDP probe over gloo, and
records the CUDA out-of-memory retry as skipped (no CUDA). About 40 s on 2 cores. The full-size check is for a GPU
machine (benchmarks/README.md, "GPU check").
"""

import json
import os
import subprocess
import sys

from realdata import HIPPO, ROOT

SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.py")
STEPS = ["install", "environment", "train", "make_ct", "predict", "nproc1", "ddp_probe", "oom_retry"]


def test_gpu_check_cpu_tiny(tmp_path, shared_data):
    out = tmp_path / "tmp" / "x.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, SCRIPT, "--device", "cpu", "--tiny", "--out", str(out), "--data", HIPPO,
                        "--work", str(tmp_path / "work")], capture_output=True, encoding="utf-8", errors="replace", timeout=300, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r = json.loads(out.read_text())
    steps = r["steps"]
    assert list(steps) == STEPS
    assert r["passed"] is True and r["device"] == "cpu" and r["tiny"] is True

    # machine facts
    m = r["machine"]
    assert m["torch"] and m["cuda_available"] is False and "cpu_flags" in m and "cpu_capability" in m

    # no --wheels: nothing installed, and that does not count against the check
    assert steps["install"]["skipped"] and steps["install"]["counts"] is False
    pk = steps["environment"]["facts"]["packages"]
    assert all("version" in pk[k] for k in ("numpy", "monai", "SimpleITK", "nrrd", "safetensors", "micd"))
    assert pk["micd"]["from"] == os.path.join(ROOT, "backend")  # this tree's backend, not another install

    for name in ("environment", "train", "make_ct", "predict", "nproc1", "ddp_probe"):
        assert steps[name]["passed"] is True, (name, steps[name])
        assert steps[name]["seconds"] > 0 and steps[name]["rc"] == 0 and not steps[name]["timed_out"]

    tr = steps["train"]
    assert tr["iterations"] == r["settings"]["iterations"] == 6 and tr["patch_size"] == [16, 32, 16]
    assert tr["sec_per_iter"] > 0 and tr["done"] and tr["retries"] == []
    assert tr["peak_rss_mib"] > 0 and "peak_gpu_allocated_mib" not in tr  # no CUDA: no GPU figure, none made up

    pr = steps["predict"]
    assert pr["output_size_xyz"] == [64, 64, 40] and pr["plan"]["device"] == "cpu" and pr["inference_seconds"] >= 0

    assert steps["nproc1"]["iterations"] == 3 and steps["nproc1"]["world_size"] == 1
    probe = steps["ddp_probe"]
    assert probe["backend"] == "gloo" and probe["wrapped_as"] == "DistributedDataParallel" and probe["losses_finite"]
    assert probe["checks"] == {k: "ok" for k in ("ddp_micd_steps", "mean_across_ranks", "any_rank",
                                                 "broadcast_object", "barrier")}

    oom = steps["oom_retry"]
    assert oom["passed"] is False and oom["counts"] is False and "CUDA" in oom["skipped"]

    s = r["summary"]
    assert s["passed"]["oom_retry"] == "skipped" and s["passed"]["train"] is True and s["train_sec_per_iter"] > 0
    assert r["total_seconds"] < r["budget_s"] and r["within_budget"] is True
    assert not (tmp_path / "work" / "site").exists()  # nothing installed without --wheels
