"""The planner decides through the trainer's small public interface (planner.Calibratable), so a fake trainer with
known step times gives a plan whose every figure can be checked; the options and the plan are frozen."""

import dataclasses
import os
import time

import numpy as np
import pytest
import torch

from micd.training import distributed as D
from micd.training.budget import MIN_ITERATIONS, SAFETY, Calibration, RunCosts
from micd.training.options import TrainOptions
from micd.training.outcome import DataProblem
from micd.training.plan import TrainingPlan, read_plan, write_plan
from micd.training.planner import calibrate, plan_training
from micd.training.run_data import prepare_run_data
from realdata import write_dataset


SUPERVISED_SHARE_OF_STEP = 0.25


class FakeTrainer:
    """A Calibratable whose step takes `sec_per_voxel` x the patch's voxels (as the planner models it)."""

    def __init__(self, plan: TrainingPlan, sec_per_voxel: float, supervised_warmup: bool = False):
        self.supervised_warmup = supervised_warmup
        self._patch = plan.patch
        self.sec_per_voxel = sec_per_voxel
        self.patches_used = []
        self.threads_probed = []

    @property
    def patch(self):
        return list(self._patch)

    def use_patch(self, patch):
        self._patch = [int(v) for v in patch]
        self.patches_used.append(self.patch)

    def time_steps(self, n, beta, supervised=False):
        voxels = self._patch[0] * self._patch[1] * self._patch[2]
        return [self.sec_per_voxel * voxels * (SUPERVISED_SHARE_OF_STEP if supervised else 1.0)] * n

    def time_validation(self):
        return 0.5

    def time_checkpoint(self):
        return 0.2

    def time_probe_pass(self, threads, patch):
        self.threads_probed.append(threads)
        return 0.1 if threads == 1 else 1.0  # a busy machine: one thread wins


@pytest.fixture(scope="module")
def data(tmp_path_factory, shared_data):
    folder = tmp_path_factory.mktemp("plan")
    ds = write_dataset(folder, 2, 1, 1)
    o = TrainOptions(dataset=ds, out=os.path.join(folder, "run"), device="cpu")
    return o, prepare_run_data(o, o.out, D.DistContext(), None, lambda m, f: None)


def _plan(o, data, sec_per_voxel, built, supervised_warmup=False):
    def make(plan):
        built.append(FakeTrainer(plan, sec_per_voxel, supervised_warmup))
        return built[-1]
    return plan_training(o, data, torch.device("cpu"), D.DistContext(), None, None, None, time.time(), make)


def test_without_a_budget_nothing_is_timed_and_the_plan_is_the_draft(data):
    o, d = data
    built = []
    plan = _plan(dataclasses.replace(o, iterations=200), d, 1e-6, built)
    assert built == [] and plan.iterations == 200 and plan.validate_every == 20 and plan.budget == {}
    assert plan.patch == [48, 64, 48] and "median preprocessed shape" in plan.patch_note
    assert plan.rampup_iterations == 200 and plan.warmup_iterations == 0


