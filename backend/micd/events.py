"""The progress event stream: one JSON object per line, on stdout and appended to `RUN_DIR/events.jsonl`.

Schema version 1 (`EVENT_SCHEMA_VERSION`). Every object has `"event"`, `"time"` (Unix seconds, float) and
`"schema"` (the version). Event kinds and their fields:

- `start`: method, device, labeled, unlabeled, validation (case counts), iterations, start_iter, patch_size,
  batch_size, world_size, plan (how patch/spacing were chosen), resumed (bool), notes (list of strings),
  precision ("fp32" | "bf16" | "fp16") and precision_reason (why, in words; `amp` stays as before);
  validate_every, checkpoint_every, rampup_iterations and warmup_iterations (the plan's cadences, RUN_DIR/plan.json).
  With `--time-budget` also: time_budget (as given), time_budget_s, eta_s (expected seconds from this event to the
  end of the export), expected_total_s (from the start of the process), sec_per_iter_expected, and budget_plan
  {planned_iterations (false when --iterations was given), calibration {warmup_s, step_s, sec_per_iter,
  validation_s, checkpoint_s, export_s, spent_s, setup_s}, note}. `iterations` is then the planned count.
- `warning`: message, and optionally file
- `iteration`: iter, total, loss (dict of every loss term, plus "total"), lr, beta, sec_per_iter, eta_s
- `validation`: iter, dice (per label name), mean_dice
- `checkpoint`: path, iter, kind ("last" or "best")
- `retry`: reason, patch_size, batch_size (after a CUDA out-of-memory error)
- `done`: model (path of the exported model folder), best_mean_dice, iter, wall_s
- `error`: kind (data | oom | cuda | cancelled | internal | budget | disk), message, hint, and optionally problems
  (list of {file, reason}) and rank. `budget` (exit 2): even the shortest run would overrun `--time-budget` by far.
  `disk` (exit 1): out of space; also path (the file being written) and free_bytes.

`micd predict` prints its own JSON lines on stdout (not written to a file, no `time`/`schema`): `plan` (device,
grid, buffer plan, precision and precision_reason), `progress` (input, image, images, windows_done, windows_total,
fraction, elapsed_s, eta_s: at most every 0.5 s and once at 100 %), `prediction` and `done`.

Additions, same version 1: the `start` precision, time-budget and cadence fields, error kinds `budget` and `disk`,
`micd predict` `progress` events.

Readers must ignore fields and event kinds they do not know; a change that removes or renames a field bumps the
version.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import IO, Any, Callable, Optional

from micd.contract import ERROR_KINDS, EVENT_KINDS, EVENT_SCHEMA_VERSION  # noqa: F401 - re-exported


class EventWriter:
    """Writes events to `events.jsonl` in the run folder and to a stream (stdout by default).

    `enabled=False` (non-zero distributed ranks) makes every call a no-op. `stream=None` silences stdout, e.g. when a
    progress bar is shown instead; `on_event` sees every event (used for the tqdm bar).
    """

    def __init__(self, path: Optional[str], stream: Optional[IO[str]] = sys.stdout, enabled: bool = True,
                 on_event: Optional[Callable[[dict], None]] = None):
        self.path = path
        self.stream = stream
        self.enabled = enabled
        self.on_event = on_event
        self._fd: Optional[int] = None
        self._torn = False
        if enabled and path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)

    def emit(self, event: str, **fields: Any) -> dict:
        if event not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {event!r}")
        record = {"event": event, "time": round(time.time(), 3), "schema": EVENT_SCHEMA_VERSION, **fields}
        if not self.enabled:
            return record
        line = json.dumps(record, default=_jsonable)
        if self._fd is not None:
            # One unbuffered write per event. After a failed one (a full disk) the next starts on a fresh line, so a
            # torn line spoils only itself; the stream still carries every event (e.g. the `disk` error).
            data = (("\n" if self._torn else "") + line + "\n").encode("utf-8")
            try:
                self._torn = os.write(self._fd, data) < len(data)
            except OSError:
                self._torn = True
        if self.stream is not None:
            self.stream.write(line + "\n")
            self.stream.flush()
        if self.on_event is not None:
            self.on_event(record)
        return record

    def error(self, kind: str, message: str, hint: str = "", **fields: Any) -> dict:
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown error kind {kind!r}")
        return self.emit("error", kind=kind, message=message, hint=hint, **fields)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def error_summary(kind: str, message: str, hint: str = "", problems: Optional[list] = None, shown: int = 5) -> str:
    """An error event as a few lines for a person: what, the first `shown` problems, and what to do."""
    lines = [f"error ({kind}): {message}"]
    for p in (problems or [])[:shown]:
        lines.append(f"  {p.get('file', '')}: {p.get('reason', '')}")
    if problems and len(problems) > shown:
        lines.append(f"  ... and {len(problems) - shown} more")
    if hint:
        lines.append(f"hint: {hint}")
    return "\n".join(lines)


def _jsonable(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def read_events(path: str) -> list:
    """Parse an `events.jsonl`, skipping a torn last line (a run killed mid-write)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out
