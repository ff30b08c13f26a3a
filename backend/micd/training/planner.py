"""The planner: data + device + options (+ a few timed steps under `--time-budget`) → one frozen TrainingPlan.

What it decides, in this order (nnU-Net's planner → plans → trainer, here in one process):
1. **The network's strides**: from the checkpoint on `--resume`, from the parent with `--init-from` (its weights
   must fit), else from the preprocessed spacing (thick slices keep the slice axis, data/planning.py).
2. **The patch**: from the checkpoint on `--resume`, `--patch-size` when given, else the median preprocessed shape
   fitted to the device's memory (data/planning.py).
3. **Precision, batch and memory**: the autocast dtype and why; the global batch must divide by the ranks.
4. **Iterations and cadences**: `--iterations`, or on `--resume` the stored plan's count, or the default; validation
   ten times per run unless `--validate-every`; the ramp-up spans its share of the count.
5. **Under `--time-budget`** (a new run), the step is timed on a trainer built from the draft plan, through the small
   interface `Calibratable` below, and that trainer is then thrown away: the run's own trainer is built afresh from the
   final plan, so a budgeted run that planned N iterations trains exactly as `--iterations N` would (tested).
   a. On a CPU with `--num-threads 0`, torch's default thread count and one thread are compared on a probe pass of a
      copy of one student, and the faster is kept (on a busy machine OpenMP threads wait for each other).
   b. On a CPU, with the patch planned and the count not given: one step of a 32^3 probe patch is timed, the step
      time of the memory-planned patch is modelled as proportional to voxels, and when fewer than
      `ENOUGH_ITERATIONS` would fit, the patch is cut (largest axis first, not below 32 per axis) to the largest one
      modelled to give them. GPUs keep the memory-planned patch the spec uses.
   c. Calibration: a warm-up step and up to three timed steps of the real training step (the method's full loss at
      β_max, real patches, the run's device and precision), one validation of the first validation case (scaled by
      voxels to the whole set) and one checkpoint written to disk.
   d. The count: budget.RunCosts.fit of what is left; too small a budget is an error of kind `budget`. With
      `--validate-every 0`, validations are capped at `VALIDATION_SHARE` of the budget.
   On `--resume` nothing is timed: the stored plan's count stands, the ETA is the rest at the calibrated speed.
"""

from __future__ import annotations

import math
import time
from typing import Callable, List, Optional, Protocol, Sequence

import numpy as np
import torch

from micd.data.planning import (ANISOTROPY, estimate_training_bytes, plan_patch_size, plan_strides,
                                shrink_for_speed, structure_extent, thick_slice_note)
from micd.nets.vnet import NetworkConfig
from micd.training import distributed as D
from micd.training.budget import (CALIBRATION_SHARE, ENOUGH_ITERATIONS, MIN_ITERATIONS, OVERRUN_TOLERANCE,
                                  PROBE_SIZE, SAFETY, SPEED_FLOOR, TIMED_STEPS, VALIDATION_SHARE, WARMUP_STEPS,
                                  BudgetPlan, Calibration, RunCosts, budget_error)
from micd.contract import parse_duration
from micd.training.devices import amp_dtype, free_device_bytes, precision_reason
from micd.training.options import DEFAULT_ITERATIONS, TrainOptions
from micd.training.outcome import DataProblem
from micd.training.plan import PLAN_FORMAT, TrainingPlan
from micd.training.run_data import RunData


class Calibratable(Protocol):
    """What the planner may ask of a trainer built from a draft plan (micd.training.trainer.Trainer is one)."""

    @property
    def patch(self) -> List[int]:
        """The patch its steps train on now (smaller than planned after a CUDA out-of-memory retry)."""

    def use_patch(self, patch: Sequence[int]) -> None:
        """Train the next steps on patches of this size."""

    supervised_warmup: bool  # whether the warm-up's steps are supervised steps (costed apart)

    def time_steps(self, n: int, beta: float, supervised: bool = False) -> List[float]:
        """Run `n` real training steps at consistency weight `beta` (`supervised`: the warm-up's steps on the
        labeled batch alone); the seconds of each, device synchronised."""

    def time_validation(self) -> float:
        """Seconds of one validation of the first validation case."""

    def time_checkpoint(self) -> float:
        """Seconds to write one full checkpoint to the run folder's disk (the file is removed again)."""

    def time_probe_pass(self, threads: int, patch: Sequence[int]) -> float:
        """Best seconds of a forward and backward pass of a copy of one student with this many CPU threads."""


