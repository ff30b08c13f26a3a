"""Speed and memory benchmark: training seconds per iteration of every method, and `micd predict` against a plain
`monai.inferers.sliding_window_inference` call with the same network, windows and overlap, in the same run.

Each measurement runs in its own process, one at a time (two torch processes on 2 cores slow each other 5-6x); wall
time, CPU time and the peak resident memory of that process (from `os.wait4`) are recorded. Results go to
benchmarks/results/speed/<name>.json and speed.md; a finished measurement is skipped when the script runs again
(`--force` repeats it).

  training: 2 labeled + 2 unlabeled patches of 32 x 64 x 64, students of width 16 (the issue's reference setting;
            the only other public MICD implementation takes 4.6 s per iteration on these 2 cores), with and without
            bf16 autocast; median of the timed iterations after two warm-up iterations.
  ct:       the shared abdominal CT (122 x 101 x 30 at 3 mm), a model of width 16 for its 41 labels as `micd train`
            makes it (values up to 117 packed into 42 output channels, data/label_channels.py); the ratio to MONAI.
  ct-paired: the same three commands as `ct` (plain MONAI, `micd predict`, `micd predict --amp off`) in turn, A B C A B C
            ... (--pairs rounds after one warm-up round), and the ratio of each `micd predict` run to the MONAI run of
            its own round; the median ratio is the figure to quote, since single runs drift with the machine.
  big42:    a synthetic 512 x 512 x 400 volume at 1 mm and a model of width 4 with 64x128x128 windows for the shared
            CT's labels (42 channels), one network, default options: the 4 GB memory bound.
  big118:   the same with a model folder written before the channel map (118 outputs, one per value up to 117).
  The plain MONAI call on the big volumes runs under a 12 GiB address-space limit and may fail, which is recorded.
  interactive: click to segmentation node in the Segment panel, through the test harness with the real backend
            (Testing/segment_latency.py): a cold click (a new worker: Python, torch, the model), warm clicks with the
            same model and with a model the worker has not loaded yet, and `micd predict` as one process, in one run.
  peer:     one MICD training step here against the other public MICD implementation (github:dodd-maindev/CIDSA_improve,
            a checkout named by --peer; it is not part of this project and is imported only by that process), in
            fp32, 2 + 2 patches of 32 x 64 x 64, width 16, 14 classes, 2 threads (issue 32, item 4): ours as `micd
            train` runs it (freed memory kept, micd.allocator) and with glibc's defaults, the peer as its trainer runs
            a step (forward, backward, gradient clipping, SGD, EMA of both teachers), and once more with micd's
            allocator settings (from glibc's environment: the allocator's share), in turn for --pairs rounds after
            a warm-up round; the ratio of each of ours to the peer run of its round, and each process's page faults
            and kernel time. As published the peer cannot run a step (its random-mask forward reads a name only its
            adaptive branch sets; the adaptive branch fails on a flattened map): the harness repairs that one name
            and times its default, random-mask form. Its package imports einops (--peer-python needs it).
The inference models have random weights: speed and memory do not depend on the weights. Every row records the CPU
flags that decide the precision (AMX / AVX512-BF16).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

from micd.cli import tolerant_console

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
METHODS = ["supervised", "mean-teacher", "cps", "dhc", "micd"]

TRAIN_SNIPPET = r"""
import json, sys, time, torch
from micd.methods import MethodConfig, build_method
from micd.nets import NetworkConfig
method, amp, iters = sys.argv[1], sys.argv[2], int(sys.argv[3])
classes = int(sys.argv[4]) if len(sys.argv) > 4 else 3
if len(sys.argv) > 5 and sys.argv[5] == "keep":  # as `micd train` sets it (training/session.py)
    from micd.allocator import keep_freed_memory
    keep_freed_memory()
