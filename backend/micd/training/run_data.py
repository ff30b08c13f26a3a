"""The run's data: the dataset read, checked, split and preprocessed into the cache, ready for the planner and the
trainer. Rank 0 preprocesses; the other ranks wait for it, then read the finished cache."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from micd.data.label_channels import LabelChannels
from micd.training import distributed as D
from micd.training.options import TrainOptions
from micd.training.outcome import DataProblem


@dataclass(frozen=True)
class RunData:
    plan: object  # the preprocessing plan (micd.data.preprocess.PreprocessPlan)
    labels: Dict[int, str]
    labeled: list
    unlabeled: list
    validation: list
    notes: tuple
    spec_counts: Dict[str, int]

    @property
    def channels(self) -> LabelChannels:
        """Output channel per label value; the cached label maps hold channel indices (data/label_channels.py)."""
        return LabelChannels.for_labels(self.labels)


def prepare_run_data(o: TrainOptions, run_dir: str, ctx: D.DistContext, resumed_preprocessing: Optional[dict],
                     warn: Callable[[str, str], None], planned_spacing: Optional[tuple] = None,
                     planned_note: str = "") -> RunData:
    """Read and check `--dataset`, hold out validation cases, and preprocess every case into the cache.
    `resumed_preprocessing`: the checkpoint's preprocessing plan on --resume (kept, not re-planned)."""
    from micd.data.cache import make_plan, prepare_cases
    from micd.data.dataset import DatasetError, load_dataset_spec, split_validation
    from micd.data.preprocess import PreprocessPlan
    from micd.data.validate import validate_dataset

    if not o.dataset:
        raise DataProblem("no --dataset given", [], "pass --dataset FILE.json or an MSD folder")
    try:
        spec = load_dataset_spec(o.dataset)
    except DatasetError as e:
        raise DataProblem(f"dataset {o.dataset} is not usable", [p.__dict__ for p in e.problems]) from None
    report = validate_dataset(spec)
    for w in report.warnings:
        warn(w.reason, w.file)
    if not report.ok:
        raise DataProblem(f"{len(report.problems)} problem(s) in the dataset", [p.__dict__ for p in report.problems])
    notes: List[str] = list(spec.notes)
    if o.val_fraction > 0 or spec.validation:
        spec, note = split_validation(spec, o.seed, o.val_fraction, max_cases=20)
    else:
        note = "validation: none (--val-fraction 0); the model keeps the weights of the last iteration"
    notes.append(note)
    if resumed_preprocessing is not None:
        plan = PreprocessPlan.from_dict(resumed_preprocessing)
    else:
        overrides = {}
        if planned_spacing is not None:  # the planner's coarser grid for a time budget (planner.py, 5b)
            overrides["target_spacing"] = tuple(planned_spacing)
        elif o.target_spacing:
            overrides["target_spacing"] = tuple(o.target_spacing)
        if o.modality != "auto":
            overrides["modality"] = o.modality
        if o.ct_window:
            overrides["ct_window"] = tuple(o.ct_window)
        plan, plan_notes = make_plan(spec, overrides)
        notes += [planned_note] if planned_spacing is not None else list(plan_notes)
    cache = o.cache_dir or os.path.join(run_dir, "cache")
    labels = dict(spec.labels)

    def prepare_all() -> dict:
        return {name: prepare_cases(cases, plan, cache, labels) for name, cases in
                (("labeled", spec.labeled), ("validation", spec.validation), ("unlabeled", spec.unlabeled))}

    groups = prepare_all() if ctx.is_main else {}
    D.barrier(ctx)
    if not ctx.is_main:
        groups = prepare_all()
    if not groups["unlabeled"]:
        notes.append("no unlabeled cases: the labeled images also serve as unlabeled input")
    counts = {"labeled": len(groups["labeled"]), "unlabeled": len(groups["unlabeled"]),
              "validation": len(groups["validation"])}
    return RunData(plan, labels, groups["labeled"], groups["unlabeled"] or groups["labeled"], groups["validation"],
                   tuple(notes), counts)
