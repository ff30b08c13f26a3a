"""What `micd predict` and `micd suggest` share: the sliding-window options, their checks, and how a failure is
reported (a one-line error on stderr for people, an `error` event on stdout for programs such as the Slicer panel).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Callable, Optional

from micd.contract import EXIT_CANCELLED, EXIT_DATA, EXIT_FAILED

# exit codes: EXIT_DATA for a bad model folder, input, options or device, or a volume that could not be read;
# EXIT_FAILED for anything else (out of memory included); EXIT_CANCELLED when `micd serve` cancelled the request


def add_window_arguments(p: argparse.ArgumentParser) -> None:
    """The options of the sliding-window predictor, the same for every command that predicts."""
    p.add_argument("--tta", action="store_true", help="also average over the 8 axis mirrorings of each window")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--overlap", type=float, default=0.25, help="window overlap (default 0.25, as in validation)")
    p.add_argument("--sw-batch-size", type=int, default=None, help="windows per forward pass (default 4 on a GPU; on the CPU 2, or 1 "
                   "when a window's class probabilities are big)")
    p.add_argument("--max-buffer-gb", type=float, default=None,
                   help="CPU memory for the probability buffer in GiB (default: what keeps the whole prediction within "
                        "3.5 GiB, and half the available RAM); bigger grids are processed in slabs")
    p.add_argument("--num-threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--amp", choices=["auto", "off", "bf16", "fp16"], default="auto",
                   help="autocast precision of the networks: auto = fp16 on CUDA, bf16 on CPUs with AMX/AVX512-BF16 "
                        "(about twice as fast there, as in training), else fp32; off = fp32 (the `plan` event says "
                        "which and why)")


class Reporter:
    """Writes a command's JSON-lines events to stdout and its failures to both streams."""

    def __init__(self, program: str):
        self.program = program

    def emit(self, record: dict, bar=None) -> None:
        line = json.dumps(record)
        if bar is not None:
            bar.write(line, file=sys.stdout)  # keeps a tqdm bar on stderr intact
        else:
            print(line, flush=True)

    def warn(self, message: str, bar=None) -> None:
        (bar.write if bar is not None else print)(f"{self.program}: warning: {message}", file=sys.stderr)

    def error_line(self, message: str, bar=None) -> None:
        """A failure that does not end the command (one volume of several)."""
        (bar.write if bar is not None else print)(f"{self.program}: error: {message}", file=sys.stderr)

    def fail(self, message: str, hint: str = "", kind: str = "data", code: int = EXIT_DATA) -> int:
        """End the command: the error on stderr and as an `error` event (kind, message, hint); returns the exit code."""
        print(f"{self.program}: error: {message}" + (f"; {hint}" if hint else ""), file=sys.stderr)  # one line
        self.emit({"event": "error", "kind": kind, "message": message, "hint": hint})
        return code

    def out_of_memory(self, inp: str, e: BaseException) -> int:
        return self.fail(f"{inp}: out of memory ({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})",
                         "try --max-buffer-gb with a smaller value, --sw-batch-size 1, or --device cpu", "oom",
                         EXIT_FAILED)


@dataclass
class CommandIO:
    """How a predicting command meets its caller: `micd predict` / `micd suggest` on a terminal (events on stdout, a
    bar on stderr, each model loaded from disk) or `micd serve` (events tagged with the request's id, models from
    its cache, a cancel asked before each batch of windows)."""

    report: Reporter
    load_model: Callable[[str], object]
    should_stop: Optional[Callable[[], bool]] = None
    bars: bool = True

    @classmethod
    def terminal(cls, report: Reporter) -> "CommandIO":
        from micd.model_package import load_model_package

        return cls(report, load_model_package)

    def cancelled(self, inp: str) -> int:
        return self.report.fail(f"{inp}: cancelled", "", "cancelled", EXIT_CANCELLED)


def check_window_arguments(args: argparse.Namespace) -> Optional[str]:
    """Apply --num-threads; the problem with the window options as a message, or None."""
    import torch

    if args.num_threads:
        if args.num_threads < 1:
            return f"--num-threads {args.num_threads}: must be at least 1"
        torch.set_num_threads(args.num_threads)
    if not 0 <= args.overlap < 1:
        return f"--overlap {args.overlap}: must be in [0, 1)"
    if args.sw_batch_size is not None and args.sw_batch_size < 1:
        return f"--sw-batch-size {args.sw_batch_size}: must be at least 1"
    if args.max_buffer_gb is not None and args.max_buffer_gb <= 0:
        return f"--max-buffer-gb {args.max_buffer_gb}: must be more than 0"
    return None