torch.manual_seed(0); torch.set_num_threads(2)
m = build_method(method, NetworkConfig(out_channels=classes, filters=16), classes, MethodConfig())
opt = torch.optim.SGD(m.students.parameters(), lr=0.01, momentum=0.9, nesterov=True)
g = torch.Generator().manual_seed(0)
x_l, x_u = torch.randn(2, 1, 32, 64, 64), torch.randn(2, 1, 32, 64, 64)
y_l = torch.bucketize(x_l[:, 0], torch.linspace(0.5, 1.5, classes - 1))  # 0..classes-1; 3: as (x > 0.5) + (x > 1.5)
walls, cpus = [], []
for i in range(iters + 2):
    t, c = time.perf_counter(), time.process_time()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
        terms = m.step(x_l, y_l, x_u if m.uses_unlabeled else None, 0.1, g)
    opt.zero_grad(); terms["total"].backward(); opt.step(); m.after_step()
    if i >= 2:
        walls.append(time.perf_counter() - t); cpus.append(time.process_time() - c)
walls.sort(); cpus.sort()
print(json.dumps({"sec_per_iter": walls[len(walls) // 2], "cpu_sec_per_iter": cpus[len(cpus) // 2],
                  "loss_terms": sorted(terms)}))
"""

BASELINE_SNIPPET = r"""
import json, sys, time, numpy as np, SimpleITK as sitk, torch
from monai.inferers import sliding_window_inference
from micd.model_package import load_model_package
from micd.data.preprocess import preprocess_image
from micd.nets.vnet import LogitsOnly
model_dir, image, out, overlap = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
torch.set_num_threads(2)
pkg = load_model_package(model_dir)
img = sitk.ReadImage(image)
arr, ref = preprocess_image(img, pkg.plan)
net = LogitsOnly(pkg.networks["student_a"]).eval()
with torch.no_grad():
    prob = sliding_window_inference(torch.from_numpy(arr)[None, None], tuple(pkg.patch_size), 2, net,
                                    overlap=overlap, mode="gaussian")
lab = prob.argmax(1)[0].numpy().astype(np.uint8)
o = sitk.GetImageFromArray(lab); o.CopyInformation(ref)
sitk.WriteImage(sitk.Resample(o, img, sitk.Transform(), sitk.sitkNearestNeighbor, 0), out)
print(json.dumps({"ok": True}))
"""


PEER_SNIPPET = r"""
import json, os, sys, time, torch
peer, iters, classes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sys.path.insert(0, peer)
import micd
assert os.path.abspath(micd.__file__).startswith(os.path.abspath(peer)), micd.__file__  # the peer's package, not ours
# As published its forward cannot run with the random mask (the paper's): it passes `uncertainty_unlab`, which only
# the adaptive branch sets (the adaptive form fails too: its uncertainty map comes back flattened). The one repair,
# as its own next line does for the labeled batch: no uncertainty map when none was computed.
path = os.path.join(peer, "micd", "framework.py")
src = open(path, encoding="utf-8").read()
unset = "self._masked_input(x_unlab, uncertainty_unlab)"
assert src.count(unset) == 1, "the peer's framework.py is not the version this harness knows"
framework = type(sys)("micd.framework"); framework.__package__, framework.__file__ = "micd", path
sys.modules["micd.framework"] = framework
exec(compile(src.replace(unset, "self._masked_input(x_unlab, uncertainty_unlab if uncertainty is not None else None)"),
             path, "exec"), framework.__dict__)
MICDConfig, MICDFramework = framework.MICDConfig, framework.MICDFramework
torch.manual_seed(0); torch.set_num_threads(2)
model = MICDFramework(MICDConfig(n_classes=classes, base_channels=16))  # random mask, its default
model.train(); model.teacher_a.eval(); model.teacher_b.eval()  # as its trainer's epoch sets them
params = list(model.student_a.parameters()) + list(model.student_b.parameters())
opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)  # its trainer's optimiser
x_l, x_u = torch.randn(2, 1, 32, 64, 64), torch.randn(2, 1, 32, 64, 64)
y_l = torch.bucketize(x_l[:, 0], torch.linspace(0.5, 1.5, classes - 1))
walls, cpus = [], []
for i in range(iters + 2):
    t, c = time.perf_counter(), time.process_time()
    opt.zero_grad(set_to_none=True)
    out = model(x_l, y_l, x_u, current_epoch=50)  # past its ramp-up (β = 1): inside it, its ramp uses an unimported math
    out["loss_total"].backward()
    torch.nn.utils.clip_grad_norm_(model.student_a.parameters(), max_norm=3.0)
    torch.nn.utils.clip_grad_norm_(model.student_b.parameters(), max_norm=3.0)
    opt.step(); model.update_teachers()
    if i >= 2:
        walls.append(time.perf_counter() - t); cpus.append(time.process_time() - c)
