"""The training panel at real scale, through the test harness (real Qt widgets, offscreen, the module loaded as
Slicer loads it: its logic polls jobs with the module's QTimer, every slot is timed).

1. Re-entry after a "restart": a run folder whose job record points at a live process (a child that sleeps) and
   whose events.jsonl holds a `start` event as the backend writes it and N logged iterations (one `iteration` event
   per step by default: a run started without --log-every), a validation every 200 and a checkpoint every 500. The
   module is entered (it reattaches) and Qt's event loop spins until the panel has caught up and drawn the charts.
2. Live: events appended in chunks, as a running job writes them, while the event loop spins.
3. Ten cycles of Resume on the same panel (the process is stopped; each resume starts a process that exits as
   cancelled; the run's history is replayed each time): the plot-series nodes in the scene after each.

Every Python callback Qt makes (timer ticks: the job poller and the panel's redraw; button clicks) and the module's
enter() are timed. Prints one JSON line: iterations, first_poll_ms (the first poll after re-entry), max_callback_ms
(the slowest callback in all three parts), points_per_series_max (the most points one chart series was drawn from /
one plot table holds), plot_series_after_cycles, and details.

Usage: QT_QPA_PLATFORM=offscreen python Testing/ui_latency.py --iterations 20000 [--log-every 1] [--cycles 10]"""

import argparse
import json
import math
import os
import pathlib
import random
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

LIVE_ITERATIONS = 1500  # appended during the live part, in chunks
LIVE_CHUNK = 50
LIVE_CHUNK_INTERVAL_S = 0.1


class CallbackTimer:
    """Times every Python slot Qt calls (pythonqt.SlotCall, i.e. timers and signals), by the slot's name, and the
    interpreter's garbage-collection pauses inside each (gc.callbacks): a full collection of the whole process lands
    in whichever callback allocates when it is due, whatever that callback does."""

    def __init__(self):
        import gc

        import pythonqt

        self.calls = []  # (name, ms)
        self.gc_ms = []  # per call: milliseconds of it spent in garbage collection
        self._gc_total = 0.0
        self._gc_start = None
        self._real = pythonqt.SlotCall.__call__
        timer = self

        def on_gc(phase, _info):
            if phase == "start":
                timer._gc_start = time.perf_counter()
            elif timer._gc_start is not None:
                timer._gc_total += (time.perf_counter() - timer._gc_start) * 1000
                timer._gc_start = None

        def timed(slot, *args):
            t, gc_before = time.perf_counter(), timer._gc_total
            try:
                return timer._real(slot, *args)
            finally:
                timer.calls.append((getattr(slot.callable, "__qualname__", repr(slot.callable)),
                                    (time.perf_counter() - t) * 1000))
                timer.gc_ms.append(timer._gc_total - gc_before)

        self._on_gc = on_gc
        gc.callbacks.append(on_gc)
        pythonqt.SlotCall.__call__ = timed

    def max_without_gc(self):
        """The slowest callback's own time: wall time less the collection pauses inside it."""
        return max((ms - g for (_n, ms), g in zip(self.calls, self.gc_ms)), default=0.0)

    def slowest(self, k=5):
        """The k slowest callbacks: (name, wall ms, of which garbage collection ms), slowest first."""
        rows = [(n, round(ms, 1), round(g, 1)) for (n, ms), g in zip(self.calls, self.gc_ms)]
        return sorted(rows, key=lambda r: r[1] - r[2], reverse=True)[:k]

    def mark(self):
        return len(self.calls)

    def since(self, mark, name=None):
        return [ms for n, ms in self.calls[mark:] if name is None or n.endswith(name)]

    def gc_since(self, mark, name=None):
        """The garbage-collection milliseconds inside each call that since() lists, in the same order."""
        return [g for (n, _ms), g in zip(self.calls[mark:], self.gc_ms[mark:]) if name is None or n.endswith(name)]

    def restore(self):
        import gc

        import pythonqt

        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        pythonqt.SlotCall.__call__ = self._real


def iteration_event(it, total, rng):
    decay = math.exp(-it / 4000)
    sup = 0.25 + 0.9 * decay + rng.uniform(-0.04, 0.04)
    cons = 0.05 + 0.2 * (1 - decay) * math.exp(-it / 20000) + rng.uniform(-0.01, 0.01)
    disc = 0.02 * (1 - decay) + rng.uniform(0, 0.005)
    return {"event": "iteration", "time": round(1764000000 + it * 0.42, 3), "schema": 1, "iter": it, "total": total,
            "loss": {"total": sup + cons + disc, "sup": sup, "consistency": cons, "discrepancy": disc},
            "lr": 0.03 * (1 - it / total) ** 0.9, "beta": 0.1 * min(1.0, it / 2000), "sec_per_iter": 0.42,
            "eta_s": round((total - it) * 0.42, 1)}


