"""GPU check (issue 31, item 5): one prepared script that exercises `micd` on a CUDA machine and writes one JSON.

Steps, each a subprocess (`python -m micd ...` unless said) with a timeout; its wall time and result are recorded, a
failing step keeps the last lines of its output, and the script goes on with the next step:

  install      (with --wheels DIR) the backend's packages from wheels into a temporary folder (no index, no
               internet); the children then run with PYTHONPATH = that folder + this tree's backend/
  environment  torch, CUDA, cuDNN, NCCL, the GPU, the CPU flags, and where numpy/MONAI/SimpleITK/pynrrd/micd load from
  train        `micd train` MICD at the spec's GPU settings (width 32, fp16 AMP, planned patch: no --patch-size) for a
               fixed number of iterations on a few hippocampus cases; s/iter from the `iteration` events' timestamps
  make_ct      (python + SimpleITK) a synthetic CT-like int16 volume, 512 x 512 x 400 at 1 mm: noise and a sphere
  predict      `micd predict` of that volume with the trained model, timed; the output's size is checked
  nproc1       `micd train --nproc 1` for a few iterations
  ddp_probe    (torchrun, one rank) over a real process group, NCCL on CUDA and gloo on the CPU as micd chooses:
               three MICD training steps of DDP-wrapped students (micd's make_wrapper, sum_across_ranks) and each of
               micd's other collective helpers (mean_across_ranks, any_rank, broadcast_object, barrier), each checked
               on its own. `micd train --nproc 1` itself runs as a single process without torch.distributed
               (command.py starts torchrun only for --nproc > 1, and init_distributed() makes no process group for
               one rank), so `nproc1` alone never touches NCCL on a one-GPU machine.
  oom_retry    `micd train` with the CUDA caching allocator capped (torch.cuda.set_per_process_memory_fraction, set
               from outside micd by this script's sitecustomize hook) at 70 % of the peak memory the `train` step
               allocated, with the patch `train` planned: the first step cannot fit, so a real CUDA out-of-memory error
               reaches micd's retry (trainer._shrink_after_oom) and the run must go on with a smaller patch (`retry`
               event) and finish. Skipped on the CPU (micd retries only after a CUDA out-of-memory error).

Peak memory: every child runs with a sitecustomize.py written by this script (first on PYTHONPATH, chaining to any
other sitecustomize) that writes, at exit, torch.cuda.max_memory_allocated / max_memory_reserved of the process when
it used CUDA, and its peak resident memory (ru_maxrss). Nothing is added to micd. When nvidia-smi exists, the device's
memory.used is also sampled every 250 ms during each step (that figure includes the CUDA context and other processes).

  python benchmarks/gpu_check.py [--device cuda|cpu] [--tiny] [--out JSON] [--wheels DIR] [--data DIR] [--work DIR]
  python benchmarks/gpu_check.py --make-wheels DIR [--python-version 3.11]   # on a machine with internet
  python benchmarks/gpu_check.py --make-data DIR                              # the hippocampus cases the check uses

--tiny shrinks everything (width 4, patch 16 x 32 x 16, a few iterations, a 64 x 64 x 40 CT) so that `--device cpu
--tiny` runs in the test suite (backend/tests/test_gpu_check.py). The full check aims at 8 minutes on one H100: every
step's timeout is also cut to what is left of --budget-s (default 480 s), and a step that cannot start in time is
recorded as skipped. Exit code 0 when every step that counts passed, else 1.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import gzip
import json
import os
import platform
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BACKEND = os.path.join(ROOT, "backend")
SHARED = os.environ.get("MICD_SHARED", os.path.join(os.path.dirname(ROOT), "shared"))
DEFAULT_DATA = os.path.join(SHARED, "data", "hippocampus")
DEFAULT_OUT = os.path.join(HERE, "runs", "gpu-check", "gpu_check.json")
LABELS = {"1": "hippocampus_anterior", "2": "hippocampus_posterior"}

# What micd needs besides torch (backend/pyproject.toml), as wheels. scipy is left out: micd's train and predict do
# not import it (MONAI imports it only when present; `micd evaluate` may need it), and it is a 35 MB wheel.
WHEEL_PACKAGES = ("numpy", "monai", "SimpleITK", "pynrrd", "safetensors", "tqdm")
MANYLINUX = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")

SETTINGS = {
    # The spec's GPU settings: width 32, fp16 AMP, the planned patch; 4 labeled + 8 unlabeled + 2 validation cases.
    "full": {"filters": 32, "patch": None, "iterations": 300, "labeled": 4, "unlabeled": 8, "validation": 2,
             "nproc_iterations": 40, "oom_iterations": 30, "ct_zyx": (400, 512, 512), "budget_s": 480.0,
             "timeouts": {"install": 150, "environment": 90, "train": 270, "make_ct": 90, "predict": 200,
                          "nproc1": 150, "ddp_probe": 120, "oom_retry": 180}},
    "tiny": {"filters": 4, "patch": [16, 32, 16], "iterations": 6, "labeled": 3, "unlabeled": 3, "validation": 1,
             "nproc_iterations": 3, "oom_iterations": 4, "ct_zyx": (40, 64, 64), "budget_s": 600.0,
             "timeouts": {"install": 150, "environment": 90, "train": 150, "make_ct": 60, "predict": 120,
                          "nproc1": 150, "ddp_probe": 120, "oom_retry": 150}},
}
STEPS = ("install", "environment", "train", "make_ct", "predict", "nproc1", "ddp_probe", "oom_retry")
OOM_CAP_FRACTION = 0.7  # of the peak memory the `train` step allocated
MIN_STEP_S = 15.0  # a step is not started with less time than this left in the budget
TAIL_LINES = 30

# ---------------------------------------------------------------------------------------------------- child code
HOOK = r'''"""Written by benchmarks/gpu_check.py (first on PYTHONPATH): peak memory at exit; optional CUDA cap."""
import atexit, importlib.machinery, importlib.util, json, os, sys

_dir = os.environ.get("GPU_CHECK_MEMDIR")
_cap = os.environ.get("GPU_CHECK_CUDA_CAP_BYTES")
if _cap:
    try:
        import torch
        if torch.cuda.is_available():
            _total = torch.cuda.get_device_properties(0).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, int(_cap) / _total), 0)
    except Exception as e:  # noqa: BLE001
        print(f"gpu_check hook: could not cap CUDA memory: {e}", file=sys.stderr)


def _record():
    if not _dir:
        return
    rec = {"pid": os.getpid(), "argv": sys.argv[:4]}
    try:
        import resource
        rec["max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    except Exception:  # noqa: BLE001
        pass
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_initialized():
            n = torch.cuda.device_count()
            rec["cuda_max_allocated_bytes"] = max(torch.cuda.max_memory_allocated(d) for d in range(n))
            rec["cuda_max_reserved_bytes"] = max(torch.cuda.max_memory_reserved(d) for d in range(n))
    except Exception as e:  # noqa: BLE001
        rec["cuda_error"] = str(e)
    try:
        os.makedirs(_dir, exist_ok=True)
        with open(os.path.join(_dir, f"{os.getpid()}.json"), "w") as f:
            json.dump(rec, f)
    except OSError:
        pass


atexit.register(_record)

_here = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.machinery.PathFinder.find_spec(
    "sitecustomize", [p for p in sys.path if os.path.abspath(p or ".") != _here])
if _spec is not None and _spec.loader is not None:  # keep the environment's own sitecustomize working
    _mod = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_mod)
'''

FACTS = r'''
import json, os, platform, sys
out = {"python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform()}
import torch
import torch.distributed as dist
out.update(torch=torch.__version__, torch_cuda_build=torch.version.cuda, cuda_available=torch.cuda.is_available(),
           nccl_available=dist.is_available() and dist.is_nccl_available(),
           gloo_available=dist.is_available() and dist.is_gloo_available(), torch_threads=torch.get_num_threads())
try:
    out["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    out["cpu_amx_tile"] = bool(torch.cpu._is_amx_tile_supported())
    out["cpu_avx512_bf16"] = bool(torch.cpu._is_avx512_bf16_supported())
except AttributeError:
    pass
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    out.update(cuda_device=p.name, cuda_devices=torch.cuda.device_count(), cuda_capability=f"{p.major}.{p.minor}",
               cuda_total_memory_gib=round(p.total_memory / 2 ** 30, 2), cudnn=torch.backends.cudnn.version(),
               cudnn_benchmark=torch.backends.cudnn.benchmark, bf16_supported=torch.cuda.is_bf16_supported())
    try:
        out["nccl"] = ".".join(str(v) for v in torch.cuda.nccl.version())
    except Exception as e:
        out["nccl"] = f"unavailable: {e}"
packages = {}
for name in ("numpy", "monai", "SimpleITK", "nrrd", "safetensors", "micd"):
    try:
        m = __import__(name)
        v = getattr(m, "__version__", None) or (m.Version_VersionString() if name == "SimpleITK" else None)
        packages[name] = {"version": v, "from": os.path.dirname(os.path.dirname(os.path.abspath(m.__file__)))}
    except Exception as e:
        packages[name] = {"error": f"{type(e).__name__}: {e}"}
out["packages"] = packages
print("GPU_CHECK_FACTS " + json.dumps(out))
'''

MAKE_CT = r'''
import sys, numpy as np, SimpleITK as sitk
path, z, y, x = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = np.random.default_rng(0)
arr = np.empty((z, y, x), np.int16)
yy, xx = np.mgrid[:y, :x]
r = 0.3 * min(z, y, x)
for k in range(0, z, 16):  # in slabs: a 512 x 512 x 400 float64 volume would need 840 MB at once
    n = min(16, z - k)
    slab = rng.normal(40.0, 60.0, (n, y, x)).astype(np.float32)  # soft tissue around 40 HU
    zz = np.arange(k, k + n)[:, None, None]
    sphere = (zz - z / 2) ** 2 + (yy - y / 2) ** 2 + (xx - x / 2) ** 2 <= r * r
    slab[sphere] += 300.0
    slab[:, (yy - y / 2) ** 2 / (0.48 * y) ** 2 + (xx - x / 2) ** 2 / (0.45 * x) ** 2 > 1] = -1000.0  # air outside
    arr[k:k + n] = np.clip(slab, -1024, 3071).astype(np.int16)
img = sitk.GetImageFromArray(arr)
img.SetSpacing((1.0, 1.0, 1.0))
sitk.WriteImage(img, path, False)
print(f"wrote {path}: {x} x {y} x {z} int16")
'''

DDP_PROBE = r'''
import datetime, json, os, sys, time, traceback
import numpy as np
import torch
import torch.distributed as dist
from micd.methods import MethodConfig, build_method
from micd.nets import NetworkConfig
from micd.training import distributed as D

kind, filters, patch = sys.argv[1], int(sys.argv[2]), [int(v) for v in sys.argv[3:6]]
t0 = time.time()
local = int(os.environ.get("LOCAL_RANK", "0"))
device = torch.device("cuda", local) if kind == "cuda" else torch.device("cpu")
if device.type == "cuda":
    torch.cuda.set_device(device)  # as micd's session does for its ranks
backend = "nccl" if device.type == "cuda" else "gloo"  # as micd's init_distributed chooses
dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=120))


class Ctx(D.DistContext):  # micd uses torch.distributed only for more than one rank; this makes it use it for one
    @property
    def enabled(self):
        return True


ctx = Ctx(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local)
checks, losses, wrapped = {}, [], None


def check(name, fn):
    # each helper on its own, so that one failure does not hide the others
    try:
        out = fn()
        checks[name] = "ok"
        return out
    except Exception as e:
        checks[name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        traceback.print_exc()


def ddp_steps():
    # MICD's training step as the Trainer runs it, with DDP-wrapped students and the cross-rank sum of its class
    # statistics; the logged-loss average (mean_across_ranks) is checked apart
    global wrapped
    torch.manual_seed(0)
    m = build_method("micd", NetworkConfig(out_channels=3, filters=filters), 3, MethodConfig())
    m.to(device)
    m.init_from_label_counts(np.array([1000.0, 10.0, 10.0]))
    m.prepare(D.make_wrapper(ctx, device, False), D.sum_across_ranks(ctx), (ctx.rank, ctx.world_size))
    wrapped = type(m.runners["student_a"]).__name__
    opt = torch.optim.SGD(m.students.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    amp = torch.float16 if device.type == "cuda" else None
    scaler = torch.amp.GradScaler("cuda", enabled=amp is not None)
    g = torch.Generator().manual_seed(1)
    x_l = torch.randn(2, 1, *patch, device=device)
    y_l = (x_l[:, 0] > 0.5).long() + (x_l[:, 0] > 1.5).long()
    x_u = torch.randn(2, 1, *patch, device=device)
    for s in m.students.values():
        s.train()
    for i in range(3):
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            terms = m.step(x_l, y_l, x_u, 0.1, g)
        opt.zero_grad(set_to_none=True)
        scaler.scale(terms["total"]).backward()
        scaler.step(opt)
        scaler.update()
        m.after_step()
        losses.append(float(terms["total"].detach()))


check("ddp_micd_steps", ddp_steps)
check("mean_across_ranks", lambda: D.mean_across_ranks(ctx, {"total": 1.0, "sup": 2.0}))
check("any_rank", lambda: D.any_rank(ctx, False))
check("broadcast_object", lambda: D.broadcast_object(ctx, {"rank0": "hello"}))
check("barrier", lambda: D.barrier(ctx))
D.shutdown(ctx)
print("GPU_CHECK_PROBE " + json.dumps({
    "backend": backend, "world_size": ctx.world_size, "wrapped_as": wrapped, "checks": checks, "losses": losses,
    "losses_finite": bool(losses) and all(np.isfinite(losses)), "seconds": round(time.time() - t0, 2)}))
'''


# ---------------------------------------------------------------------------------------------------- helpers
def _tail(path: str, n: int = TAIL_LINES) -> List[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return [line.rstrip("\n") for line in f.readlines()[-n:]]
    except OSError:
        return []


def _json_lines(path: str, prefix: str = "") -> List[dict]:
    """JSON objects on lines of a log (or events.jsonl) file; `prefix`: only lines starting with it (stripped)."""
    out = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                line = line.strip()
                if prefix:
                    if not line.startswith(prefix):
                        continue
                    line = line[len(prefix):].strip()
                if not line.startswith("{"):
                    continue
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    except OSError:
        pass
    return out


def _shown(cmd: List[str]) -> str:
    """The command as recorded: `python` for this interpreter, `<inline script>` for the code of `-c`."""
    parts = ["python" if i == 0 and c == sys.executable else c for i, c in enumerate(cmd)]
    if "-c" in parts[:2]:
        parts[parts.index("-c") + 1] = "<inline script>"
    return " ".join(parts)


def _mib(n: Optional[float]) -> Optional[float]:
    return None if n is None else round(n / 2 ** 20, 1)


def _du(path: str) -> int:
    total = 0
    for base, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(base, f))
            except OSError:
                pass
    return total


def _nifti_size(path: str) -> Optional[List[int]]:
    """x, y, z of a (gzipped) NIfTI-1 file from its header, without any package."""
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            hdr = f.read(348)
        for order in ("<", ">"):
            if struct.unpack(order + "i", hdr[:4])[0] == 348:
                dim = struct.unpack(order + "8h", hdr[40:56])
                return [int(v) for v in dim[1:1 + dim[0]]]
    except (OSError, struct.error):
        pass
    return None


def cpu_facts() -> dict:
    facts = {"machine": platform.machine(), "cpu_count": os.cpu_count(), "python": platform.python_version()}
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        for line in info.splitlines():
            if line.startswith("model name") and "cpu_model" not in facts:
                facts["cpu_model"] = line.split(":", 1)[1].strip()
            if line.startswith("flags") and "cpu_flags" not in facts:
                flags = set(line.split(":", 1)[1].split())
                facts["cpu_flags"] = sorted(flags & {"avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni",
                                                     "amx_tile", "amx_bf16", "amx_int8"})
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    facts["memory_gib"] = round(int(line.split()[1]) / 2 ** 20, 1)
    except OSError:
        pass
    return facts


class GpuSampler:
    """nvidia-smi's memory.used, every 250 ms while a step runs (device-wide: includes contexts and other processes)."""

    def __init__(self):
        self.exe = shutil.which("nvidia-smi")
        self.proc = None
        self.thread = None
        self.peak: Dict[str, int] = {}
        self.before: Dict[str, int] = {}

    def _query(self, extra=()) -> List[str]:
        return [self.exe, "--query-gpu=index,memory.used", "--format=csv,noheader,nounits", *extra]

    def start(self) -> None:
        if not self.exe:
            return
        self.peak = {}
        try:
            for line in subprocess.run(self._query(), capture_output=True, encoding="utf-8", errors="replace", timeout=20).stdout.splitlines():
                i, used = [v.strip() for v in line.split(",")[:2]]
                self.before[i] = int(used)
            self.proc = subprocess.Popen(self._query(["-lms", "250"]), stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, encoding="utf-8", errors="replace")
        except (OSError, ValueError, subprocess.SubprocessError):
            self.proc = None
            return

        def read():
            for line in self.proc.stdout:
                try:
                    i, used = [v.strip() for v in line.split(",")[:2]]
                    self.peak[i] = max(self.peak.get(i, 0), int(used))
                except ValueError:
                    continue
        self.thread = threading.Thread(target=read, daemon=True)
        self.thread.start()

    def stop(self) -> dict:
        if self.proc is None:
            return {}
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.thread is not None:
            self.thread.join(5)
        self.proc = None
        if not self.peak:
            return {}
        return {"nvidia_smi_peak_used_mib": max(self.peak.values()),
                "nvidia_smi_used_before_mib": max(self.before.values()) if self.before else None}


