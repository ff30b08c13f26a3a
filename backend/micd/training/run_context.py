"""Where and how this invocation of `micd train` runs: options, run folder, device, ranks, the event stream and the
cancel flag. The session sets it up; the planner and the trainer report through it."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from micd.contract import CHECKPOINTS_DIR, EVENTS_FILE
from micd.events import EventWriter, error_summary
from micd.training import distributed as D
from micd.training.options import TrainOptions
from micd.training.outcome import EXIT_FAILED, KIND_EXIT, Cancelled
from micd.training.signals import CancelFlag


@dataclass
class RunContext:
    opts: TrainOptions
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dist: D.DistContext = field(default_factory=D.DistContext)
    events: Optional[EventWriter] = None
    cancel: CancelFlag = field(default_factory=CancelFlag)

    @property
    def run_dir(self) -> str:
        return os.path.abspath(self.opts.out)

    @property
    def ckpt_dir(self) -> str:
        return os.path.join(self.run_dir, CHECKPOINTS_DIR)

    @property
    def events_path(self) -> str:
        return os.path.join(self.run_dir, EVENTS_FILE)

    def emit(self, event: str, **fields) -> None:
        if self.events is not None:
            self.events.emit(event, **fields)

    def warn(self, message: str, file: str = "") -> None:
        self.emit("warning", message=message, file=file)

    def emit_error(self, kind: str, message: str, hint: str, **fields) -> None:
        """The run's one `error` event (on stderr too with --progress none); in a distributed run a failing rank
        reports itself, and rank 0 names the ranks that stopped."""
        ctx = self.dist
        fields.setdefault("exit_code", KIND_EXIT.get(kind, EXIT_FAILED))
        if self.events is None:
            self.events = EventWriter(None, sys.stdout)
        if ctx.enabled:
            fields.setdefault("rank", ctx.rank)
            fields.setdefault("world_size", ctx.world_size)
            if not ctx.is_main:
                if kind == "cancelled":
                    return  # rank 0 reports the cancellation once
                # A failing rank reports itself: rank 0 may be gone or blocked in a collective.
                w = EventWriter(self.events_path, None)
                w.error(kind, message, hint, **fields)
                w.close()
                return
            if kind in ("internal", "cuda") and D.is_peer_failure(message):
                dead = D.dead_local_ranks(self.run_dir, ctx)
                fields["failed_ranks"] = dead
                message = (f"rank {', '.join(map(str, dead))} stopped; " if dead else "another rank stopped; ") + message
                hint = "see that rank's error (torchrun's output); continue from the last checkpoint with --resume"
        self.events.error(kind, message, hint, **fields)
        if self.opts.progress == "none":  # "nothing on stdout" must not mean a silent exit: the error goes to stderr
            sys.stderr.write(error_summary(kind, message, hint, fields.get("problems")) + "\n")

    def check_cancel(self, it: Optional[int] = None, save: Optional[Callable[[int], Optional[str]]] = None) -> None:
        """Stop (raise Cancelled) when any rank was asked to; `save(it)` writes the checkpoint to continue from. All
        ranks must stop at the same iteration, or one would wait forever in the next all-reduce."""
        if not D.any_rank(self.dist, self.cancel.requested):
            return
        path = save(it) if (save is not None and it is not None) else None
        self.emit_error("cancelled", f"stopped by {self.cancel.name}" + (f" at iteration {it}" if it else
                        " before training started"),
                        "continue with the same command and --resume" if path else "start the run again",
                        checkpoint=path, iter=it)
        raise Cancelled()
