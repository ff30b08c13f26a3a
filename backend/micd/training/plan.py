"""The training plan: everything decided before the first step, frozen, written once to `RUN_DIR/plan.json`.

The planner (planner.py) derives it from the data, the device, the options and, under `--time-budget`, a few timed
steps; the Trainer (trainer.py) takes it in its constructor and only runs it. What can still change while training
runs is the Trainer's own state (a CUDA out-of-memory retry trains on a smaller patch and says so in a `retry`
event); the plan stays what was decided.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from typing import List, Optional, Tuple

from micd.atomicfile import write_json
from micd.contract import PLAN_FILE

PLAN_FORMAT, PLAN_VERSION = "micd-plan", 1


@dataclass(frozen=True)
class TrainingPlan:
    iterations: int
    patch_size: Tuple[int, int, int]  # z, y, x voxels of the preprocessed grid
    patch_note: str  # why this patch, in words
    network: dict  # NetworkConfig.to_dict(): filters, normalization, dropout, outputs and the planned strides
    threads: int  # torch CPU threads (0: torch's default)
    precision: str  # "fp32" | "bf16" | "fp16"
    precision_reason: str
    validate_every: int  # iterations between validations (always also at the last one)
    checkpoint_every: int
    rampup_iterations: float  # the Gaussian ramp-up of the unlabeled terms spans these iterations ...
    warmup_iterations: float  # ... after a supervised warm-up of these (0: none)
    batch_labeled: int
    batch_unlabeled: int
    memory_estimate_gib: float
    free_memory_gib: Optional[float]
    notes: Tuple[str, ...] = ()  # reported by the `start` event
    warnings: Tuple[str, ...] = ()  # reported as `warning` events before the `start` event
    budget: dict = field(default_factory=dict)  # --time-budget: the `start` event's budget fields (empty without)
    # set only on a plan that asks for the data on a coarser grid first (x, y, z mm; planner.py 5b): the session
    # prepares the data there and plans again; a final plan never has it
    resample_to: Optional[Tuple[float, float, float]] = None

    @property
    def patch(self) -> List[int]:
        return [int(v) for v in self.patch_size]

    def with_changes(self, **changes) -> "TrainingPlan":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["patch_size"], d["notes"], d["warnings"] = list(self.patch_size), list(self.notes), list(self.warnings)
        return {"format": PLAN_FORMAT, "version": PLAN_VERSION, **d}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainingPlan":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known["patch_size"] = tuple(int(v) for v in known["patch_size"])
        known["notes"], known["warnings"] = tuple(known.get("notes", ())), tuple(known.get("warnings", ()))
        return cls(**known)

    def start_fields(self) -> dict:
        """The plan's part of the `start` event (micd.events documents the names)."""
        return {"iterations": self.iterations, "patch_size": self.patch, "patch_plan": self.patch_note,
                "memory_estimate_gib": self.memory_estimate_gib, "free_memory_gib": self.free_memory_gib,
                "batch_size": {"labeled": self.batch_labeled, "unlabeled": self.batch_unlabeled},
                "precision": self.precision, "precision_reason": self.precision_reason,
                "validate_every": self.validate_every, "checkpoint_every": self.checkpoint_every,
                "rampup_iterations": self.rampup_iterations, "warmup_iterations": self.warmup_iterations,
                **self.budget}


def write_plan(run_dir: str, plan: TrainingPlan) -> None:
    write_json(os.path.join(run_dir, PLAN_FILE), plan.to_dict())


def read_plan(run_dir: str) -> Optional[dict]:
    """The stored plan's dict: a TrainingPlan's, or the budget record older runs kept in plan.json (no "format"); None
    when there is none or it cannot be read."""
    try:
        with open(os.path.join(run_dir, PLAN_FILE), encoding="utf-8") as f:
            stored = json.load(f)
    except (OSError, ValueError):
        return None
    return stored if isinstance(stored, dict) else None