# ---------------------------------------------------------------------------------------------------- the check
class Check:
    def __init__(self, a: argparse.Namespace):
        self.a = a
        self.s = SETTINGS["tiny" if a.tiny else "full"]
        self.budget_s = float(a.budget_s or self.s["budget_s"])
        self.t0 = time.time()
        self.cuda = a.device == "cuda"
        self.keep_work = a.work is not None
        self.work = os.path.abspath(a.work or tempfile.mkdtemp(prefix="micd-gpu-check-"))
        os.makedirs(self.work, exist_ok=True)
        self.hooks = os.path.join(self.work, "hooks")
        os.makedirs(self.hooks, exist_ok=True)
        with open(os.path.join(self.hooks, "sitecustomize.py"), "w") as f:
            f.write(HOOK)
        self.site: Optional[str] = None  # the folder the wheels went into
        self.out = os.path.abspath(a.out)
        self.sampler = GpuSampler() if self.cuda else None
        self.result = {
            "script": "benchmarks/gpu_check.py", "format": 1,
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": [os.path.basename(sys.executable), *sys.argv], "device": a.device, "tiny": bool(a.tiny),
            "settings": {k: v for k, v in self.s.items() if k != "timeouts"}, "budget_s": self.budget_s,
            "peak_memory_source": ("torch.cuda.max_memory_allocated/max_memory_reserved of each child process "
                                   "(recorded at exit by a sitecustomize hook), plus nvidia-smi memory.used sampled "
                                   "every 250 ms when nvidia-smi exists"),
            "machine": cpu_facts(), "steps": {}, "passed": False}
        self.memory: Dict[str, dict] = {}

    # ------------------------------------------------------------------ plumbing
    def left(self) -> float:
        return self.budget_s - (time.time() - self.t0)

    def env(self, step: str, extra: Optional[dict] = None) -> dict:
        paths = [self.hooks] + ([self.site] if self.site else []) + [BACKEND]
        if os.environ.get("PYTHONPATH"):
            paths.append(os.environ["PYTHONPATH"])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths), PYTHONUNBUFFERED="1",
                   GPU_CHECK_MEMDIR=os.path.join(self.work, "memory", step))
        env.pop("GPU_CHECK_CUDA_CAP_BYTES", None)
        env.update(extra or {})
        return env

    def save(self) -> None:
        self.result["total_seconds"] = round(time.time() - self.t0, 1)
        os.makedirs(os.path.dirname(self.out) or ".", exist_ok=True)
        tmp = self.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.result, f, indent=1)
        os.replace(tmp, self.out)

    def record(self, name: str, rec: dict) -> dict:
        if not self.keep_work:
            rec.pop("log", None)  # the temporary work folder is removed at the end
        self.result["steps"][name] = rec
        status = "passed" if rec.get("passed") else ("skipped" if rec.get("skipped") else "FAILED")
        print(f"[gpu_check] {name}: {status} ({rec.get('seconds', 0):.1f} s)"
              + (f" - {rec['skipped']}" if rec.get("skipped") else ""), flush=True)
        self.save()
        return rec

    def skip(self, name: str, reason: str, counts: bool = True) -> dict:
        """A step not run: `counts` False when skipping it is expected (no CUDA for the OOM retry)."""
        return self.record(name, {"passed": False, "skipped": reason, "counts": counts, "seconds": 0.0})

    def run(self, name: str, cmd: List[str], env: Optional[dict] = None) -> dict:
        """Run one step's process: rc, seconds, timed_out, log; peak memory of its processes."""
        timeout = min(float(self.s["timeouts"][name]), self.left())
        log = os.path.join(self.work, "logs", f"{name}.log")
        os.makedirs(os.path.dirname(log), exist_ok=True)
        if self.sampler:
            self.sampler.start()
        t = time.time()
        timed_out = False
        with open(log, "w") as f:
            f.write("$ " + " ".join(cmd) + "\n")
            f.flush()
            p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env or self.env(name), cwd=self.work,
                                 start_new_session=True)
            try:
                rc = p.wait(timeout=max(1.0, timeout))
            except subprocess.TimeoutExpired:
                timed_out = True
                for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 20)):
                    try:
                        os.killpg(p.pid, sig)  # the step's own process group (start_new_session)
                    except ProcessLookupError:
                        break
                    try:
                        p.wait(wait)
                        break
                    except subprocess.TimeoutExpired:
                        continue
                rc = p.returncode
        rec = {"rc": rc, "seconds": round(time.time() - t, 2), "timed_out": timed_out, "timeout_s": round(timeout, 1),
               "command": _shown(cmd), "log": log}
        if self.sampler:
            rec.update(self.sampler.stop())
        rec.update(self.peak_memory(name))
        return rec

    def peak_memory(self, step: str) -> dict:
        recs = []
        for path in glob.glob(os.path.join(self.work, "memory", step, "*.json")):
            try:
                with open(path) as f:
                    recs.append(json.load(f))
            except (OSError, ValueError):
                continue
        out = {}
        alloc = [r["cuda_max_allocated_bytes"] for r in recs if "cuda_max_allocated_bytes" in r]
        reserved = [r["cuda_max_reserved_bytes"] for r in recs if "cuda_max_reserved_bytes" in r]
        rss = [r["max_rss_bytes"] for r in recs if "max_rss_bytes" in r]
        if alloc:
            out["peak_gpu_allocated_mib"] = _mib(max(alloc))
            out["peak_gpu_reserved_mib"] = _mib(max(reserved)) if reserved else None
            self.memory[step] = {"allocated": max(alloc)}
        if rss:
            out["peak_rss_mib"] = _mib(max(rss))
        return out

    def finish(self, name: str, rec: dict, passed: bool, why: str = "") -> dict:
        rec["passed"] = bool(passed)
        if not passed:
            if why:
                rec["why"] = why
            rec["log_tail"] = _tail(rec.get("log", ""))
        return self.record(name, rec)

    def micd(self, *args) -> List[str]:
        return [sys.executable, "-m", "micd", *args]

    def train_args(self, out: str, iterations: int, patch: Optional[List[int]] = None, nproc: int = 0) -> List[str]:
        s = self.s
        args = ["train", "--dataset", self.dataset, "--out", out, "--method", "micd", "--iterations", str(iterations),
                "--filters", str(s["filters"]), "--amp", "fp16" if self.cuda else "auto", "--device", self.a.device,
                "--seed", "0", "--checkpoint-every", "1000000", "--validate-every", str(iterations),
                "--log-every", "1", "--progress", "jsonl"]
        patch = patch or s["patch"]
        if patch:
            args += ["--patch-size", *[str(v) for v in patch]]
        if nproc:
            args += ["--nproc", str(nproc)]
        return self.micd(*args)

    def train_summary(self, run_dir: str) -> dict:
        events = _json_lines(os.path.join(run_dir, "events.jsonl"))
        start = next((e for e in events if e.get("event") == "start"), {})
        its = [e for e in events if e.get("event") == "iteration"]
        done = next((e for e in events if e.get("event") == "done"), None)
        errors = [e for e in events if e.get("event") == "error"]
        retries = [e for e in events if e.get("event") == "retry"]
        out = {"iterations": its[-1]["iter"] if its else 0, "patch_size": start.get("patch_size"),
               "patch_plan": start.get("patch_plan"), "batch_size": start.get("batch_size"),
               "precision": start.get("precision"), "device_reported": start.get("device"),
               "world_size": start.get("world_size"), "threads": start.get("threads"),
               "memory_estimate_gib": start.get("memory_estimate_gib"), "free_memory_gib": start.get("free_memory_gib"),
               "retries": [{"patch_size": e.get("patch_size"), "batch_size": e.get("batch_size"),
                            "reason": e.get("reason")} for e in retries],
               "warnings": [e.get("message") for e in events if e.get("event") == "warning"][:5]}
        if its:
            # Steady s/iter from the events' timestamps after a warm-up (cuDNN set-up, allocator growth): the loop's
            # own wall time per optimizer step, validation and checkpoints excluded (none run inside this window).
            warm = its[min(len(its) - 1, max(1, len(its) // 10))]
            last = its[-1]
            if last["iter"] > warm["iter"]:
                out["sec_per_iter"] = round((last["time"] - warm["time"]) / (last["iter"] - warm["iter"]), 4)
            out["sec_per_iter_first"] = its[0].get("sec_per_iter")
            rolling = sorted(e["sec_per_iter"] for e in its if e["iter"] > warm["iter"])
            if rolling:
                out["sec_per_iter_events_median"] = rolling[len(rolling) // 2]
            out["final_loss"] = last.get("loss", {}).get("total")
            if start.get("time"):
                out["seconds_to_first_iteration"] = round(its[0]["time"] - start["time"], 2)
        if done:
            out.update(done=True, best_mean_dice=done.get("best_mean_dice"), wall_s=done.get("wall_s"))
        if errors:
            out["error"] = {k: errors[-1].get(k) for k in ("kind", "message", "hint")}
        return out

    # ------------------------------------------------------------------ steps
    def step_install(self) -> bool:
        if not self.a.wheels:
            self.skip("install", "no --wheels: the packages of this Python environment are used", counts=False)
            return True
        wheels = sorted(glob.glob(os.path.join(os.path.abspath(self.a.wheels), "*.whl")))
        site = os.path.join(self.work, "site")
        shutil.rmtree(site, ignore_errors=True)
        os.makedirs(site)
        rec = {"wheels": [os.path.basename(w) for w in wheels], "wheels_mib": _mib(sum(map(os.path.getsize, wheels))),
               "target": site}
        if not wheels:
            return bool(self.finish("install", dict(rec, seconds=0.0), False, f"no *.whl in {self.a.wheels}")["passed"])
        has_pip = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode == 0
        if has_pip:
            rec["how"] = "pip install --no-index --no-deps --target"
            rec.update(self.run("install", [sys.executable, "-m", "pip", "--isolated", "install", "--no-index",
                                            "--no-deps", "--no-compile", "--disable-pip-version-check", "--target",
                                            site, *wheels], env=dict(os.environ)))
            ok = rec["rc"] == 0
        else:  # no pip next to torch: a wheel is a zip; unpack it (purelib/platlib of *.data go to the top)
            rec["how"] = "unzipped (this Python has no pip)"
            t = time.time()
            try:
                for w in wheels:
                    with zipfile.ZipFile(w) as z:
                        for info in z.infolist():
                            parts = info.filename.split("/")
                            if len(parts) > 2 and parts[0].endswith(".data"):
                                if parts[1] not in ("purelib", "platlib"):
                                    continue
                                parts = parts[2:]
                            dest = os.path.join(site, *parts)
                            if info.is_dir():
                                continue
                            os.makedirs(os.path.dirname(dest), exist_ok=True)
                            with z.open(info) as src, open(dest, "wb") as dst:
                                shutil.copyfileobj(src, dst)
                ok = True
            except (OSError, zipfile.BadZipFile, NotImplementedError) as e:
                ok, rec["why"] = False, str(e)
            rec["seconds"] = round(time.time() - t, 2)
        rec["installed_mib"] = _mib(_du(site))
        if ok:
            self.site = site
        return bool(self.finish("install", rec, ok, "" if ok else "the wheels did not install")["passed"])

    def step_environment(self) -> bool:
        rec = self.run("environment", [sys.executable, "-c", FACTS])
        facts = (_json_lines(rec["log"], "GPU_CHECK_FACTS") or [{}])[-1]
        rec["facts"] = facts
        self.result["machine"].update({k: v for k, v in facts.items() if k != "packages"})
        missing = [k for k, v in facts.get("packages", {}).items() if "error" in v]
        why = ""
        if rec["rc"] != 0 or not facts:
            why = "the environment check failed"
        elif missing:
            why = f"cannot import {', '.join(missing)}"
        elif self.cuda and not facts.get("cuda_available"):
            why = f"--device cuda, but torch {facts.get('torch')} sees no CUDA device"
        return bool(self.finish("environment", rec, not why, why)["passed"])

    def write_dataset(self) -> None:
        s = self.s
        data = os.path.abspath(self.a.data)
        names = sorted(os.listdir(os.path.join(data, "imagesTr")))
        need = s["labeled"] + s["unlabeled"] + s["validation"]
        if len(names) < need:
            raise SystemExit(f"{data}: {len(names)} cases, the check needs {need} (make them with --make-data)")
        cases = [{"image": os.path.join(data, "imagesTr", n), "label": os.path.join(data, "labelsTr", n)}
                 for n in names[:need]]
        nl, nu = s["labeled"], s["unlabeled"]
        d = {"labels": LABELS, "labeled": cases[:nl], "unlabeled": [c["image"] for c in cases[nl:nl + nu]],
             "validation": cases[nl + nu:]}
        self.dataset = os.path.join(self.work, "dataset.json")
        with open(self.dataset, "w") as f:
            json.dump(d, f, indent=1)
        self.result["data"] = {"folder": data, "labeled": nl, "unlabeled": nu, "validation": s["validation"]}

    def step_train(self) -> Optional[dict]:
        run_dir = os.path.join(self.work, "run-train")
        rec = self.run("train", self.train_args(run_dir, self.s["iterations"]))
        rec.update(self.train_summary(run_dir))
        model = os.path.join(run_dir, "model")
        rec["model"] = model if os.path.isdir(model) else None
        why = ""
        if rec["rc"] != 0 or not rec.get("done"):
            why = f"micd train ended with exit code {rec['rc']}" + (" (timed out)" if rec["timed_out"] else "")
        elif rec["iterations"] != self.s["iterations"] or not rec["model"]:
            why = "the run did not reach its iteration count or export a model"
        elif rec.get("retries"):
            why = "an out-of-memory retry at the planned patch: the planner chose a patch that does not fit"
        return self.finish("train", rec, not why, why)

    def step_make_ct(self) -> Optional[str]:
        z, y, x = self.s["ct_zyx"]
        path = os.path.join(self.work, f"ct_{x}x{y}x{z}.mha")
        rec = self.run("make_ct", [sys.executable, "-c", MAKE_CT, path, str(z), str(y), str(x)])
        rec.update(size_xyz=[x, y, z], path=path)
        ok = rec["rc"] == 0 and os.path.isfile(path)
        self.finish("make_ct", rec, ok, "" if ok else "the synthetic CT was not written")
        return path if ok else None

    def step_predict(self, model: str, ct: str) -> dict:
        out = os.path.join(self.work, "prediction.nii.gz")
        if os.path.exists(out):
            os.remove(out)
        args = ["predict", "--model", model, "--input", ct, "--output", out, "--device", self.a.device]
        rec = self.run("predict", self.micd(*args))
        events = _json_lines(rec["log"])
        plan = next((e for e in events if e.get("event") == "plan"), {})
        progress = [e for e in events if e.get("event") == "progress"]
        done = next((e for e in events if e.get("event") == "done"), {})
        rec["plan"] = {k: v for k, v in plan.items() if k not in ("event", "input")}
        if progress:
            rec["inference_seconds"] = progress[-1].get("elapsed_s")
            rec["windows"] = progress[-1].get("windows_total")
        rec["output_size_xyz"] = _nifti_size(out) if os.path.exists(out) else None
        z, y, x = self.s["ct_zyx"]
        why = ""
        if rec["rc"] != 0 or not done or done.get("failed"):
            why = f"micd predict ended with exit code {rec['rc']}" + (" (timed out)" if rec["timed_out"] else "")
        elif rec["output_size_xyz"] != [x, y, z]:
            why = f"the label map's size {rec['output_size_xyz']} is not the input's {[x, y, z]}"
        return self.finish("predict", rec, not why, why)

    def step_nproc1(self) -> dict:
        run_dir = os.path.join(self.work, "run-nproc1")
        rec = self.run("nproc1", self.train_args(run_dir, self.s["nproc_iterations"], nproc=1))
        rec.update(self.train_summary(run_dir))
        rec["note"] = ("micd train --nproc 1 runs as one process without torch.distributed (torchrun only for "
                       "--nproc > 1); the ddp_probe step runs micd's distributed code over a one-rank process group")
        ok = rec["rc"] == 0 and bool(rec.get("done")) and rec["iterations"] == self.s["nproc_iterations"]
        return self.finish("nproc1", rec, ok, "" if ok else f"micd train --nproc 1 ended with exit code {rec['rc']}")

    def step_ddp_probe(self, patch: List[int]) -> dict:
        script = os.path.join(self.work, "ddp_probe.py")
        with open(script, "w") as f:
            f.write(DDP_PROBE)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", script,
               self.a.device, str(self.s["filters"]), *[str(v) for v in patch]]
        rec = self.run("ddp_probe", cmd)
        res = (_json_lines(rec["log"], "GPU_CHECK_PROBE") or [{}])[-1]
        res["probe_seconds"] = res.pop("seconds", None)
        rec.update(res)
        failed = {k: v for k, v in res.get("checks", {}).items() if v != "ok"}
        why = ""
        if rec["rc"] != 0 or not res:
            why = f"the probe ended with exit code {rec['rc']}" + (" (timed out)" if rec["timed_out"] else "")
        elif failed:
            why = "failed: " + "; ".join(f"{k}: {v}" for k, v in failed.items())
        elif not (res.get("losses_finite") and res.get("wrapped_as") == "DistributedDataParallel"):
            why = "the DDP-wrapped MICD steps gave non-finite losses or were not wrapped in DDP"
        return self.finish("ddp_probe", rec, not why, why)

    def step_oom_retry(self, patch: Optional[List[int]]) -> dict:
        if not self.cuda:
            return self.skip("oom_retry", "no CUDA device (--device cpu): micd retries on a smaller patch only after a "
                             "CUDA out-of-memory error (trainer._shrink_after_oom), so there is nothing to force here",
                             counts=False)
        peak = self.memory.get("train", {}).get("allocated")
        if not peak or not patch:
            return self.skip("oom_retry", "needs the train step's planned patch and peak GPU memory, and it gave none")
        cap = int(OOM_CAP_FRACTION * peak)
        run_dir = os.path.join(self.work, "run-oom")
        env = self.env("oom_retry", {"GPU_CHECK_CUDA_CAP_BYTES": str(cap)})
        rec = self.run("oom_retry", self.train_args(run_dir, self.s["oom_iterations"], patch=patch), env=env)
        rec.update(self.train_summary(run_dir))
        rec.update(cuda_memory_cap_mib=_mib(cap), cap_how=f"torch.cuda.set_per_process_memory_fraction at "
                   f"{OOM_CAP_FRACTION:.0%} of the train step's peak allocated memory ({_mib(peak)} MiB), patch "
                   f"{patch} as planned there")
        why = ""
        if not rec.get("retries"):
            why = "no retry event: the capped run did not hit (or did not report) a CUDA out-of-memory error"
        elif rec["rc"] != 0 or not rec.get("done"):
            why = f"retried ({len(rec['retries'])}x) but the run did not finish (exit code {rec['rc']})"
        return self.finish("oom_retry", rec, not why, why)

    # ------------------------------------------------------------------ all
    def main(self) -> int:
        print(f"[gpu_check] work folder {self.work}; result {self.out}", flush=True)
        try:
            self.write_dataset()

            def go(name: str) -> bool:
                if self.left() < MIN_STEP_S:
                    self.skip(name, f"out of time: {self.left():.0f} s left of the {self.budget_s:.0f} s budget")
                    return False
                return True

            ok = go("install") and self.step_install()
            if ok and go("environment"):
                ok = self.step_environment()
            if not ok:
                for name in STEPS:
                    if name not in self.result["steps"]:
                        self.skip(name, "the packages or the device are not usable (see install/environment)")
            else:
                train = self.step_train() if go("train") else {}
                patch = train.get("patch_size")
                ct = self.step_make_ct() if go("make_ct") else None
                if not (train.get("model") and ct):
                    self.skip("predict", "needs the trained model and the synthetic CT")
                elif go("predict"):
                    self.step_predict(train["model"], ct)
                if go("nproc1"):
                    self.step_nproc1()
                if go("ddp_probe"):
                    self.step_ddp_probe(patch or self.s["patch"] or [32, 64, 48])
                if not self.cuda or go("oom_retry"):
                    self.step_oom_retry(patch)
            steps = self.result["steps"]
            self.result["passed"] = all(r.get("passed") or r.get("counts") is False for r in steps.values())
            self.result["summary"] = self.summary()
            self.result["within_budget"] = time.time() - self.t0 <= self.budget_s
            self.save()
        finally:
            if not self.keep_work:
                shutil.rmtree(self.work, ignore_errors=True)
        print(f"[gpu_check] {'PASSED' if self.result['passed'] else 'FAILED'} in {self.result['total_seconds']} s: "
              f"{json.dumps(self.result['summary'])}", flush=True)
        return 0 if self.result["passed"] else 1

    def summary(self) -> dict:
        st = self.result["steps"]
        tr, pr, oom = st.get("train", {}), st.get("predict", {}), st.get("oom_retry", {})
        m = self.result["machine"]
        return {"device": m.get("cuda_device") or ("no CUDA device" if self.cuda else "cpu"),
                "torch": m.get("torch"),
                "train_sec_per_iter": tr.get("sec_per_iter"), "train_patch": tr.get("patch_size"),
                "train_peak_gpu_allocated_mib": tr.get("peak_gpu_allocated_mib"),
                "train_peak_gpu_reserved_mib": tr.get("peak_gpu_reserved_mib"),
                "predict_seconds": pr.get("seconds"), "predict_inference_seconds": pr.get("inference_seconds"),
                "predict_peak_gpu_allocated_mib": pr.get("peak_gpu_allocated_mib"),
                "oom_retries": len(oom.get("retries") or []),
                "passed": {k: ("skipped" if v.get("skipped") else bool(v.get("passed"))) for k, v in st.items()}}


# ---------------------------------------------------------------------------------------------------- packaging
def _installed_version(name: str) -> Optional[str]:
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:  # noqa: BLE001
        return None


def _repack_lzma(path: str) -> None:
    """Rewrite a wheel with LZMA (zip method 14) instead of deflate: the same files and RECORD, about half the size
    for the big binary wheels (SimpleITK 53 -> 29 MB). pip and Python's zipfile install it like any wheel."""
    with zipfile.ZipFile(path) as z:
        if all(i.compress_type == zipfile.ZIP_LZMA for i in z.infolist() if i.file_size):
            return
    tmp = path + ".lzma"
    with zipfile.ZipFile(path) as zi, zipfile.ZipFile(tmp, "w", zipfile.ZIP_LZMA) as zo:
        for info in zi.infolist():
            new = zipfile.ZipInfo(info.filename, info.date_time)
            new.external_attr = info.external_attr
            new.compress_type = zipfile.ZIP_LZMA
            zo.writestr(new, zi.read(info))
    os.replace(tmp, path)


def make_wheels(dest: str, python_version: str, lzma: bool) -> int:
    os.makedirs(dest, exist_ok=True)
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    pin = python_version == here  # pin to this environment's versions (the ones the suite passes with) when it fits
    specs = []
    for name in WHEEL_PACKAGES:
        v = _installed_version(name) if pin else None
        specs.append(f"{name}=={v}" if v else name)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--implementation", "cp",
           "--python-version", python_version, *[a for p in MANYLINUX for a in ("--platform", p)], "-d", dest, *specs]
    print("$ " + " ".join(cmd), flush=True)
    if subprocess.run(cmd).returncode != 0:
        return 1
    for w in sorted(glob.glob(os.path.join(dest, "*.whl"))):
        if lzma:
            t = time.time()
            before = os.path.getsize(w)
            _repack_lzma(w)
            print(f"{os.path.basename(w)}: {_mib(before)} -> {_mib(os.path.getsize(w))} MiB (LZMA, "
                  f"{time.time() - t:.0f} s)", flush=True)
    print(f"{dest}: {_mib(_du(dest))} MiB for Python {python_version}, manylinux x86_64, without torch", flush=True)
    return 0


def make_data(dest: str, source: str, n: int) -> int:
    for sub in ("imagesTr", "labelsTr"):
        os.makedirs(os.path.join(dest, sub), exist_ok=True)
    names = sorted(os.listdir(os.path.join(source, "imagesTr")))[:n]
    for name in names:
        for sub in ("imagesTr", "labelsTr"):
            shutil.copy2(os.path.join(source, sub, name), os.path.join(dest, sub, name))
    with open(os.path.join(dest, "README.md"), "w") as f:
        f.write(f"{len(names)} cases of the Medical Segmentation Decathlon Task04 Hippocampus (Vanderbilt), "
                "CC-BY-SA 4.0, copied by benchmarks/gpu_check.py --make-data for the GPU check. Labels: 0 background, "
                "1 hippocampus anterior, 2 hippocampus posterior.\n")
    print(f"{dest}: {len(names)} cases, {_mib(_du(dest))} MiB", flush=True)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--tiny", action="store_true", help="width 4, patch 16 32 16, a few iterations, a 64x64x40 CT")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"result JSON (default {os.path.relpath(DEFAULT_OUT, ROOT)})")
    p.add_argument("--wheels", help="install the wheels in this folder (made by --make-wheels) into a temporary "
                   "folder and run micd from there (for a machine with only torch)")
    p.add_argument("--data", default=DEFAULT_DATA, help="hippocampus folder (imagesTr/, labelsTr/), e.g. one made by "
                   "--make-data (default: the shared data)")
    p.add_argument("--work", help="working folder, kept afterwards (default: a temporary folder, removed)")
    p.add_argument("--budget-s", type=float, help="the whole check's time budget in seconds (default 480; tiny 600)")
    p.add_argument("--make-wheels", metavar="DIR", help="download the wheels the check installs into DIR, then exit")
    p.add_argument("--python-version", default=f"{sys.version_info.major}.{sys.version_info.minor}",
                   help="with --make-wheels: the GPU machine's Python (default: this one's)")
    p.add_argument("--plain-wheels", action="store_true", help="with --make-wheels: keep pip's deflate wheels "
                   "(default: repack them with LZMA, about half the size)")
    p.add_argument("--make-data", metavar="DIR", help="copy the hippocampus cases the check uses into DIR, then exit")
    a = p.parse_args(argv)
    if a.make_wheels:
        return make_wheels(os.path.abspath(a.make_wheels), a.python_version, not a.plain_wheels)
    if a.make_data:
        full = SETTINGS["full"]
        return make_data(os.path.abspath(a.make_data), a.data, full["labeled"] + full["unlabeled"] + full["validation"])
    if not os.path.isdir(os.path.join(a.data, "imagesTr")):
        print(f"no hippocampus cases in {a.data}: pass --data DIR (made by --make-data)", file=sys.stderr)
        return 2
    return Check(a).main()


if __name__ == "__main__":
    sys.exit(main())
