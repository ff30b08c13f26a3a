"""`micd train --time-budget 45m`: fix the iteration count from a few timed steps so that the run ends in time.

How the count is planned (`apply_time_budget`, called once the model is built):

0. **The patch, for speed** (CPU, no `--patch-size`, no `--iterations`): one step of a 32^3 probe patch is timed,
   the step time of the memory-planned patch is modelled as proportional to voxels, and when fewer than
   `ENOUGH_ITERATIONS` would fit, the patch is cut (largest axis first, so a thick-slice patch stays anisotropic;
   not below 32 per axis, or the planned size when smaller) to the largest one modelled to give them. The
   calibration below measures the chosen patch.
   GPUs keep the memory-planned patch the spec uses. Before that, with `--num-threads 0` on a CPU, torch's default
   thread count and one thread are compared on a probe pass of a copy of one student, and the faster is kept
   (`_choose_threads`; on a busy machine OpenMP threads wait for each other, and one thread won by 40x here).
1. **Calibration.** One warm-up step and up to three timed steps of the real training step (`Trainer._train_step`,
   the method's full loss at β_max, on real patches of the run's data, on its device and precision), one validation
   pass over the first validation case (scaled by voxel count to the whole validation set) and one checkpoint
   written to disk. The calibration steps leave no trace: the trainer's complete checkpoint state (weights,
   teachers, class-weight statistics, BatchNorm statistics, optimizer, every RNG) is copied before and restored
   after them, so a budgeted run whose plan came to N iterations trains exactly as `--iterations N` would (tested).
2. **The count.** The budget runs from the start of the process. What is left after calibration pays, in this order,
   for the final checkpoint and the model export, then for N iterations with their validations and periodic
   checkpoints; N is the largest count whose estimate fits `SAFETY` of that time. Everything that follows the count
   (poly learning rate, ramp-up, warm-up, validation every N/10, checkpoints) is derived from it as for
   `--iterations N`, except that with `--validate-every 0` validations are capped at `VALIDATION_SHARE` of the
   budget (then `validate_every` is set and stored). The count is stored as `iterations` in `RUN_DIR/config.json`, so `--resume` keeps it, and the
   calibration in `RUN_DIR/plan.json`.
3. **Too small a budget.** When fewer than `MIN_ITERATIONS` fit: if `MIN_ITERATIONS` still end within
   `OVERRUN_TOLERANCE` x the budget the run does them with a warning; otherwise it stops before training with an
   `error` event of kind `budget` (exit 2) that says how long the shortest run takes and what to change.

`--iterations` given on the command line or in `--config` wins over the budget: the calibration then only reports the
ETA (with a warning when it exceeds the budget). On `--resume` the stored count is kept and nothing is calibrated.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import List, Optional

from micd import proctime
from micd.atomicfile import write_json
from micd.training.outcome import CONFIG_FILE, MAX_OOM_RETRIES, DataProblem

WARMUP_STEPS = 1
TIMED_STEPS = 3
CALIBRATION_SHARE = 0.15  # at most this share of the budget goes to timed steps beyond the first
MIN_ITERATIONS = 10
ENOUGH_ITERATIONS = 1000  # on a CPU, a planned patch too slow for this many iterations is cut (down to SPEED_FLOOR)
SPEED_FLOOR = 32  # voxels per axis (or the planned size, when smaller) below which the speed cut does not go
VALIDATION_SHARE = 0.2  # with --validate-every 0, validations may take at most this share of the budget
PROBE_SIZE = 32  # voxels per axis of the probe patch whose step time models the others
OVERRUN_TOLERANCE = 1.25
SAFETY = 0.85
PLAN_FILE = "plan.json"

_DURATION = re.compile(r"^(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m(?:in)?)?(?:(?P<s>\d+(?:\.\d+)?)s?)?$")


def parse_duration(text) -> float:
    """Seconds in '90s', '45m', '2h', '1h30m', '1.5h' or a plain number of seconds; ValueError otherwise."""
    s = str(text).strip().lower().replace(" ", "")
    m = _DURATION.match(s)
    if not s or not m or not any(m.groupdict().values()):
        raise ValueError(f"--time-budget {text!r}: expected a duration such as 90s, 45m, 2h or 1h30m")
    seconds = sum(float(m.group(k) or 0) * f for k, f in (("h", 3600), ("m", 60), ("s", 1)))
    if seconds <= 0:
        raise ValueError(f"--time-budget {text!r}: the budget must be longer than zero")
    return seconds


START_TIME_VARIABLE = "MICD_START_TIME"  # set by `micd train --nproc N` for its ranks: the user's command started then


def command_start_time() -> float:
    """When the user's command started: the `micd train --nproc N` launcher's time for its ranks; this process's
    start when the process is the `micd` program (start-up and imports count against the budget); now when micd
    runs inside another program (a test, a notebook)."""
    if os.environ.get(START_TIME_VARIABLE):
        try:
            return float(os.environ[START_TIME_VARIABLE])
        except ValueError:
            pass
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    program = os.path.splitext(os.path.basename(sys.argv[0] if sys.argv else ""))[0]
    if (spec is not None and spec.name.startswith("micd")) or program in ("micd", "micd-script"):
        return proctime.process_start_time()
    return time.time()


@dataclass
class Calibration:
    warmup_s: List[float]
    step_s: List[float]
    sec_per_iter: float
    validation_s: float  # one validation of the whole validation set (estimated from its first case)
    checkpoint_s: float  # one checkpoint written to disk
    export_s: float  # final model folder(s)
    spent_s: float  # what the calibration itself took

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: ([round(x, 4) for x in v] if isinstance(v, list) else round(v, 4)) for k, v in d.items()}


@dataclass
class RunCosts:
    """What the loop does as a function of the iteration count (mirrors Trainer._loop)."""
    validate_every: int  # option value: 0 = ten times per run
    checkpoint_every: int
    has_validation: bool
    max_validations: int = 0  # with validate_every 0: at most this many (0: no cap)

    def every(self, n: int) -> int:
        if self.validate_every > 0:
            return self.validate_every
        base = max(1, n // 10)
        return max(base, math.ceil(n / self.max_validations)) if self.max_validations else base

    def validations(self, n: int) -> int:
        if not self.has_validation or n <= 0:
            return 0
        every = self.every(n)
        return n // every + (1 if n % every else 0)

    def checkpoints(self, n: int) -> int:
        return max(0, (n - 1) // max(1, self.checkpoint_every))

    def loop_seconds(self, n: int, cal: Calibration) -> float:
        v = self.validations(n)
        # every validation may improve the best Dice and write best.pt (the networks only: about half a checkpoint)
        return n * cal.sec_per_iter + v * (cal.validation_s + 0.5 * cal.checkpoint_s) + \
            self.checkpoints(n) * cal.checkpoint_s

    def finish_seconds(self, cal: Calibration) -> float:
        return cal.checkpoint_s + cal.export_s

    def fit(self, available_s: float, cal: Calibration) -> int:
        """Largest n whose loop fits `available_s` (0 when not even one iteration does)."""
        if self.loop_seconds(1, cal) > available_s:
            return 0
        lo, hi = 1, max(2, int(available_s / max(cal.sec_per_iter, 1e-6)) + 2)
        while lo + 1 < hi:  # loop_seconds is non-decreasing up to the rounding of validate_every
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self.loop_seconds(mid, cal) <= available_s else (lo, mid)
        while lo > 1 and self.loop_seconds(lo, cal) > available_s:
            lo -= 1
        return lo


@dataclass
class BudgetPlan:
    time_budget: str
    time_budget_s: float
    iterations: int
    planned: bool  # False when --iterations was given and only the ETA is reported
    eta_s: float  # from the start of training to the end of the export
    expected_total_s: float  # from the start of the process
    sec_per_iter: float
    calibration: dict = field(default_factory=dict)
    note: str = ""
    threads: Optional[dict] = None  # CPU threads chosen by _choose_threads (None: as given or torch's default)

    def start_fields(self) -> dict:
        return {"time_budget": self.time_budget, "time_budget_s": self.time_budget_s, "eta_s": round(self.eta_s, 1),
                "expected_total_s": round(self.expected_total_s, 1), "sec_per_iter_expected": round(self.sec_per_iter, 4),
                "budget_plan": {"planned_iterations": self.planned, "calibration": self.calibration,
                                "note": self.note, "threads": self.threads}}


def calibrate(trainer, timed: int = TIMED_STEPS, extras: bool = True) -> Calibration:
    """Time the real step (up to `timed` steps after the warm-up) and, with `extras`, a validation and a checkpoint;
    then put every bit of trainer state back."""
    import numpy as np
    import torch

    from micd.training import distributed as D
    from micd.training.validation import validate

    o = trainer.o
    t_cal = time.time()
    saved = copy.deepcopy(trainer._state(0))
    saved_best = copy.deepcopy(trainer.best)
    nonfinite = getattr(trainer, "nonfinite_in_row", None)
    for s in trainer.method.students.values():
        s.train()
    sync = (lambda: torch.cuda.synchronize(trainer.device)) if trainer.device.type == "cuda" else (lambda: None)

    def step() -> float:
        from micd.training.devices import is_oom

        for attempt in range(MAX_OOM_RETRIES + 1):
            t = time.time()
            try:
                trainer._train_step(o.beta_max)
            except RuntimeError as e:  # as the loop does: a smaller patch (a `retry` event), then time again
                if trainer.device.type != "cuda" or not is_oom(e) or attempt == MAX_OOM_RETRIES:
                    raise
                trainer._shrink_after_oom()
                continue
            sync()
            return time.time() - t
        raise AssertionError("unreachable")

    warm = [step() for _ in range(WARMUP_STEPS)]
    # Slow steps on a short budget: fewer timed steps (at least one). The count comes from the warm-up time averaged
    # over ranks, so that every rank takes the same number of steps (their all-reduces must pair up).
    first = D.mean_across_ranks(trainer.ctx, {"w": warm[-1]})["w"]
    n_timed = max(1, min(timed, int(CALIBRATION_SHARE * parse_duration(o.time_budget) / max(first, 1e-6))))
    times = [step() for _ in range(n_timed)]
    spi = float(np.mean(times))  # the mean: a busy machine makes some steps much slower than the median

    val_s = 0.0
    if extras and trainer.data.validation and trainer.ctx.is_main:
        case = trainer.data.validation[0]
        t = time.time()
        validate(trainer.method.inference_networks(), [case], trainer.data.channels.names(trainer.data.labels),
                 trainer.patch, trainer.device)
        sync()
        one = time.time() - t
        voxels = [float(np.prod(c.image.shape)) for c in trainer.data.validation]
        val_s = one * sum(voxels) / max(voxels[0], 1.0)
    ckpt_s = 0.0
    if extras and trainer.ctx.is_main:
        t = time.time()
        fd, tmp = tempfile.mkstemp(prefix=".calibration-", suffix=".pt", dir=trainer.run_dir)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(trainer._state(0), f)
                f.flush()
                os.fsync(f.fileno())
        finally:
            os.unlink(tmp)
        ckpt_s = time.time() - t
    export_s = (2.0 if o.export_last else 1.0) * ckpt_s + 0.5  # safetensors of the networks, JSON, rename

    trainer.optimizer.zero_grad(set_to_none=True)
    trainer._restore(saved)
    trainer.best = saved_best
    if nonfinite is None:
        if hasattr(trainer, "nonfinite_in_row"):
            del trainer.nonfinite_in_row
    else:
        trainer.nonfinite_in_row = nonfinite
    D.barrier(trainer.ctx)
    return Calibration(warm, times, spi, val_s, ckpt_s, export_s, time.time() - t_cal)


def apply_time_budget(trainer) -> None:
    """With --time-budget: calibrate, fix trainer.o.iterations (unless given) and keep the plan for the start event.

    Sets `trainer.budget_fields` (merged into the `start` event); raises DataProblem(kind="budget") when even the
    shortest sensible run would overrun the budget by far."""
    from micd.training import distributed as D

    o = trainer.o
    trainer.budget_fields = {}
    if not o.time_budget:
        return
    budget_s = parse_duration(o.time_budget)
    plan_path = os.path.join(trainer.run_dir, PLAN_FILE)
    if trainer.resume_state is not None:
        trainer.budget_fields = _resumed_fields(plan_path, o, int(trainer.resume_state["iteration"]))
        return
    given = getattr(o, "iterations_given", False)
    costs = RunCosts(o.validate_every, o.checkpoint_every, bool(trainer.data.validation))
    t0 = trainer.process_t0
    candidates: list = []
    threads = _choose_threads(trainer)
    if not given:
        _choose_patch_for_speed(trainer, budget_s, t0, candidates)
    cal = D.broadcast_object(trainer.ctx, calibrate(trainer))
    candidates.append({"patch_size": list(trainer.patch), "sec_per_iter": round(cal.sec_per_iter, 4)})
    if o.validate_every == 0 and cal.validation_s > 0:
        # validating ten times must not eat the budget: at most VALIDATION_SHARE of it (the last one always runs)
        costs.max_validations = max(1, int(VALIDATION_SHARE * budget_s / cal.validation_s))
    elapsed = time.time() - t0
    available = budget_s - elapsed - costs.finish_seconds(cal)
    where = (f"{cal.sec_per_iter:.2f} s per iteration on {trainer.device} (patch {'x'.join(map(str, trainer.patch))}, "
             f"batch {o.batch_labeled}+{o.batch_unlabeled}, {o.filters} filters)")
    if given:
        n, note = o.iterations, f"--iterations {o.iterations} given: the budget only sets the ETA"
    else:
        n = costs.fit(SAFETY * available, cal)
        note = f"{n} iterations fit the {o.time_budget} budget at {where}"
        if n < MIN_ITERATIONS:
            shortest = elapsed + costs.loop_seconds(MIN_ITERATIONS, cal) + costs.finish_seconds(cal)
            if shortest > OVERRUN_TOLERANCE * budget_s:
                raise _budget_error(DataProblem, o, budget_s, shortest, n, where, elapsed - cal.spent_s)
            note = (f"only {n} iterations fit the {o.time_budget} budget at {where}; running the minimum of "
                    f"{MIN_ITERATIONS}, about {shortest - budget_s:.0f} s over the budget")
            n = MIN_ITERATIONS
    eta = costs.loop_seconds(n, cal) + costs.finish_seconds(cal)
    plan = BudgetPlan(o.time_budget, budget_s, n, not given, eta, elapsed + eta, cal.sec_per_iter,
                      {**cal.to_dict(), "setup_s": round(elapsed - cal.spent_s, 2), "patch_candidates": candidates},
                      note, threads)
    if given and elapsed + eta > budget_s:
        trainer._emit("warning", message=f"--iterations {n} will take about {elapsed + eta:.0f} s, over the "
                      f"{o.time_budget} budget ({where}); leave out --iterations to let the budget set the count",
                      file="")
    elif n == MIN_ITERATIONS and not given and plan.expected_total_s > budget_s:
        trainer._emit("warning", message=note, file="")
    if costs.max_validations and costs.every(n) != max(1, n // 10):
        o.validate_every = costs.every(n)  # stored in config.json with the count, so --resume keeps both
        note += (f"; validation every {o.validate_every} iterations instead of ten times, as one takes "
                 f"{cal.validation_s:.1f} s")
    o.iterations = n
    if trainer.bar is not None:
        trainer.bar.total = n
    if trainer.ctx.is_main:
        write_json(os.path.join(trainer.run_dir, CONFIG_FILE), o.to_dict())
        write_json(plan_path, asdict(plan))
    trainer.budget_fields = plan.start_fields()


def _choose_threads(trainer) -> Optional[dict]:
    """On a CPU with --num-threads 0 (torch's default): time a forward and backward pass of a copy of one student on a
    probe batch with torch's default thread count and with one thread, and keep the faster. On a busy machine (other
    processes on the cores) torch's OpenMP threads wait for each other: one thread was 40x faster there. The copy and
    a saved torch RNG state leave the run as it was."""
    import torch

    o = trainer.o
    default = torch.get_num_threads()
    if trainer.device.type != "cpu" or o.num_threads > 0 or default <= 1:
        return None
    net = copy.deepcopy(trainer.method.students["student_a"]).train()
    probe = [min(int(v), PROBE_SIZE) for v in trainer.patch]
    x = torch.randn((o.batch_labeled + o.batch_unlabeled, 1, *probe), generator=torch.Generator().manual_seed(0))
    rng = torch.get_rng_state()

    def seconds(threads: int) -> float:
        torch.set_num_threads(threads)
        best = math.inf
        for _ in range(2):  # the first pass includes one-time set-up
            t = time.time()
            with torch.autocast("cpu", dtype=trainer.amp or torch.float32, enabled=trainer.amp is not None):
                out = net(x)[0]
            out.float().mean().backward()
            best = min(best, time.time() - t)
        net.zero_grad(set_to_none=True)
        return best

    times = {default: seconds(default), 1: seconds(1)}
    torch.set_rng_state(rng)
    chosen = 1 if times[1] < 0.8 * times[default] else default
    torch.set_num_threads(chosen)
    return {"chosen": chosen, "probe_s": {str(k): round(v, 4) for k, v in times.items()},
            "why": (f"{chosen} thread(s): a probe pass took {times[chosen]:.3f} s with {chosen} and "
                    f"{times[1 if chosen != 1 else default]:.3f} s with {1 if chosen != 1 else default}")}


def _choose_patch_for_speed(trainer, budget_s: float, t0: float, candidates: list) -> None:
    """On a CPU, with the patch planned (no --patch-size): time a step of a small patch (the probe: PROBE_SIZE per
    axis), model the step time of the others as proportional to their voxels (which overestimates
    larger patches, as part of a step does not grow with the patch), and keep the largest patch modelled to give
    ENOUGH_ITERATIONS in the budget. The full calibration of the chosen patch then checks it. GPUs keep the large
    patch the spec uses."""
    import numpy as np

    from micd.data.planning import shrink_for_speed
    from micd.training import distributed as D

    o = trainer.o
    if o.patch_size or trainer.device.type != "cpu":
        return
    old = list(trainer.patch)
    floor = [min(int(v), SPEED_FLOOR) for v in old]
    divs = trainer.net_config.divisors
    probe = list(shrink_for_speed(old, float("inf"), [min(int(v), PROBE_SIZE) for v in old], divs))
    if probe == old:
        return
    trainer.patch = probe
    trainer._make_samplers()
    cal = D.broadcast_object(trainer.ctx, calibrate(trainer, timed=1, extras=False))
    ratio = float(np.prod(old)) / float(np.prod(probe))
    # what one iteration may take for ENOUGH_ITERATIONS, after the chosen patch's calibration (~5 steps) and export
    left = SAFETY * (budget_s - (time.time() - t0)) - 5 * cal.sec_per_iter - 2.0
    want = max(left, 1e-3) / ENOUGH_ITERATIONS
    new = list(D.broadcast_object(trainer.ctx, shrink_for_speed(old, cal.sec_per_iter * ratio / want, floor, divs)))
    candidates[:] = [{"patch_size": old, "modelled_sec_per_iter": round(cal.sec_per_iter * ratio, 4)},
                     {"patch_size": probe, "sec_per_iter": round(cal.sec_per_iter, 4), "probe": True}]
    trainer.patch = new
    trainer._make_samplers()
    if new != old:
        fmt = lambda p: "x".join(map(str, p))  # noqa: E731
        trainer.patch_note = (f"{trainer.patch_note}; then cut to {fmt(new)} for speed under --time-budget "
                              f"{o.time_budget}: a {fmt(probe)} step took {cal.sec_per_iter:.2f} s on this CPU, so "
                              f"{fmt(old)} would take about {cal.sec_per_iter * ratio:.1f} s per iteration; aiming at "
                              f"{ENOUGH_ITERATIONS} iterations")


def _budget_error(DataProblem, o, budget_s: float, shortest: float, n: int, where: str, setup_s: float):
    need = math.ceil(shortest / 60.0)
    err = DataProblem(f"--time-budget {o.time_budget}: only {n} iterations fit at {where}; even {MIN_ITERATIONS} "
                      f"would take about {shortest:.0f} s, {shortest / budget_s:.1f}x the budget (start-up, data "
                      f"preparation and planning took {setup_s:.0f} s of it)", [],
                      f"give a longer --time-budget (at least {need} min), a smaller --patch-size, fewer --filters "
                      "or a smaller batch, or train on a GPU (--device cuda)")
    err.kind = "budget"
    return err


def _resumed_fields(plan_path: str, o, start_iter: int) -> dict:
    """On --resume: the stored count stands; the ETA is the remaining iterations at the calibrated speed."""
    try:
        with open(plan_path, encoding="utf-8") as f:
            stored = json.load(f)
    except (OSError, ValueError):
        return {"time_budget": o.time_budget, "budget_plan": {"note": "resumed; no stored plan"}}
    costs = RunCosts(o.validate_every, o.checkpoint_every, True)
    cal_d = stored.get("calibration", {})
    threads = stored.get("threads")
    if threads and o.num_threads == 0:
        import torch
        torch.set_num_threads(int(threads["chosen"]))  # the thread count the run was planned with
    cal = Calibration([], [], float(stored.get("sec_per_iter", 0.0)), float(cal_d.get("validation_s", 0.0)),
                      float(cal_d.get("checkpoint_s", 0.0)), float(cal_d.get("export_s", 0.0)), 0.0)
    left = costs.loop_seconds(o.iterations, cal) - costs.loop_seconds(start_iter, cal) + costs.finish_seconds(cal)
    note = f"resumed: the {o.iterations} iterations planned for the {stored.get('time_budget')} budget are kept"
    if str(stored.get("time_budget")) != str(o.time_budget):
        note += f" (--time-budget {o.time_budget} now given does not re-plan; pass --iterations to change the count)"
    return {"time_budget": o.time_budget, "time_budget_s": stored.get("time_budget_s"), "eta_s": round(left, 1),
            "sec_per_iter_expected": stored.get("sec_per_iter"),
            "budget_plan": {"planned_iterations": stored.get("planned"), "calibration": cal_d, "note": note,
                            "threads": threads}}
