"""Learning-rate and consistency-weight schedules (per iteration)."""

from __future__ import annotations

import math

from micd.methods.base import gaussian_rampup


def poly_lr(base_lr: float, it: int, total: int, power: float = 0.9) -> float:
    """lr · (1 − t/T)^power, as DHC's poly_lr (there per epoch, here per iteration)."""
    return base_lr * (1.0 - min(it, total) / max(total, 1)) ** power


def learning_rate(schedule: str, base_lr: float, it: int, total: int, power: float) -> float:
    return poly_lr(base_lr, it, total, power) if schedule == "poly" else base_lr


def warmup_steps(total: int, warmup_fraction: float) -> int:
    """How many steps the supervised warm-up takes: those from an `it` below `warmup_fraction` of the run."""
    return math.ceil(warmup_fraction * total)


def in_warmup(it: int, total: int, warmup_fraction: float) -> bool:
    """Whether the step from `it` is one of the supervised warm-up's (the first `warmup_fraction` of the run)."""
    return it < warmup_steps(total, warmup_fraction)


def consistency_weight(it: int, total: int, beta_max: float, rampup_fraction: float,
                       warmup_fraction: float = 0.0) -> float:
    """β(t) of Eq. 7 with the ramp spanning `rampup_fraction` of the run; with a supervised warm-up, β is 0 for the
    first `warmup_fraction` of the run and the ramp starts after it."""
    if in_warmup(it, total, warmup_fraction):
        return 0.0
    start = warmup_fraction * total
    return gaussian_rampup(it - start, rampup_fraction * (total - start), beta_max)
