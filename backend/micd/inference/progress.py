"""Progress of sliding-window prediction: how many windows a plan runs, and a predictor wrapper that counts them.

`count_windows` follows `sliding.segment_grid`'s slabs and MONAI's window placement (`memory.n_windows`), so the
total is known before the first window runs; `CountingPredictor` sees every batch of windows MONAI hands to the
network and reports windows done, elapsed time and an ETA, at most every `min_interval_s` and once at the end.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional, Sequence

import torch

from micd.inference.memory import AccumulationPlan, n_windows


def count_windows(shape: Sequence[int], roi: Sequence[int], plan: AccumulationPlan, overlap: float) -> int:
    """Windows `segment_grid` runs for a grid of `shape` (z, y, x) under `plan`."""
    ax, keep, margin = plan.slab_axis, plan.slab_length, plan.margin
    others = math.prod(n_windows(int(shape[a]), int(roi[a]), overlap) for a in range(3) if a != ax)
    total = 0
    for lo in range(0, int(shape[ax]), keep):
        hi = min(int(shape[ax]), lo + keep)
        a, b = max(0, lo - margin), min(int(shape[ax]), hi + margin)
        total += n_windows(b - a, int(roi[ax]), overlap) * others
    return total


class PredictionCancelled(Exception):
    """The caller asked to stop (`micd serve`'s cancel); raised before the next batch of windows."""


def stoppable(predictor: Callable[[torch.Tensor], torch.Tensor],
              should_stop: Callable[[], bool]) -> Callable[[torch.Tensor], torch.Tensor]:
    """`predictor`, asking `should_stop()` before each batch of windows."""
    def run(x: torch.Tensor) -> torch.Tensor:
        if should_stop():
            raise PredictionCancelled()
        return predictor(x)
    return run


class CountingPredictor:
    """Calls `predictor` and reports {windows_done, windows_total, fraction, elapsed_s, eta_s} to `report`."""

    def __init__(self, predictor: Callable[[torch.Tensor], torch.Tensor], total: int,
                 report: Callable[[dict], None], min_interval_s: float = 0.5):
        self.predictor = predictor
        self.total = max(1, int(total))
        self.report = report
        self.min_interval_s = min_interval_s
        self.done = 0
        self.t0: Optional[float] = None
        self._last = 0.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.t0 is None:
            self.t0 = time.time()
        out = self.predictor(x)
        self.done += int(x.shape[0])
        now = time.time()
        if now - self._last >= self.min_interval_s and self.done < self.total:
            self._last = now
            self.report(self.state(now))
        return out

    def state(self, now: Optional[float] = None) -> dict:
        now = time.time() if now is None else now
        elapsed = now - (self.t0 or now)
        done = min(self.done, self.total)
        eta = elapsed * (self.total - done) / done if done else None
        return {"windows_done": done, "windows_total": self.total, "fraction": round(done / self.total, 4),
                "elapsed_s": round(elapsed, 2), "eta_s": None if eta is None else round(eta, 1)}

    def finish(self) -> None:
        """The final report (100 %), whatever the throttle let through before."""
        self.done = max(self.done, self.total)
        self.report(self.state())
