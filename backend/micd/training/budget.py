"""`micd train --time-budget 45m`: the arithmetic of a time budget, from a few timed steps to an iteration count.

The planner (planner.py) times the real step and asks these classes what fits:
- `Calibration`: what the timed steps measured (seconds per iteration, one validation, one checkpoint, the export).
- `RunCosts`: what the loop does as a function of the iteration count (validations, periodic checkpoints), and
  `fit`: the largest count whose estimate fits the time left. The budget runs from the start of the process; what is
  left after calibration pays first for the final checkpoint and the export, then for N iterations with their
  validations and checkpoints, N the largest count whose estimate fits `SAFETY` of that time.
- `budget_error`: when not even `MIN_ITERATIONS` end within `OVERRUN_TOLERANCE` x the budget, an `error` of kind
  `budget` (exit 2) that says how long the shortest run takes and what to change.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import List, Optional

from micd import proctime
from micd.training.outcome import DataProblem

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
    full_step_s: Optional[float] = None  # the method's step (sec_per_iter without a warm-up of supervised steps)
    supervised_step_s: Optional[float] = None  # a warm-up's supervised step, when the run has such a warm-up

    # sec_per_iter mixes the two kinds by their share of the iterations; step_s holds the full steps' times, then the
    # supervised ones'

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: ([round(x, 4) for x in v] if isinstance(v, list) else v if v is None else round(v, 4))
                for k, v in d.items()}


@dataclass
class RunCosts:
    """What the loop does as a function of the iteration count (mirrors Trainer.train)."""
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
    threads: Optional[dict] = None  # CPU threads chosen by the planner's probe (None: as given or torch's default)

    def start_fields(self) -> dict:
        return {"time_budget": self.time_budget, "time_budget_s": self.time_budget_s, "eta_s": round(self.eta_s, 1),
                "expected_total_s": round(self.expected_total_s, 1), "sec_per_iter_expected": round(self.sec_per_iter, 4),
                "budget_plan": {"planned_iterations": self.planned, "calibration": self.calibration,
                                "note": self.note, "threads": self.threads}}


def budget_error(o, budget_s: float, shortest: float, n: int, where: str, setup_s: float):
    need = math.ceil(shortest / 60.0)
    err = DataProblem(f"--time-budget {o.time_budget}: only {n} iterations fit at {where}; even {MIN_ITERATIONS} "
                      f"would take about {shortest:.0f} s, {shortest / budget_s:.1f}x the budget (start-up, data "
                      f"preparation and planning took {setup_s:.0f} s of it)", [],
                      f"give a longer --time-budget (at least {need} min), a smaller --patch-size, fewer --filters "
                      "or a smaller batch, or train on a GPU (--device cuda)", kind="budget")
    return err