LABELED_ONLY = ("supervised",)  # methods that draw no unlabeled patches
TrainerFactory = Callable[[TrainingPlan], Calibratable]
Warn = Callable[[str], None]


def plan_training(o: TrainOptions, data: RunData, device: torch.device, ctx: D.DistContext,
                  resume_state: Optional[dict], stored_plan: Optional[dict], parent, process_t0: float,
                  make_trainer: TrainerFactory, may_resample: bool = True) -> TrainingPlan:
    """The frozen plan of this invocation. `stored_plan`: plan.json's dict on --resume; `parent`: the --init-from
    model (its network fixes the strides); `make_trainer`: builds a trainer for timing steps under a budget.
    A returned plan with `resample_to` asks for the data on that coarser grid (5b): prepare it there and plan again
    with may_resample=False."""
    draft = draft_plan(o, data, device, ctx, resume_state, stored_plan, parent)
    if resume_state is not None:
        return _resumed(draft, o, stored_plan, int(resume_state["iteration"]))
    if not o.time_budget:
        return draft
    may_resample = may_resample and not o.target_spacing and parent is None  # the user's or the parent's grid stays
    return _fit_budget(draft, o, data, device, ctx, process_t0, make_trainer, may_resample)


# ---------------------------------------------------------------------------------------------------- the draft
def draft_plan(o: TrainOptions, data: RunData, device: torch.device, ctx: D.DistContext,
               resume_state: Optional[dict], stored_plan: Optional[dict], parent) -> TrainingPlan:
    """Everything that needs no timing."""
    notes = list(data.notes)
    n_classes = data.channels.count
    if resume_state is not None:
        net = NetworkConfig.from_dict(resume_state["network"])
        if net.out_channels != n_classes:
            raise DataProblem(f"the checkpoint's network has {net.out_channels} outputs, this micd trains {n_classes} "
                              "for these labels (one per label, sparse values packed)", [],
                              "a run started by an older micd cannot be resumed here: start a new run "
                              "(--init-from does not help either, the output layer differs)")
    else:
        strides = _strides(data, parent, notes)
        net = NetworkConfig(out_channels=n_classes, filters=o.filters, dropout=o.dropout,
                            normalization=o.normalization, strides=strides)
    amp = amp_dtype(o.amp, device)
    patch, patch_note = _patch(o, data, device, net, amp, resume_state)
    world = ctx.world_size
    if o.batch_labeled % world or (o.method not in LABELED_ONLY and o.batch_unlabeled % world):
        raise DataProblem(f"the global batch ({o.batch_labeled} labeled + {o.batch_unlabeled} unlabeled) must divide "
                          f"by the {world} ranks", [], "change --batch-labeled/--batch-unlabeled")
    need = estimate_training_bytes(tuple(patch), net.filters, o.batch_labeled + o.batch_unlabeled, n_classes,
                                   2 if amp else 4)
    free = free_device_bytes(device)
    warnings = []
    if free is not None and need > free:
        warnings.append(f"the patch {patch} with batch {o.batch_labeled}+{o.batch_unlabeled} needs about "
                        f"{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB are free on {device}; expect an out-of-memory "
                        "retry with a smaller patch")
    stored_n = _stored(stored_plan, "iterations")
    n = int(o.iterations if o.iterations is not None else stored_n if stored_n is not None else DEFAULT_ITERATIONS)
    precision, why = precision_reason(o.amp, device)
    return TrainingPlan(
        iterations=n, patch_size=tuple(patch), patch_note=patch_note, network=net.to_dict(),
        threads=int(o.num_threads), precision=precision, precision_reason=why,
        validate_every=_validate_every(o, n, stored_plan), checkpoint_every=int(o.checkpoint_every),
        rampup_iterations=_ramp(o, n)[0], warmup_iterations=_ramp(o, n)[1],
        batch_labeled=o.batch_labeled, batch_unlabeled=o.batch_unlabeled,
        memory_estimate_gib=round(need / 2 ** 30, 2), free_memory_gib=None if free is None else round(free / 2 ** 30, 2),
        notes=tuple(notes), warnings=tuple(warnings))


def _stored(stored_plan: Optional[dict], key: str):
    """A value of a stored TrainingPlan (plan.json of older runs held only the budget's record: not used here)."""
    return stored_plan.get(key) if stored_plan and stored_plan.get("format") == PLAN_FORMAT else None