def events_between(first, last, total, run_dir, log_every, rng):
    """The events the backend writes for iterations first..last: `iteration` every `log_every` (and the first and
    last of the run), validation every 200, checkpoint every 500."""
    from MICDCommon.contract import CHECKPOINTS_DIR, LAST_CHECKPOINT

    events = []
    for it in range(first, last + 1):
        if it % log_every == 0 or it == 1 or it == total:
            events.append(iteration_event(it, total, rng))
        if it % 200 == 0:
            decay = math.exp(-it / 3000)
            anterior, posterior = 0.86 - 0.5 * decay, 0.83 - 0.55 * decay
            events.append({"event": "validation", "time": 1764000000 + it * 0.42, "schema": 1, "iter": it,
                           "mean_dice": (anterior + posterior) / 2, "dice": {"anterior": anterior,
                                                                             "posterior": posterior}})
        if it % 500 == 0:
            events.append({"event": "checkpoint", "time": 1764000000 + it * 0.42, "schema": 1, "iter": it,
                           "kind": "last", "path": os.path.join(run_dir, CHECKPOINTS_DIR, LAST_CHECKPOINT)})
    return events


def start_event(total, run_dir):
    return {"event": "start", "time": 1764000000.0, "schema": 1, "method": "micd", "device": "cuda:0",
            "labeled": 8, "unlabeled": 40, "validation": 2, "start_iter": 0, "resumed": False, "world_size": 1,
            "ranks": 1, "threads": 16, "amp": "float16", "iterations": total, "patch_size": [96, 96, 96],
            "precision": "fp16", "precision_reason": "fp16 AMP on CUDA", "time_budget": "3h",
            "time_budget_s": 10800.0, "sec_per_iter_expected": 0.42, "eta_s": round(total * 0.42 + 95, 1),
            "expected_total_s": round(total * 0.42 + 140, 1), "budget_plan": {"planned_iterations": True},
            "validate_every": 200, "checkpoint_every": 500, "spacing": [1.0, 1.0, 1.0], "modality": "MRI",
            "labels": {"0": "background", "1": "anterior", "2": "posterior"}, "notes": [], "parent_model": None,
            "run_dir": run_dir, "version": "0.4.0"}


def append(path, events):
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(e) + "\n" for e in events))


def write_run(runs_root, name, iterations, total, log_every, rng):
    """A run folder at iteration `iterations` of `total` whose job record points at a live child process (a
    "restart": nothing in this process knows the run). Returns (run_dir, child process)."""
    from MICDCommon import processes
    from MICDCommon.contract import CHECKPOINTS_DIR, EVENTS_FILE, EXIT_CANCELLED, LAST_CHECKPOINT
    from MICDCommon.jobs import JobRecord

    run_dir = os.path.join(runs_root, f"{name}-20261201-101500")
    os.makedirs(os.path.join(run_dir, CHECKPOINTS_DIR))
    open(os.path.join(run_dir, CHECKPOINTS_DIR, LAST_CHECKPOINT), "wb").close()  # what Resume needs
    events_file = os.path.join(run_dir, EVENTS_FILE)
    append(events_file, [start_event(total, run_dir)])
    append(events_file, events_between(1, iterations, total, run_dir, log_every, rng))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    # the command Resume re-runs (+ --resume): a process that stops at once as cancelled, keeping the cycles cheap
    command = [sys.executable, "-c", f"import sys; sys.exit({EXIT_CANCELLED})"]
    JobRecord("train", command, run_dir, pid=child.pid, start_marker=processes.start_marker(child.pid),
              events_file=events_file, info={"model_name": name}).save()
    return run_dir, child


def spin(app, until, timeout, what):
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise RuntimeError(f"ui_latency: {what} did not happen within {timeout} s")
        app.processEvents()
        time.sleep(0.002)


def caught_up(training):
    job = training.job
    return job is not None and job.backlog == 0 and not training.runDisplay.pending


def points_per_series(curves):
    """The most points a chart series is drawn from, and the most rows a plot table node holds."""
    drawn = max((len(p) for table in (curves.loss, curves.dice) for p in table.series().values()), default=0)
    rows = max(table.table_node.GetTable().GetNumberOfRows() for table in (curves.loss, curves.dice))
    return max(drawn, rows)