walls.sort(); cpus.sort()
print(json.dumps({"sec_per_iter": walls[len(walls) // 2], "cpu_sec_per_iter": cpus[len(cpus) // 2],
                  "loss_terms": sorted(k for k in out if k.startswith("loss_"))}))
"""


def run_measured(cmd, env=None, limit_bytes=None) -> dict:
    """Run one command alone; return its wall and CPU seconds, peak RSS (MiB, from os.wait4: this child only),
    exit code and last stdout line. `limit_bytes` caps its address space."""
    def preexec():
        if limit_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    t0 = time.time()
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        p = subprocess.Popen(cmd, stdout=fo, stderr=fe, env=env, preexec_fn=preexec, encoding="utf-8", errors="replace")
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        fo.seek(0), fe.seek(0)
        out, err = fo.read(), fe.read()
    last = [l for l in out.splitlines() if l.strip()][-1:] or [""]
    plan = next((l for l in out.splitlines() if l.startswith('{"event": "plan"')), "")
    return {"wall_s": round(time.time() - t0, 2), "cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
            "peak_rss_mib": round(ru.ru_maxrss / 1024, 1), "minor_page_faults": ru.ru_minflt,
            "kernel_s": round(ru.ru_stime, 2), "returncode": p.returncode,
            "stdout_last": last[0][:2000], "plan_line": plan[:4000], "stderr_tail": err[-600:] if p.returncode else ""}


def in_turn(commands: Dict[str, tuple], rounds: int) -> Dict[str, List[dict]]:
    """Run {tag: (command, env)} one after another, round by round, alone: a warm-up round (page cache, imports) and
    then `rounds` measured ones, whose `run_measured` records come back per tag in round order, so that a ratio of
    two tags' i-th runs compares runs made minutes apart and the machine's drift cancels. A failed run stops it."""
    runs: Dict[str, List[dict]] = {tag: [] for tag in commands}
    for i in range(rounds + 1):
        for tag, (cmd, cmd_env) in commands.items():
            r = run_measured(cmd, cmd_env)
            if r["returncode"] != 0:
                raise SystemExit(f"{tag} failed ({r['returncode']}): {r['stderr_tail']}")
            if i:
                runs[tag].append(r)
    return runs


def ratio_summary(values: List[float], base: List[float]) -> dict:
    """Median, min and max of the round-by-round ratios values[i] / base[i]."""
    import statistics

    ratios = [v / b for v, b in zip(values, base)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def paired_rounds(py: str, env: dict, model: str, image: str, out_dir: str, rounds: int) -> dict:
    """`micd predict` (default precision and --amp off) against the plain MONAI call, in turn, round by round: each
    ratio is to the MONAI run of the same round."""
    import statistics

    os.makedirs(out_dir, exist_ok=True)
    commands = {"monai": ([py, "-c", BASELINE_SNIPPET, model, image, os.path.join(out_dir, "monai.nii.gz"), "0.25"],
                          env)}
    for tag, extra in (("micd predict", []), ("micd predict --amp off", ["--amp", "off"])):
        commands[tag] = ([py, "-m", "micd", "predict", "--model", model, "--input", image, "--output",
                          os.path.join(out_dir, f"micd{len(extra)}.nii.gz"), "--device", "cpu", "--branches",
                          "student_a", "--num-threads", "2", "--overwrite", *extra], env)
    runs = in_turn(commands, rounds)
    walls = {tag: [r["wall_s"] for r in rs] for tag, rs in runs.items()}
    variants = []
    for tag, rs in runs.items():
        if tag == "monai":
            continue
        plan = next((r["plan_line"] for r in reversed(rs) if r["plan_line"]), "")
        variants.append({"tool": tag, "precision": (json.loads(plan).get("precision") if plan else None) or "fp32",
                         "walls_s": walls[tag], "median_wall_s": statistics.median(walls[tag]),
                         "ratio": ratio_summary(walls[tag], walls["monai"])})
    return {"kind": "inference-paired", "rounds": rounds, "image": image, "monai_walls_s": walls["monai"],
            "monai_median_wall_s": statistics.median(walls["monai"]), "variants": variants}


def peer_rounds(py: str, peer_py: str, env: dict, peer: str, iterations: int, rounds: int, classes: int = 14) -> dict:
    """Our MICD step (as `micd train` runs it, and with glibc's defaults) against the peer implementation's, in turn,
    round by round, fp32: each ratio is to the peer run of the same round."""
    import statistics

    from micd import allocator

    # micd.allocator's mallopt settings as glibc reads them from the environment at start-up, for the peer's process
    allocator_env = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(allocator.TRIM_THRESHOLD),
                     "MALLOC_MMAP_THRESHOLD_": str(allocator.MMAP_THRESHOLD)}
    ours = [py, "-c", TRAIN_SNIPPET, "micd", "off", str(iterations), str(classes)]
    peer_cmd = [peer_py, "-c", PEER_SNIPPET, peer, str(iterations), str(classes)]
    peer_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    commands = {"micd (ours, as micd train runs it)": (ours + ["keep"], env),
                "micd (ours, glibc's default allocator)": (ours + ["default"], env),
                "peer": (peer_cmd, peer_env),
                "peer (with micd's allocator settings)": (peer_cmd, {**peer_env, **allocator_env})}  # its share
    runs = {tag: [{**json.loads(r["stdout_last"]), **{k: r[k] for k in
                   ("wall_s", "cpu_s", "kernel_s", "minor_page_faults", "peak_rss_mib")}} for r in rs]
            for tag, rs in in_turn(commands, rounds).items()}
    peer_steps = [r["sec_per_iter"] for r in runs["peer"]]
    rows = []
    for tag, rs in runs.items():
        steps = [r["sec_per_iter"] for r in rs]
        rows.append({"implementation": tag, "runs": rs, "median_sec_per_iter": statistics.median(steps),
                     "ratio_to_peer": ratio_summary(steps, peer_steps)})
    head = subprocess.run(["git", "-C", peer, "rev-parse", "HEAD"], capture_output=True, text=True)
    return {"kind": "training-peer", "rounds": rounds, "iterations_per_process": iterations, "precision": "fp32",
            "classes": classes, "filters": 16, "patch": [32, 64, 64], "batch": "2+2", "threads": 2,
            "peer": {"repository": "github:dodd-maindev/CIDSA_improve", "path": os.path.abspath(peer),
                     "commit": head.stdout.strip() if head.returncode == 0 else None,
                     "form": "random mask (its default, the paper's), its trainer's step; one unset name in "
                             "framework.py's forward repaired (no uncertainty map when none was computed)"},
            "implementations": rows}


def make_model(folder: str, spacing, labels: dict, patch, filters: int, packed: bool = True) -> str:
    """A model folder for `labels` {value: name}: with the channel map `micd train` writes (`packed`), or as older
    folders were, one output per value up to the largest."""
    from micd.data.label_channels import LabelChannels
    from micd.data.preprocess import PreprocessPlan
    from micd.model_package import save_model_package
    from micd.nets.vnet import NetworkConfig, build_network

    if os.path.isfile(os.path.join(folder, "model.json")):
        return folder
    channels = LabelChannels.for_labels(map(int, labels))
    cfg = NetworkConfig(out_channels=channels.count if packed else max(map(int, labels)) + 1, filters=filters)
    meta = {"labels": {str(k): v for k, v in labels.items()}, "network": cfg.to_dict(),
            **({"channels": list(channels.values)} if packed else {}),
            "preprocessing": PreprocessPlan(target_spacing=tuple(spacing), modality="CT").to_dict(),
            "patch_size": list(patch), "method": "speed-benchmark (random weights)", "provenance": {},
            "metrics": {}, "default_ensemble": ["student_a", "student_b"]}
    return save_model_package(folder, meta, {"student_a": build_network(cfg), "student_b": build_network(cfg, "xavier")})


def main() -> None:
    tolerant_console()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", default=["training", "ct", "ct-paired", "big42", "big118", "interactive"],
                    choices=["training", "ct", "ct-paired", "big42", "big118", "interactive", "peer"])
    ap.add_argument("--pairs", type=int, default=5, help="rounds of the ct-paired and peer parts (default 5)")
    ap.add_argument("--peer", help="for --parts peer: a checkout of github:dodd-maindev/CIDSA_improve")
    ap.add_argument("--peer-python", default=sys.executable,
                    help="the interpreter that runs the peer (needs torch and einops; default: this one)")
    ap.add_argument("--shared", default=os.path.join(ROOT, "..", "shared"))
    ap.add_argument("--results", default=os.path.join(HERE, "results", "speed"))
    ap.add_argument("--work", default=os.path.join(HERE, "runs", "speed"))
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    os.makedirs(a.results, exist_ok=True)
    os.makedirs(a.work, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="2")
    py = sys.executable
    from ssl_benchmark import cpu_kind, machine

    host = {**machine(), "cores": os.cpu_count(), "python": platform.python_version()}

    def record(name: str, fn) -> dict:
        path = os.path.join(a.results, name + ".json")
        if os.path.exists(path) and not a.force:
            return json.load(open(path))
        r = fn()
        r.update(name=name, host=host, measured=time.strftime("%Y-%m-%dT%H:%M:%S"))
        json.dump(r, open(path, "w", encoding="utf-8"), indent=1)
        print(name, json.dumps({k: r.get(k) for k in ("sec_per_iter", "wall_s", "peak_rss_mib", "returncode")}),
              flush=True)
        return r

    if "training" in a.parts:
        from micd.training.devices import cpu_has_fast_bf16
        for method in METHODS:
            for amp in (["off", "bf16"] if cpu_has_fast_bf16() else ["off"]):
                def train(method=method, amp=amp):
                    r = run_measured([py, "-c", TRAIN_SNIPPET, method, amp, str(a.iterations)], env)
                    r.update(json.loads(r["stdout_last"]) if r["returncode"] == 0 else {})
                    r.update(kind="training", method=method, amp=amp, patch=[32, 64, 64], filters=16, batch="2+2")
                    return r
                record(f"train-{method}-{amp}", train)

    # (networks, extra options, record suffix): the default (bf16 autocast where the CPU has fast bf16, as training
    # chooses it), and fp32 beside it, so that both ratios to the fp32 MONAI call are on record
    default_variants = [("student_a", [], ""), ("student_a", ["--amp", "off"], "-fp32"), ("students", [], "")]

    def inference_pair(tag: str, image: str, model: str, limit_gb: float, variants=default_variants):
        out_dir = os.path.join(a.work, tag)
        os.makedirs(out_dir, exist_ok=True)
        for branches, extra, suffix in variants:
            def ours(branches=branches, extra=extra):
                r = run_measured([py, "-m", "micd", "predict", "--model", model, "--input", image, "--output",
                                  os.path.join(out_dir, f"micd_{branches}{suffix}.nii.gz"), "--device", "cpu",
                                  "--branches", branches, "--num-threads", "2", "--overwrite", *extra], env)
                r.update(kind="inference", tool=" ".join(["micd predict", *extra]), branches=branches, image=image,
                         precision=json.loads(r["plan_line"]).get("precision") if r["plan_line"] else None)
                return r
            record(f"{tag}-micd-predict-{branches}{suffix}", ours)

        def plain():
            r = run_measured([py, "-c", BASELINE_SNIPPET, model, image, os.path.join(out_dir, "monai.nii.gz"),
                              "0.25"], env, limit_bytes=int(limit_gb * 1024 ** 3))
            r.update(kind="inference", tool="monai sliding_window_inference", branches="student_a", image=image,
                     address_space_limit_gib=limit_gb)
            return r
        record(f"{tag}-plain-monai", plain)

    ct_dir = os.path.join(a.shared, "data", "ct_abdomen_example")
    with open(os.path.join(ct_dir, "dataset.json")) as f:
        ct_labels = {int(k): v for k, v in json.load(f)["labels"].items() if int(k)}
    if {"ct", "ct-paired"} & set(a.parts):
        model = make_model(os.path.join(a.work, "model_ct42"), (1.5, 1.5, 3.0), ct_labels, (32, 128, 128), 16)
    if "ct" in a.parts:
        inference_pair("ct", os.path.join(ct_dir, "ct.nii.gz"), model, 20)
    if "ct-paired" in a.parts:
        record("ct-paired", lambda: paired_rounds(py, env, model, os.path.join(ct_dir, "ct.nii.gz"),
                                                  os.path.join(a.work, "ct-paired"), a.pairs))
    big = os.path.join(a.work, "synthetic_512x512x400.nrrd")
    for part, packed in (("big42", True), ("big118", False)):
        if part not in a.parts:
            continue
        if not os.path.exists(big):
            import numpy as np
            import SimpleITK as sitk
            arr = (np.random.default_rng(0).normal(0, 300, (400, 512, 512))).astype(np.int16)
            img = sitk.GetImageFromArray(arr)
            img.SetSpacing((1.0, 1.0, 1.0))
            sitk.WriteImage(img, big, useCompression=False)
            del arr, img
        model = make_model(os.path.join(a.work, f"model_{part}_ct_labels"), (1.0, 1.0, 1.0), ct_labels,
                           (64, 128, 128), 4, packed)
        # the default (bf16 autocast where the CPU has fast bf16) and fp32 beside it (issue 31: both side by side)
        inference_pair(part, big, model, 12, variants=[("student_a", [], ""), ("student_a", ["--amp", "off"], "-fp32")]
                       if part == "big42" else [("student_a", [], "")])

    if "peer" in a.parts:
        if not a.peer or not os.path.isfile(os.path.join(a.peer, "micd", "framework.py")):
            ap.error("--parts peer needs --peer, a checkout of github:dodd-maindev/CIDSA_improve "
                     "(with micd/framework.py)")
        record("train-micd-vs-peer", lambda: peer_rounds(py, a.peer_python, env, a.peer, a.iterations, a.pairs))

    if "interactive" in a.parts:
        def interactive():
            script = os.path.join(ROOT, "Testing", "segment_latency.py")
            p = subprocess.run([py, script, "--repeats", "3", "--threads", "2"], capture_output=True, encoding="utf-8", errors="replace",
                               env=dict(env, QT_QPA_PLATFORM="offscreen"), timeout=1800)
            if p.returncode != 0:
                raise SystemExit(f"segment_latency.py failed: {p.stderr[-2000:]}")
            return {"kind": "interactive", **json.loads(p.stdout.strip().splitlines()[-1])}
        record("interactive", interactive)

    rows = [json.load(open(os.path.join(a.results, f))) for f in sorted(os.listdir(a.results)) if f.endswith(".json")]
    lines = ["# Speed and memory (generated by `benchmarks/speed_benchmark.py`; do not edit)", "",
             "## Training: seconds per iteration (2 + 2 patches of 32x64x64, width 16, 2 CPU threads)", "",
             "| method | autocast | s/iter (wall, median) | CPU s/iter | loss terms |", "|---|---|---|---|---|"]
    for r in rows:
        if r.get("kind") == "training":
            lines.append(f"| {r['method']} | {r['amp']} | {r.get('sec_per_iter', float('nan')):.2f} | "
                         f"{r.get('cpu_sec_per_iter', float('nan')):.2f} | {', '.join(r.get('loss_terms', []))} |")
    lines += ["", "## Inference (CPU, 2 threads, overlap 0.25, Gaussian blending, default options)", "",
              "Wall and CPU seconds and peak resident memory of the whole process (start-up, reading, preprocessing, "
              "windows, writing); the ratio is to the plain MONAI call on the same case, measured in the same run.", "",
              "| case | tool | networks | precision | wall s | CPU s | ratio to MONAI (wall) | peak RSS MiB | exit | "
              "measured |", "|---|---|---|---|---|---|---|---|---|---|"]
    inference = [r for r in rows if r.get("kind") == "inference"]
    for r in inference:
        case = r["name"].split("-")[0]
        base = next((b for b in inference if b["name"] == f"{case}-plain-monai" and b["returncode"] == 0), None)
        ratio = (f"{r['wall_s'] / base['wall_s']:.2f}" if base is not None and r is not base and r["returncode"] == 0
                 and r["branches"] == base["branches"] else "–")
        prec = r.get("precision") or "fp32"  # records made before the column: micd predict ran fp32 on CPUs then
        lines.append(f"| {case} | {r['tool']} | {r['branches']} | {prec} | {r['wall_s']} | {r['cpu_s']} | {ratio} | "
                     f"{r['peak_rss_mib']} | {r['returncode']} | {r.get('measured', '')} |")
    for r in rows:
        if r.get("kind") == "inference-paired":
            lines += ["", f"Paired on the shared CT ({r['rounds']} rounds, the three commands in turn after a warm-up "
                      "round; whole-process wall time of each `micd predict` run over the MONAI run of its round, "
                      f"median [min, max]; CPU flags {cpu_kind(r['host'].get('cpu_flags')) or 'not recorded'}, "
                      f"{r['measured']}):", "", "| tool | precision | ratio to MONAI (wall) | median wall s |",
                      "|---|---|---|---|"]
            for v in r["variants"]:
                q = v["ratio"]
                lines.append(f"| {v['tool']} | {v['precision']} | {q['median']:.2f} [{q['min']:.2f}, {q['max']:.2f}] | "
                             f"{v['median_wall_s']:.2f} |")
            lines.append(f"| monai sliding_window_inference | fp32 | 1 | {r['monai_median_wall_s']:.2f} |")
    for r in rows:
        if r.get("kind") == "training-peer":
            lines += ["", "## Training step against the other public MICD implementation (issue 32, item 4)", "",
                      f"{r['peer']['repository']} at {(r['peer']['commit'] or 'an unrecorded commit')[:12]}, "
                      f"{r['peer']['form']}; {r['precision']}, {r['batch']} patches of "
                      f"{'x'.join(map(str, r['patch']))}, width {r['filters']}, {r['classes']} classes, "
                      f"{r['threads']} threads; {r['rounds']} rounds of the commands in turn after a warm-up round, "
                      f"each process {r['iterations_per_process']} timed steps after 2 warm-up steps (median); "
                      f"CPU flags {cpu_kind(r['host'].get('cpu_flags')) or 'not recorded'}, {r['measured']}. "
                      "Page faults and kernel seconds are the whole process's.", "",
                      "| implementation | s/step (median) | ratio to the peer, median [min, max] | minor page faults "
                      "| kernel s |", "|---|---|---|---|---|"]
            for v in r["implementations"]:
                q, rs = v["ratio_to_peer"], v["runs"]
                lines.append(f"| {v['implementation']} | {v['median_sec_per_iter']:.2f} | {q['median']:.2f} "
                             f"[{q['min']:.2f}, {q['max']:.2f}] | "
                             f"{', '.join(str(x['minor_page_faults']) for x in rs)} | "
                             f"{', '.join(str(x['kernel_s']) for x in rs)} |")
    for r in rows:
        if r.get("kind") == "interactive":
            lines += ["", "## Interactive segmentation: Segment click to segmentation node (hippocampus, CPU, "
                      f"{r['threads']} threads)", "",
                      "Through the test harness with the real backend (Testing/segment_latency.py): the module's "
                      "50 ms poller, Qt's event loop spinning as in Slicer. Median of "
                      f"{r['repeats']} clicks each, all in one run ({r.get('measured', '')}, CPU flags "
                      f"{cpu_kind(r['host'].get('cpu_flags')) or 'not recorded'}).", "",
                      "| click | click to node s (median) | of which the worker predicting s | each click s |",
                      "|---|---|---|---|"]
            for key, title in (("cold", "cold: a new worker (start-up, imports, model)"),
                               ("warm", "warm, same model"), ("warm_other_model", "warm, a model not loaded yet")):
                lines.append(f"| {title} | {r[key + '_median_s']:.2f} | {r[key + '_prediction_median_s']:.2f} | "
                             f"{', '.join(f'{v:.2f}' for v in r[key + '_s'])} |")
            lines.append(f"| `micd predict` as one process (command line, before the worker) | "
                         f"{r['micd_predict_process_median_s']:.2f} | – | "
                         f"{', '.join(f'{v:.2f}' for v in r['micd_predict_process_s'])} |")
    flags = sorted({cpu_kind(r.get("host", {}).get("cpu_flags")) or "not recorded" for r in rows})
    lines += ["", "CPU flags of the measuring machines: " + "; ".join(flags) + "."]
    with open(os.path.join(a.results, "speed.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
