"""torch.distributed set-up for runs launched by torchrun: process group, DDP wrapping, cross-rank sums.

Rank 0 writes events, checkpoints and the model. Sampling draws the *global* batch from one seeded generator on
every rank and each rank keeps its slice, so a run gives the same data for the same global batch whatever the
number of ranks (and a resume may change the number of ranks).
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, List, Optional

import torch
import torch.distributed as dist
from torch import nn

from micd.contract import EVENTS_FILE


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def slice(self, n_global: int) -> slice:
        per = n_global // self.world_size
        return slice(self.rank * per, (self.rank + 1) * per)


def init_distributed(device: torch.device, timeout_s: float = 300.0) -> DistContext:
    """Join the process group torchrun describes in the environment; a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                       local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def cuda_device_for(ctx: DistContext, requested: torch.device) -> torch.device:
    if requested.type == "cuda" and ctx.enabled:
        return torch.device("cuda", ctx.local_rank)
    return requested


def make_wrapper(ctx: DistContext, device: torch.device, sync_bn: bool) -> Callable[[nn.Module], Callable]:
    """Returns how a student is wrapped for training: itself, or DistributedDataParallel (optionally SyncBN)."""
    if not ctx.enabled:
        return lambda m: m

    def wrap(m: nn.Module):
        from torch.nn.parallel import DistributedDataParallel as DDP
        if sync_bn:
            m = nn.SyncBatchNorm.convert_sync_batchnorm(m)
        return DDP(m, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=not sync_bn)
    return wrap


def convert_sync_bn_inplace(students: nn.ModuleDict) -> None:
    for k in list(students.keys()):
        students[k] = nn.SyncBatchNorm.convert_sync_batchnorm(students[k])


def sum_across_ranks(ctx: DistContext) -> Callable[[torch.Tensor], torch.Tensor]:
    if not ctx.enabled:
        return lambda t: t

    def reduce(t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t
    return reduce


def _for_collective(t: torch.Tensor) -> torch.Tensor:
    """A small CPU tensor where the process group can reduce it: NCCL reduces CUDA tensors only."""
    return t.cuda() if dist.get_backend() == "nccl" else t


def broadcast_object(ctx: DistContext, obj):
    if not ctx.enabled:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def any_rank(ctx: DistContext, flag: bool) -> bool:
    """True on every rank when `flag` is true on at least one (used to stop all ranks at the same iteration)."""
    if not ctx.enabled:
        return flag
    t = _for_collective(torch.tensor([1 if flag else 0], dtype=torch.int32))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


RANKS_DIR = "ranks"


def record_rank(run_dir: str, ctx: DistContext) -> None:
    """Note this rank's host and pid in RUN_DIR/ranks/, so that rank 0 can name a rank that died."""
    if not ctx.enabled:
        return
    folder = os.path.join(run_dir, RANKS_DIR)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"rank{ctx.rank}.json"), "w") as f:
        json.dump({"rank": ctx.rank, "pid": os.getpid(), "host": socket.gethostname()}, f)


def is_peer_failure(message: str) -> bool:
    m = message.lower()
    return any(s in m for s in ("connection closed", "connection reset", "broken pipe", "gloo", "nccl", "timed out",
                                "socket"))


def dead_local_ranks(run_dir: str, ctx: DistContext) -> List[int]:
    """Ranks on this host whose recorded process no longer runs (ranks on other hosts cannot be checked)."""
    dead = []
    folder = os.path.join(run_dir, RANKS_DIR)
    for r in range(ctx.world_size):
        try:
            with open(os.path.join(folder, f"rank{r}.json")) as f:
                info = json.load(f)
        except (OSError, ValueError):
            continue
        if info.get("host") != socket.gethostname():
            continue
        if not _alive(int(info["pid"])):
            dead.append(r)
    return dead


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie (a killed rank stays a zombie until torchrun reaps it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        pass
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def mean_across_ranks(ctx: DistContext, values: dict) -> dict:
    """Average logged scalars over ranks, so the events describe the global batch."""
    if not ctx.enabled:
        return values
    keys = sorted(values)
    t = _for_collective(torch.tensor([values[k] for k in keys], dtype=torch.float64))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: float(v) / ctx.world_size for k, v in zip(keys, t.tolist())}


def record_state_digest(run_dir: str, ctx: DistContext, method) -> None:
    """Write a checksum of this rank's teachers, students and class weights into RUN_DIR/ranks/ (distributed runs
    only), so that anyone can verify that every rank ended with the same state."""
    if not ctx.enabled:
        return
    import hashlib

    h = {}
    for name, module in method.export_networks().items():
        digest = hashlib.sha256()
        for k, v in sorted(module.state_dict().items()):
            digest.update(k.encode())
            digest.update(v.detach().cpu().contiguous().numpy().tobytes())
        h[name] = digest.hexdigest()
    extra = method.extra_state()
    for key in ("diffdw", "distdw"):
        if key in extra:
            h[key] = [round(float(x), 6) for x in extra[key]["weights"].tolist()]
    path = os.path.join(run_dir, RANKS_DIR, f"rank{ctx.rank}.json")
    info = {}
    if os.path.exists(path):
        with open(path) as f:
            info = json.load(f)
    info["final_state"] = h
    with open(path, "w") as f:
        json.dump(info, f)


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def launch_local(nproc: int, argv: List[str], run_dir: str, lock_fd: Optional[int] = None) -> int:
    """`micd train --nproc N ...`: re-run this command under torchrun on this machine with N processes.

    SIGTERM/SIGINT are passed on to torchrun (which passes them to every rank), and the exit code follows the
    single-process convention: the exit code of the ranks' last error event (3 on a cancel, 2 for bad data), else
    torchrun's own code.
    """
    import signal

    args, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        args.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "micd", *args]
    # torchrun inherits the run-folder lock (runlock.py), so that it stays held while the ranks run
    from micd.training.runlock import HOLDER_VARIABLE
    keep = (lock_fd,) if lock_fd is not None and os.name != "nt" else ()
    proc = subprocess.Popen(cmd, pass_fds=keep, env=dict(os.environ, **{HOLDER_VARIABLE: str(os.getpid())}))
    forward = lambda signum, frame: proc.send_signal(signum)
    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        rc = proc.wait()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if rc != 0:
        error = _last_error(run_dir)
        if error.get("kind") == "cancelled":
            return 3
        if isinstance(error.get("exit_code"), int) and error["exit_code"] > 0:
            return error["exit_code"]
    return rc


def _last_error(run_dir: str) -> dict:
    from micd.events import read_events

    path = os.path.join(run_dir, EVENTS_FILE)
    if not os.path.exists(path):
        return {}
    errors = [e for e in read_events(path) if e.get("event") == "error"]
    return errors[-1] if errors else {}