def measure(home, iterations=20000, log_every=1, cycles=10):
    """The three parts above, in the scene and harness already installed; MICD_HOME must be `home`."""
    import slicer

    import slicer_harness
    from MICDCommon.contract import EVENTS_FILE, EXIT_CANCELLED
    from MICDCommon.events import plan_text

    app = slicer.app
    rng = random.Random(30)
    total = iterations + LIVE_ITERATIONS
    runs_root = os.path.join(str(home), "runs")
    run_dir, child = write_run(runs_root, "Hippocampus", iterations, total, log_every, rng)
    events_file = os.path.join(run_dir, EVENTS_FILE)
    timer = CallbackTimer()
    loaded = None
    try:
        loaded = slicer_harness.load_module("MICDTraining")
        training = loaded.widget.panel.training
        training.dependency_check = lambda then=None: True  # the backend's dependencies are not what is measured
        drawn_before = training.curvesView.drawn

        # 1. re-entry
        t = time.perf_counter()
        loaded.widget.enter()
        enter_ms = (time.perf_counter() - t) * 1000
        mark = timer.mark()
        t = time.perf_counter()
        spin(app, lambda: caught_up(training) and training.job.progress.iteration == iterations
             and training.curvesView.drawn > drawn_before, 120, "catching up after re-entry")
        catch_up_ms = (time.perf_counter() - t) * 1000
        polls, polls_gc = timer.since(mark, "poll_all"), timer.gc_since(mark, "poll_all")
        reentry = [enter_ms] + timer.since(mark)
        job = training.job
        redraws_reentry = training.curvesView.drawn - drawn_before
        points_reentry = points_per_series(training.curves)
        plan_ok = training.planLabel.text == plan_text(start_event(total, run_dir))
        status_reentry = training.statusLabel.text
        status_ok = status_reentry.startswith(f"Iteration {iterations} / {total}")
        loss_rows = training.curves.loss.added

        # 2. live: chunks appended while the event loop spins
        mark = timer.mark()
        drawn_before = training.curvesView.drawn
        t0 = time.perf_counter()
        for first in range(iterations + 1, total + 1, LIVE_CHUNK):
            append(events_file, events_between(first, min(total, first + LIVE_CHUNK - 1), total, run_dir, log_every,
                                               rng))
            until = time.monotonic() + LIVE_CHUNK_INTERVAL_S
            spin(app, lambda: time.monotonic() > until, 10, "a chunk interval")
        spin(app, lambda: caught_up(training) and job.progress.iteration == total, 60, "following the live run")
        live_s = time.perf_counter() - t0
        live = timer.since(mark)
        redraws_live = training.curvesView.drawn - drawn_before
        points_live = points_per_series(training.curves)
        live_status_ok = training.statusLabel.text.startswith(f"Iteration {total} / {total}")

        # the process stops as a cancelled run does: its last event, then it ends
        append(events_file, [{"event": "error", "time": 1764009999.0, "schema": 1, "kind": "cancelled",
                              "message": "cancelled", "hint": "", "exit_code": EXIT_CANCELLED}])
        child.terminate()
        child.wait()
        mark = timer.mark()
        spin(app, lambda: job.finished, 30, "the end of the process")
        ending = timer.since(mark)

        # 3. Resume cycles on the same panel
        series_counts, cycle_calls = [], []
        for _ in range(cycles):
            mark = timer.mark()
            training.resumeButton.click()
            resumed = training.job
            if resumed is job:
                raise RuntimeError("ui_latency: Resume did not start a new job")
            spin(app, lambda: resumed.finished and caught_up(training), 120, "a resume cycle")
            cycle_calls += timer.since(mark)
            series_counts.append(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLPlotSeriesNode"))
        points_cycles = points_per_series(training.curves)
        resumed_progress = training.job.progress.iteration
    finally:
        timer.restore()
        if child.poll() is None:
            child.kill()
            child.wait()
        if loaded is not None:
            loaded.unload()
    every = reentry + live + ending + cycle_calls
    return {"iterations": iterations, "first_poll_ms": round(polls[0], 1),
            "max_callback_ms": round(max(every), 1),
            "points_per_series_max": max(points_reentry, points_live, points_cycles),
            "plot_series_after_cycles": series_counts,
            "details": {"log_every": log_every, "events_lines": sum(1 for _ in open(events_file, encoding="utf-8")),
                        "events_mb": round(os.path.getsize(events_file) / 1e6, 2), "loss_rows_added": loss_rows,
                        "first_poll_without_gc_ms": round(polls[0] - polls_gc[0], 1),
                        "enter_ms": round(enter_ms, 1), "polls_to_catch_up": len(polls),
                        "catch_up_ms": round(catch_up_ms, 1), "redraws_reentry": redraws_reentry,
                        "max_reentry_callback_ms": round(max(reentry), 1),
                        "max_live_callback_ms": round(max(live), 1), "live_s": round(live_s, 2),
                        "redraws_live": redraws_live, "callbacks_live": len(live),
                        "max_resume_cycle_callback_ms": round(max(cycle_calls), 1),
                        "plan_text_ok": plan_ok, "status_ok": status_ok, "status_reentry": status_reentry,
                        "live_status_ok": live_status_ok, "resumed_progress_iteration": resumed_progress,
                        "callbacks": len(every),
                        "max_callback_without_gc_ms": round(timer.max_without_gc(), 1),
                        "max_gc_pause_in_a_callback_ms": round(max(timer.gc_ms, default=0.0), 1),
                        "slowest_callbacks": timer.slowest()}}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=20000)
    ap.add_argument("--log-every", type=int, default=1, help="the run's --log-every (1: one event per step)")
    ap.add_argument("--cycles", type=int, default=10)
    a = ap.parse_args()
    home = pathlib.Path(tempfile.mkdtemp(prefix="micd-ui-latency-"))
    os.environ["MICD_HOME"] = str(home)
    import slicer_harness

    slicer_harness.install(tempfile.mkdtemp(prefix="micd-ui-latency-settings-"))
    from scene_helpers import new_scene

    scene, keep = new_scene()
    result = measure(home, a.iterations, a.log_every, a.cycles)
    print(json.dumps(result))
    del keep, scene


if __name__ == "__main__":
    main()
