"""Reading the backend's progress stream (JSON lines, schema in `micd/events.py`) incrementally, and turning it into
the state a panel shows: iteration, time left, loss and Dice histories, the final result or error."""

import collections
import json
import os
import time

LOSS_HISTORY_LIMIT = 1000  # TrainingProgress keeps the last losses only (the charts keep a decimated whole run)
READ_CHUNK_BYTES = 256 * 1024  # what one time-sliced poll reads of a stream at most (~800 events: a few ms)


class LineTail:
    """Reads the complete lines appended to a text file since the last call (a half-written last line waits).

    Each call reads only the bytes past `offset` (and the half line kept from the call before): O(new bytes), so
    polling a long run's stream costs what it added since the last poll, not its whole length. `until` stops at
    that offset (e.g. where a resumed job's own reading starts)."""

    def __init__(self, path, offset=0, until=None):
        self.path = path
        self.offset = offset
        self.until = until
        self._partial = b""

    def read_new_lines(self, max_bytes=None):
        """The complete new lines; with `max_bytes`, of at most that many new bytes (the rest waits: `unread`)."""
        if not self.path or not os.path.isfile(self.path):
            return []
        size = -1 if self.until is None else max(0, self.until - self.offset)
        if max_bytes is not None:
            size = max_bytes if size < 0 else min(size, max_bytes)
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read(size)
        self.offset += len(chunk)
        data = self._partial + chunk
        end = data.rfind(b"\n")
        self._partial = data[end + 1:]  # b"" when the chunk ended with a newline
        if end < 0:
            return []
        text = data[:end].decode("utf-8", errors="replace")  # one decode and one split for the whole chunk
        lines = text.split("\n")
        return [line.rstrip("\r") for line in lines] if "\r" in text else lines

    @property
    def unread(self):
        """Bytes written (up to `until`) and not read yet."""
        try:
            size = os.path.getsize(self.path) if self.path else 0
        except OSError:
            return 0
        return max(0, (size if self.until is None else min(size, self.until)) - self.offset)