def test_a_budget_plan_follows_the_timed_steps(data):
    o, d = data
    o = dataclasses.replace(o, time_budget="120s")
    spv = 2e-6  # 48x64x48 would take 0.29 s a step, too slow for 1000 iterations in 120 s
    built = []
    plan = _plan(o, d, spv, built)
    fake, = built
    # threads: one thread won the probe and is planned (torch's default was compared against it)
    if torch.get_num_threads() > 1:
        assert plan.threads == 1 and plan.budget["budget_plan"]["threads"]["chosen"] == 1
    # the probe patch, then the speed-cut patch, which the plan keeps
    assert fake.patches_used[0] == [32, 32, 32] and fake.patches_used[-1] == plan.patch
    assert plan.patch[0] * plan.patch[1] * plan.patch[2] < 48 * 64 * 48 and min(plan.patch) >= 32
    assert "cut to" in plan.patch_note
    # the count is the largest that fits what is left of the budget at the timed speed
    step = spv * plan.patch[0] * plan.patch[1] * plan.patch[2]
    cal = Calibration([step], [step] * 3, step, 0.5, 0.2, 0.7, 0.0)
    costs = RunCosts(0, o.checkpoint_every, True, max_validations=int(0.2 * 120 / 0.5))
    available = 120 - costs.finish_seconds(cal)
    assert costs.loop_seconds(plan.iterations, cal) <= SAFETY * available
    assert costs.loop_seconds(plan.iterations + 1, cal) > SAFETY * (available - 2.0)  # planning took under 2 s
    assert plan.budget["budget_plan"]["planned_iterations"] is True and plan.budget["time_budget_s"] == 120
    assert plan.validate_every >= max(1, plan.iterations // 10)
    # frozen: a plan is replaced, never changed
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.iterations = 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.iterations = 5


def test_a_warmup_of_supervised_steps_is_costed_apart(data):
    """--warmup-fraction 0.5 with supervised warm-up steps at a quarter of a full step: an iteration costs the mix
    (0.625 of a full step), so the same budget plans about 1.6x the iterations, and the plan says why."""
    o, d = data
    o = dataclasses.replace(o, time_budget="120s", patch_size=[32, 32, 32], warmup_fraction=0.5)
    spv = 1e-5  # 0.33 s a full step
    full = _plan(dataclasses.replace(o, warmup_fraction=0.0), d, spv, [])
    built = []
    mixed = _plan(o, d, spv, built, supervised_warmup=True)
    cal = mixed.budget["budget_plan"]["calibration"]
    step = spv * 32 ** 3
    assert cal["full_step_s"] == pytest.approx(step, rel=1e-3)
    assert cal["supervised_step_s"] == pytest.approx(SUPERVISED_SHARE_OF_STEP * step, rel=1e-3)
    assert cal["sec_per_iter"] == pytest.approx((0.5 * SUPERVISED_SHARE_OF_STEP + 0.5) * step, rel=1e-3)
    assert 1.4 < mixed.iterations / full.iterations < 1.7
    assert mixed.warmup_iterations == pytest.approx(0.5 * mixed.iterations, abs=0.1)
    assert "supervised warm-up steps" in mixed.budget["budget_plan"]["note"]
    # without the warm-up nothing supervised is timed
    assert full.budget["budget_plan"]["calibration"]["supervised_step_s"] is None


def test_a_budget_too_small_for_the_shortest_run_is_refused(data):
    o, d = data
    o = dataclasses.replace(o, time_budget="20s", patch_size=[32, 32, 32])
    with pytest.raises(DataProblem) as e:
        _plan(o, d, 1e-4, [])  # 3.3 s a step: not even 10 fit in 20 s
    assert e.value.kind == "budget" and f"even {MIN_ITERATIONS}" in str(e.value)


def test_calibration_scales_one_validation_case_to_the_set(data):
    o, d = data
    fake = FakeTrainer(_plan(dataclasses.replace(o, iterations=10), d, 1e-6, []), 1e-6)
    cal = calibrate(fake, D.DistContext(), d, 600.0, 0.1)
    assert cal.validation_s == pytest.approx(0.5 * len(d.validation)) and cal.checkpoint_s == 0.2
    assert len(cal.warmup_s) == 1 and len(cal.step_s) == 3


def test_the_plan_is_written_once_and_read_back(data, tmp_path):
    o, d = data
    plan = _plan(dataclasses.replace(o, iterations=30), d, 1e-6, [])
    write_plan(str(tmp_path), plan)
    stored = read_plan(str(tmp_path))
    assert stored["format"] == "micd-plan" and TrainingPlan.from_dict(stored) == plan


def test_structure_extent_is_the_largest_foreground_box_per_axis():
    from micd.data.planning import structure_extent

    a = np.zeros((10, 20, 30), np.uint8)
    a[2:5, 3:13, 0:7] = 1
    b = np.zeros((10, 20, 30), np.uint8)
    b[0:8, 5:6, 10:12] = 2
    assert structure_extent([a, b]) == (8, 10, 7) and structure_extent([np.zeros((4, 4, 4))]) == (0, 0, 0)


def test_coarser_grid_keeps_thick_slices_thick_and_structures_resolvable():
    from types import SimpleNamespace

    from micd.training.planner import _coarser_spacing

    thick = SimpleNamespace(plan=SimpleNamespace(target_spacing=(0.2, 0.2, 3.6)))  # x y z mm
    # structures 10 x 205 x 105 voxels (z y x); a patch holding them is ~200x what the budget affords
    spacing, factor = _coarser_spacing(thick, (16, 208, 112), (10, 205, 105), 16 * 208 * 112 / 200)
    # in plane only, capped by the structures (105 / 24 = 4.37) before the thickness (3.6 / 3 / 0.2 = 6)
    assert factor == 4.35 and spacing == (0.87, 0.87, 3.6)
    iso = SimpleNamespace(plan=SimpleNamespace(target_spacing=(1.0, 1.0, 1.0)))
    # hippocampus-sized structures (20-37 voxels) are not coarsened: they would drop below 24 voxels across
    assert _coarser_spacing(iso, (32, 48, 32), (25, 37, 20), 1000.0) is None
    spacing, factor = _coarser_spacing(iso, (128, 128, 128), (120, 110, 100), 128 ** 3 / 8)  # 2x per axis affords it
    assert factor == 2.0 and spacing == (2.0, 2.0, 2.0)