def _validate_every(o: TrainOptions, n: int, stored_plan: Optional[dict]) -> int:
    if o.validate_every > 0:
        return int(o.validate_every)
    if _stored(stored_plan, "iterations") == n and _stored(stored_plan, "validate_every"):
        return int(_stored(stored_plan, "validate_every"))  # --resume: the cadence the plan chose for this count
    return max(1, n // 10)


def _ramp(o: TrainOptions, n: int):
    warm = o.warmup_fraction * n
    return round(o.rampup_fraction * (n - warm), 1), round(warm, 1)


def _strides(data: RunData, parent, notes: List[str]) -> Optional[list]:
    if parent is not None:
        return parent.network_config.strides
    zyx = list(reversed([float(v) for v in data.plan.target_spacing]))
    strides = plan_strides(zyx)
    if strides is not None:
        notes.append(thick_slice_note(zyx, strides))
    return strides


def _patch(o: TrainOptions, data: RunData, device: torch.device, net: NetworkConfig, amp, resume_state):
    if resume_state is not None:
        return [int(v) for v in resume_state["patch_size"]], "restored from the checkpoint"
    divs = net.divisors  # (16, 16, 16), or e.g. (4, 16, 16) for thick slices
    if o.patch_size:
        p = [int(v) for v in o.patch_size]
        if any(v % k for v, k in zip(p, divs)):
            need = "16" if set(divs) == {16} else " ".join(map(str, divs)) + " along z y x"
            raise DataProblem(f"--patch-size {' '.join(map(str, p))}: every size must be a multiple of {need} "
                              "(the VNet downsamples four times)", [])
        return p, "given by --patch-size"
    shapes = np.array([np.asarray(c.image.shape) for c in data.labeled])
    patch, note = plan_patch_size(tuple(int(v) for v in np.median(shapes, 0)), free_device_bytes(device), o.filters,
                                  o.batch_labeled + o.batch_unlabeled, divisor=divs, n_classes=net.out_channels,
                                  bytes_per_value=2 if amp else 4)
    return list(patch), note


# ---------------------------------------------------------------------------------------------------- --resume
def _resumed(draft: TrainingPlan, o: TrainOptions, stored: Optional[dict], start_iter: int) -> TrainingPlan:
    """The stored count stands; with a time budget, the ETA is the remaining iterations at the calibrated speed."""
    budget = _stored_budget(stored)
    bp = budget.get("budget_plan", {})
    threads = bp.get("threads")
    plan = draft
    if threads and o.num_threads == 0:
        plan = plan.with_changes(threads=int(threads["chosen"]))  # the thread count the run was planned with
    if not o.time_budget:
        return plan
    if not budget:
        return plan.with_changes(budget={"time_budget": o.time_budget, "budget_plan": {"note": "resumed; no stored plan"}})
    cal_d = bp.get("calibration", {})
    spi = float(budget.get("sec_per_iter_expected") or 0.0)
    cal = Calibration([], [], spi, float(cal_d.get("validation_s", 0.0)), float(cal_d.get("checkpoint_s", 0.0)),
                      float(cal_d.get("export_s", 0.0)), 0.0)
    costs = RunCosts(plan.validate_every, plan.checkpoint_every, True)
    left = costs.loop_seconds(plan.iterations, cal) - costs.loop_seconds(start_iter, cal) + costs.finish_seconds(cal)
    was = budget.get("time_budget")
    note = f"resumed: the {plan.iterations} iterations planned for the {was} budget are kept"
    if str(was) != str(o.time_budget):
        note += f" (--time-budget {o.time_budget} now given does not re-plan; pass --iterations to change the count)"
    return plan.with_changes(budget={
        "time_budget": o.time_budget, "time_budget_s": budget.get("time_budget_s"), "eta_s": round(left, 1),
        "sec_per_iter_expected": budget.get("sec_per_iter_expected"),
        "budget_plan": {**bp, "note": note}})


def _stored_budget(stored: Optional[dict]) -> dict:
    """The budget fields of a stored plan; plan.json of older runs was the budget's record itself."""
    if not stored:
        return {}
    if stored.get("format") == PLAN_FORMAT:
        return dict(stored.get("budget") or {})
    try:
        return BudgetPlan(**{k: v for k, v in stored.items() if k in BudgetPlan.__dataclass_fields__}).start_fields()
    except TypeError:
        return {}


# ---------------------------------------------------------------------------------------------------- --time-budget
def _fit_budget(draft: TrainingPlan, o: TrainOptions, data: RunData, device: torch.device, ctx: D.DistContext,
                t0: float, make_trainer: TrainerFactory, may_resample: bool) -> TrainingPlan:
    budget_s = parse_duration(o.time_budget)
    given = o.iterations is not None
    costs = RunCosts(o.validate_every, o.checkpoint_every, bool(data.validation))
    trainer = make_trainer(draft)
    threads = _choose_threads(trainer, o, device, draft.patch)
    candidates: list = []
    patch_note = draft.patch_note
    if not given and not o.patch_size and device.type == "cpu":
        patch_note, coarser, warning = _choose_patch_for_speed(trainer, o, ctx, budget_s, t0, candidates, draft,
                                                               data, may_resample)
        if coarser is not None:
            return draft.with_changes(resample_to=coarser, patch_note=patch_note)
        if warning:
            draft = draft.with_changes(warnings=draft.warnings + (warning,))
    warm_share = o.warmup_fraction if trainer.supervised_warmup else 0.0
    cal = D.broadcast_object(ctx, calibrate(trainer, ctx, data, budget_s, o.beta_max, export_last=o.export_last,
                                            supervised_share=warm_share))
    patch = list(trainer.patch)
    candidates.append({"patch_size": patch, "sec_per_iter": round(cal.sec_per_iter, 4)})
    del trainer  # the run's trainer is built afresh from the plan
    if o.validate_every == 0 and cal.validation_s > 0:
        # validating ten times must not eat the budget: at most VALIDATION_SHARE of it (the last one always runs)
        costs.max_validations = max(1, int(VALIDATION_SHARE * budget_s / cal.validation_s))
    elapsed = time.time() - t0
    available = budget_s - elapsed - costs.finish_seconds(cal)
    where = (f"{cal.sec_per_iter:.2f} s per iteration on {device} (patch {'x'.join(map(str, patch))}, "
             f"batch {o.batch_labeled}+{o.batch_unlabeled}, {o.filters} filters)")
    if cal.supervised_step_s is not None:
        where += (f"; the first {o.warmup_fraction:.0%} of the iterations are supervised warm-up steps of "
                  f"{cal.supervised_step_s:.2f} s, the rest full steps of {cal.full_step_s:.2f} s")
    warnings = list(draft.warnings)
    if given:
        n, note = draft.iterations, f"--iterations {draft.iterations} given: the budget only sets the ETA"
    else:
        n = costs.fit(SAFETY * available, cal)
        note = f"{n} iterations fit the {o.time_budget} budget at {where}"
        if n < MIN_ITERATIONS:
            shortest = elapsed + costs.loop_seconds(MIN_ITERATIONS, cal) + costs.finish_seconds(cal)
            if shortest > OVERRUN_TOLERANCE * budget_s:
                raise budget_error(o, budget_s, shortest, n, where, elapsed - cal.spent_s)
            note = (f"only {n} iterations fit the {o.time_budget} budget at {where}; running the minimum of "
                    f"{MIN_ITERATIONS}, about {shortest - budget_s:.0f} s over the budget")
            n = MIN_ITERATIONS
            warnings.append(note)
    eta = costs.loop_seconds(n, cal) + costs.finish_seconds(cal)
    if given and elapsed + eta > budget_s:
        warnings.append(f"--iterations {n} will take about {elapsed + eta:.0f} s, over the {o.time_budget} budget "
                        f"({where}); leave out --iterations to let the budget set the count")
    every = max(1, n // 10) if o.validate_every == 0 else o.validate_every
    if costs.max_validations and costs.every(n) != max(1, n // 10):
        every = costs.every(n)
        note += f"; validation every {every} iterations instead of ten times, as one takes {cal.validation_s:.1f} s"
    record = BudgetPlan(o.time_budget, budget_s, n, not given, eta, elapsed + eta, cal.sec_per_iter,
                        {**cal.to_dict(), "setup_s": round(elapsed - cal.spent_s, 2), "patch_candidates": candidates},
                        note, threads)
    chosen = threads["chosen"] if threads else draft.threads
    return draft.with_changes(iterations=n, patch_size=tuple(patch), patch_note=patch_note, threads=int(chosen),
                              validate_every=every, rampup_iterations=_ramp(o, n)[0], warmup_iterations=_ramp(o, n)[1],
                              warnings=tuple(warnings), budget=record.start_fields())


def calibrate(trainer: Calibratable, ctx: D.DistContext, data: Optional[RunData], budget_s: float, beta: float,
              timed: int = TIMED_STEPS, extras: bool = True, export_last: bool = False,
              supervised_share: float = 0.0) -> Calibration:
    """Time the real step at consistency weight `beta` (up to `timed` steps after the warm-up) and, with `extras`, a
    validation and a checkpoint. With a `supervised_share` of the iterations in a warm-up of supervised steps, those
    are timed too, and an iteration costs the mix of the two."""
    t_cal = time.time()
    warm = trainer.time_steps(WARMUP_STEPS, beta)
    # Slow steps on a short budget: fewer timed steps (at least one). The count comes from the warm-up time averaged
    # over ranks, so that every rank takes the same number of steps (their all-reduces must pair up).
    first = D.mean_across_ranks(ctx, {"w": warm[-1]})["w"]
    n_timed = max(1, min(timed, int(CALIBRATION_SHARE * budget_s / max(first, 1e-6))))
    times = trainer.time_steps(n_timed, beta)
    spi = full_s = float(np.mean(times))  # the mean: a busy machine makes some steps much slower than the median
    supervised_s = None
    if supervised_share > 0:
        warm += trainer.time_steps(WARMUP_STEPS, 0.0, supervised=True)
        supervised_times = trainer.time_steps(n_timed, 0.0, supervised=True)
        times += supervised_times
        supervised_s = float(np.mean(supervised_times))
        spi = supervised_share * supervised_s + (1.0 - supervised_share) * full_s
    val_s = ckpt_s = 0.0
    if extras and data.validation and ctx.is_main:
        voxels = [float(np.prod(c.image.shape)) for c in data.validation]
        val_s = trainer.time_validation() * sum(voxels) / max(voxels[0], 1.0)
    if extras and ctx.is_main:
        ckpt_s = trainer.time_checkpoint()
    export_s = (2.0 if export_last else 1.0) * ckpt_s + 0.5  # safetensors of the networks, JSON, rename
    D.barrier(ctx)
    return Calibration(warm, times, spi, val_s, ckpt_s, export_s, time.time() - t_cal, full_s, supervised_s)


def _choose_threads(trainer: Calibratable, o: TrainOptions, device: torch.device, patch: List[int]) -> Optional[dict]:
    """On a CPU with --num-threads 0: torch's default thread count against one thread on a probe pass; the faster is
    kept (and set, so the calibration measures it). On a busy machine one thread was 40x faster here."""
    default = torch.get_num_threads()
    if device.type != "cpu" or o.num_threads > 0 or default <= 1:
        return None
    probe = [min(int(v), PROBE_SIZE) for v in patch]
    times = {default: trainer.time_probe_pass(default, probe), 1: trainer.time_probe_pass(1, probe)}
    chosen = 1 if times[1] < 0.8 * times[default] else default
    torch.set_num_threads(chosen)
    return {"chosen": chosen, "probe_s": {str(k): round(v, 4) for k, v in times.items()},
            "why": (f"{chosen} thread(s): a probe pass took {times[chosen]:.3f} s with {chosen} and "
                    f"{times[1 if chosen != 1 else default]:.3f} s with {1 if chosen != 1 else default}")}


def _choose_patch_for_speed(trainer: Calibratable, o: TrainOptions, ctx: D.DistContext, budget_s: float, t0: float,
                            candidates: list, draft: TrainingPlan, data: RunData, may_resample: bool):
    """Time one step of a PROBE_SIZE^3 patch, model the others as proportional to their voxels (which overestimates
    larger patches, as part of a step does not grow with the patch), and train on the largest patch modelled to give
    ENOUGH_ITERATIONS in the budget, but never one smaller than the labeled structures: when even a patch that just
    holds them is too slow, trade resolution for field of view (nnU-Net's low-resolution idea) and ask for the data
    on a coarser grid (`may_resample`), else keep the field of view and warn. Returns (the patch note, None or the
    coarser spacing x y z in mm, None or a warning)."""
    old = draft.patch
    divs = NetworkConfig.from_dict(draft.network).divisors
    extent = structure_extent([c.label for c in data.labeled if c.label is not None])
    fov = [min(int(p), -(-int(e) // int(k)) * int(k)) for p, e, k in zip(old, extent, divs)]  # rounded up, capped
    floor = [max(min(int(v), SPEED_FLOOR), f) for v, f in zip(old, fov)]
    probe = list(shrink_for_speed(old, float("inf"), [min(int(v), PROBE_SIZE) for v in old], divs))
    if probe == old:
        return draft.patch_note, None, None
    trainer.use_patch(probe)
    cal = D.broadcast_object(ctx, calibrate(trainer, ctx, None, budget_s, o.beta_max, timed=1, extras=False))
    ratio = float(np.prod(old)) / float(np.prod(probe))
    # what one iteration may take for ENOUGH_ITERATIONS, after the chosen patch's calibration (~5 steps) and export
    left = SAFETY * (budget_s - (time.time() - t0)) - 5 * cal.sec_per_iter - 2.0
    want = max(left, 1e-3) / ENOUGH_ITERATIONS
    affordable = float(np.prod(probe)) * want / max(cal.sec_per_iter, 1e-6)  # voxels per patch that give them
    fmt = lambda p: "x".join(map(str, p))  # noqa: E731
    candidates[:] = [{"patch_size": old, "modelled_sec_per_iter": round(cal.sec_per_iter * ratio, 4)},
                     {"patch_size": probe, "sec_per_iter": round(cal.sec_per_iter, 4), "probe": True}]
    timing = (f"a {fmt(probe)} step took {cal.sec_per_iter:.2f} s on this CPU, so {fmt(old)} would take about "
              f"{cal.sec_per_iter * ratio:.1f} s per iteration; aiming at {ENOUGH_ITERATIONS} iterations")
    if float(np.prod(floor)) > affordable:
        coarser = _coarser_spacing(data, floor, extent, affordable) if may_resample else None
        if coarser is not None:
            spacing, factor = coarser
            return (f"resampled to {' x '.join(f'{v:g}' for v in spacing)} mm (x, y, z) for --time-budget "
                    f"{o.time_budget}: the labeled structures span {fmt(extent)} voxels at "
                    f"{' x '.join(f'{v:g}' for v in data.plan.target_spacing)} mm, and a patch that holds them would "
                    f"give too few iterations ({timing}); so the grid is {factor:.2f}x coarser (at most as far as "
                    f"keeps the structures {MIN_STRUCTURE_VOXELS} voxels across and thick slices thick): a coarser "
                    "grid before a field of view smaller than the structures"), spacing, None
    new = list(D.broadcast_object(ctx, shrink_for_speed(old, cal.sec_per_iter * ratio / want, floor, divs)))
    trainer.use_patch(new)
    warning = None
    if float(np.prod(new)) > affordable and any(f > min(int(v), SPEED_FLOOR) for v, f in zip(old, fov)):
        warning = (f"the patch stays at least {fmt(floor)} voxels, as the labeled structures span {fmt(extent)}, so "
                   f"fewer than {ENOUGH_ITERATIONS} iterations fit --time-budget {o.time_budget}: give a longer "
                   "budget or a coarser --target-spacing for a better model")
    if new == old:
        return draft.patch_note, None, warning
    return (f"{draft.patch_note}; then cut to {fmt(new)} for speed under --time-budget {o.time_budget}: {timing}",
            None, warning)


MAX_COARSENING = 4.0  # isotropic data: a grid at most this many times coarser per axis than the data's own
MIN_STRUCTURE_VOXELS = 24  # a coarser grid keeps the labeled structures at least this many voxels across


def _coarser_spacing(data: RunData, floor: Sequence[int], extent: Sequence[int], affordable: float):
    """(x y z mm, factor): the grid on which a patch holding the structures has about `affordable` voxels, coarsening
    the finer axes only: thick slices keep their slice spacing and stay thick (in-plane at most 1/ANISOTROPY of it);
    other data at most MAX_COARSENING times coarser; on no coarsened axis may the structures (`extent`, voxels)
    shrink below MIN_STRUCTURE_VOXELS. None when less than 1.25x would do."""
    xyz = [float(v) for v in data.plan.target_spacing]
    zyx = list(reversed(xyz))
    thick = max(zyx) >= ANISOTROPY * min(zyx)
    axes = [a for a in range(3) if not thick or zyx[a] < max(zyx) / 2]
    factor = (float(np.prod(floor)) / max(affordable, 1.0)) ** (1.0 / len(axes))
    # thick slices stay thick (the network keeps not downsampling the slice axis); others at most MAX_COARSENING
    factor = min(factor, max(zyx) / ANISOTROPY / max(zyx[a] for a in axes) if thick else MAX_COARSENING,
                 min(extent[a] for a in axes) / MIN_STRUCTURE_VOXELS)
    if factor < 1.25:
        return None
    factor = math.floor(factor * 20) / 20  # to 0.05, down: never past a cap
    new_zyx = [v * factor if a in axes else v for a, v in enumerate(zyx)]
    return tuple(round(v, 4) for v in reversed(new_zyx)), factor