def parse_event(line):
    """The event dict on a line, or None for a line that is not a progress event."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) and "event" in obj else None


class EventTail:
    """New events appended to an `events.jsonl` (or to a log that mixes events with text).

    `hand_out(handle, deadline)` reads and parses them a time slice at a time (20,000 events take longer to parse
    than a UI callback may last): what is read and not yet handed out waits in `backlog` for the next call."""

    def __init__(self, path, offset=0, until=None):
        self._lines = LineTail(path, offset, until)
        self._pending = collections.deque()  # lines read, not yet handed out

    @property
    def backlog(self):
        """Lines read and not yet handed out, plus 1 while some bytes are not read yet."""
        return len(self._pending) + (1 if self._lines.unread else 0)

    def hand_out(self, handle, deadline=None, refill=False):
        """Give each new event to `handle` until `deadline` (time.monotonic(); None: every new event at once).
        With a deadline the file is read READ_CHUNK_BYTES at a time: one chunk per call, or (`refill`) a next chunk
        whenever the lines read are handed out and time is left."""
        limit = None if deadline is None else READ_CHUNK_BYTES
        pending = self._pending
        pending.extend(self._lines.read_new_lines(limit))
        while deadline is None or time.monotonic() < deadline:
            if not pending:
                if not (refill and self._lines.unread):
                    break
                pending.extend(self._lines.read_new_lines(limit))
                if not pending:
                    break
            event = parse_event(pending.popleft())
            if event is not None:
                handle(event)

    @property
    def offset(self):
        return self._lines.offset

    def read_new(self):
        return [e for e in map(parse_event, self._lines.read_new_lines()) if e is not None]


def format_seconds(seconds):
    """'2 h 05 min', '3 min 20 s', '12 s'."""
    if seconds is None:
        return "unknown"
    s = int(round(max(0.0, float(seconds))))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


def describe_event(event):
    """One human-readable log line for an event, or None for events shown elsewhere (iterations)."""
    kind = event.get("event")
    if kind == "start":
        what = "Resumed" if event.get("resumed") else "Started"
        text = (f"{what} {event.get('method', '')} training on {event.get('device', '?')}: "
                f"{event.get('labeled', '?')} labeled, {event.get('unlabeled', '?')} unlabeled, "
                f"{event.get('validation', 0)} validation case(s), {event.get('iterations', '?')} iterations")
        notes = event.get("notes") or []
        plan = plan_text(event)
        return "\n".join([text] + ([f"  {plan}"] if plan else []) + [f"  note: {n}" for n in notes])
    if kind == "warning":
        return f"Warning: {event.get('message', '')}" + (f" ({event['file']})" if event.get("file") else "")
    if kind == "validation":
        dice = ", ".join(f"{k} {v:.3f}" for k, v in (event.get("dice") or {}).items())
        return f"Validation at iteration {event.get('iter')}: mean Dice {event.get('mean_dice', 0):.3f} ({dice})"
    if kind == "checkpoint":
        return f"Checkpoint ({event.get('kind', 'last')}) saved at iteration {event.get('iter')}"
    if kind == "retry":
        return (f"Out of memory: retrying with patch {event.get('patch_size')} and batch {event.get('batch_size')} "
                f"({event.get('reason', '')})")
    if kind == "plan":  # micd predict: how the volume will be processed
        plan = event.get("plan") or {}
        return (f"Segmenting on {event.get('device', '?')}: grid {event.get('grid_shape')}, window {event.get('roi')}"
                + (f"; {plan['reason']}" if plan.get("reason") else ""))
    if kind == "scored":  # micd suggest: one volume ranked
        return (f"Scored {os.path.basename(str(event.get('input', '')))} ({event.get('index')} / "
                f"{event.get('total')}): {event.get('score', 0):.3f}")
    if kind == "prediction":
        return f"Prediction written in {event.get('seconds', 0):.1f} s, labels found: {event.get('labels_found')}"
    if kind == "done":
        best = event.get("best_mean_dice")
        return "Finished" + (f": best validation mean Dice {best:.3f}" if isinstance(best, (int, float)) else "")
    if kind == "error":
        text = f"Error ({event.get('kind', 'internal')}): {event.get('message', '')}"
        if event.get("hint"):
            text += f"\n  What to do: {event['hint']}"
        for p in event.get("problems") or []:
            text += f"\n  {p.get('file', '')}: {p.get('reason', '')}"
        return text
    return None


def plan_text(start):
    """The plan a training `start` event carries, in words: iterations, seconds per iteration and ETA (measured when
    the run has a time budget), the budget, and the precision with its reason. "" for no event."""
    if not start:
        return ""
    text = f"Plan: {start.get('iterations', '?')} iterations"
    spi = start.get("sec_per_iter_expected")
    if isinstance(spi, (int, float)):
        text += f" x {spi:.2f} s"
    if isinstance(start.get("eta_s"), (int, float)):
        text += f", about {format_seconds(start['eta_s'])} to go"
    budget = start.get("time_budget")
    if budget:
        planned = (start.get("budget_plan") or {}).get("planned_iterations")
        total, limit = start.get("expected_total_s"), start.get("time_budget_s")
        over = isinstance(total, (int, float)) and isinstance(limit, (int, float)) and total > limit
        text += (f" (over the {budget} budget: the iteration count was set)" if over else
                 f" (count planned for the {budget} budget)" if planned else f" (within the {budget} budget)")
    precision = start.get("precision_reason") or start.get("precision")
    return text + (f". Precision: {precision}" if precision else "")


class PredictionProgress:
    """What a segment or suggest panel shows from `micd predict` / `micd suggest` events: windows done of the
    current image, image i of n, the ETA; `fraction` covers all images."""

    def __init__(self):
        self.windows_done = 0
        self.windows_total = 0
        self.image = 1
        self.images = 1
        self.eta_s = None
        self.input = None
        self.scored = 0

    def update(self, event):
        kind = event.get("event")
        if kind == "progress":
            self.windows_done = int(event.get("windows_done") or 0)
            self.windows_total = int(event.get("windows_total") or 0)
            self.image = int(event.get("image") or 1)
            self.images = int(event.get("images") or 1)
            self.eta_s = event.get("eta_s")
            self.input = event.get("input", self.input)
        elif kind == "scored":
            self.scored = int(event.get("index") or self.scored + 1)
            self.images = int(event.get("total") or self.images)

    @property
    def started(self):
        return self.windows_total > 0

    @property
    def fraction(self):
        if not self.windows_total:
            return 0.0
        within = min(1.0, self.windows_done / self.windows_total)
        return min(1.0, (self.image - 1 + within) / max(1, self.images))

    def status_text(self, what="Segmenting"):
        if not self.windows_total:
            return f"{what}: starting..."
        parts = [f"{what}" + (f" {self.image} / {self.images}" if self.images > 1 else "") +
                 f": {self.windows_done} / {self.windows_total} windows"]
        if self.eta_s is not None:
            parts.append(f"{format_seconds(self.eta_s)} left" + (" for this volume" if self.images > 1 else ""))
        return " · ".join(parts)


class TrainingProgress:
    """Everything a training panel shows, accumulated from events. Feed it with `update(event)`."""

    def __init__(self):
        self.start = None
        self.iteration = 0
        self.total = 0
        self.eta_s = None
        self.sec_per_iter = None
        self.loss_history = collections.deque(maxlen=LOSS_HISTORY_LIMIT)  # (iteration, {term: value}), the latest
        self.dice_history = []  # (iteration, mean Dice, {label: Dice})
        self.last_checkpoint = None  # (path, iteration)
        self.best_mean_dice = None
        self.model_path = None
        self.error = None
        self.warnings = []

    def plan_text(self):
        """The plan of the run (from its `start` event) in words; "" before it started."""
        return plan_text(self.start)

    def update(self, event):
        kind = event.get("event")
        if kind == "start":
            self.start = event
            self.total = int(event.get("iterations") or self.total)
            self.iteration = int(event.get("start_iter") or self.iteration)
        elif kind == "iteration":
            self.iteration = int(event.get("iter", self.iteration))
            self.total = int(event.get("total", self.total) or self.total)
            self.eta_s = event.get("eta_s")
            self.sec_per_iter = event.get("sec_per_iter")
            self.loss_history.append((self.iteration, dict(event.get("loss") or {})))
        elif kind == "validation":
            mean = event.get("mean_dice")
            self.dice_history.append((int(event.get("iter", self.iteration)), mean, dict(event.get("dice") or {})))
            if isinstance(mean, (int, float)) and (self.best_mean_dice is None or mean > self.best_mean_dice):
                self.best_mean_dice = mean
        elif kind == "checkpoint":
            self.last_checkpoint = (event.get("path"), event.get("iter"))
        elif kind == "warning":
            self.warnings.append(event.get("message", ""))
        elif kind == "done":
            self.model_path = event.get("model")
            if event.get("best_mean_dice") is not None:
                self.best_mean_dice = event["best_mean_dice"]
            self.iteration = int(event.get("iter") or self.iteration)
            self.eta_s = 0
        elif kind == "error":
            self.error = event

    @property
    def fraction(self):
        return min(1.0, self.iteration / self.total) if self.total else 0.0

    def status_text(self):
        if self.error:
            return f"Stopped: {self.error.get('message', '')}"
        if self.model_path:
            return "Finished" + (f", best Dice {self.best_mean_dice:.3f}" if self.best_mean_dice is not None else "")
        if not self.total:
            return "Starting..."
        parts = [f"Iteration {self.iteration} / {self.total}"]
        if self.eta_s is not None:
            parts.append(f"{format_seconds(self.eta_s)} left")
        if self.loss_history:
            parts.append(f"loss {self.loss_history[-1][1].get('total', float('nan')):.3f}")
        if self.best_mean_dice is not None:
            parts.append(f"best Dice {self.best_mean_dice:.3f}")
        return " · ".join(parts)
