"""Reading the backend's progress stream (JSON lines, schema in `micd/events.py`) incrementally, and turning it into
the state a panel shows: iteration, time left, loss and Dice histories, the final result or error."""

import json
import os


class LineTail:
    """Reads the complete lines appended to a text file since the last call (a half-written last line waits)."""

    def __init__(self, path, offset=0):
        self.path = path
        self.offset = offset
        self._partial = b""

    def read_new_lines(self):
        if not self.path or not os.path.isfile(self.path):
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        self.offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()  # b"" when the chunk ended with a newline
        return [line.decode("utf-8", errors="replace").rstrip("\r") for line in lines]


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
    """New events appended to an `events.jsonl` (or to a log that mixes events with text)."""

    def __init__(self, path, offset=0):
        self._lines = LineTail(path, offset)

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
        return "\n".join([text] + [f"  note: {n}" for n in notes])
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


class TrainingProgress:
    """Everything a training panel shows, accumulated from events. Feed it with `update(event)`."""

    def __init__(self):
        self.start = None
        self.iteration = 0
        self.total = 0
        self.eta_s = None
        self.sec_per_iter = None
        self.loss_history = []  # (iteration, {term: value})
        self.dice_history = []  # (iteration, mean Dice, {label: Dice})
        self.last_checkpoint = None  # (path, iteration)
        self.best_mean_dice = None
        self.model_path = None
        self.error = None
        self.warnings = []

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
