"""The one trained model the correctness tests share, made once per test session on real hippocampus cases.

conftest.py imports `trained_model` from here, so every test file gets the same session-scoped model."""

import json
import os
import resource
import time

import pytest

from realdata import LABELS, hippo_cases, run_micd

# Small so that a session pays for it once: the supervised method (two students, no unlabeled pass), 4 labeled
# hippocampus cases, 2 validation cases, VNet width 8, patch 16x32x16, 600 iterations on one CPU thread. Tried
# (validation Dice anterior/posterior, CPU s): patch 32x48x32 and 200 iterations 0.00/0.65 (70 s), 300 iterations
# with 2/3 foreground patches 0.32/0.78 (107 s); this one 0.54/0.68 (83 s). The anterior head is learned last.
TRAINED_MODEL_ARGS = ["--method", "supervised", "--iterations", "600", "--patch-size", "16", "32", "16",
                      "--filters", "8", "--lr", "0.05", "--foreground-fraction", "0.67", "--device", "cpu",
                      "--num-threads", "1", "--seed", "0", "--validate-every", "200", "--progress", "none"]
TRAIN_CASES, VALIDATION_CASES, HELD_OUT_CASES = (0, 4), (4, 2), (200, 3)  # (first index, count) in sorted imagesTr


class TrainedModel:
    """What `trained_model` made: the run folder, its model folder, the cases it validated on and cases it never
    saw, the validation Dice training recorded (model.json metrics) and what the training cost."""

    def __init__(self, run_dir, dataset, validation, held_out, wall_s, cpu_s):
        self.run_dir = str(run_dir)
        self.model_dir = os.path.join(self.run_dir, "model")
        self.dataset = dataset
        self.validation = validation
        self.held_out = held_out
        self.wall_s, self.cpu_s = wall_s, cpu_s
        with open(os.path.join(self.model_dir, "model.json"), encoding="utf-8") as f:
            self.meta = json.load(f)

    @property
    def validation_dice(self):
        """{label name: Dice} of the exported (best) weights on the validation cases, as training measured it."""
        return self.meta["metrics"]["dice"]


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory, shared_data):
    """A model trained with `micd train` (TRAINED_MODEL_ARGS) once per session; the other tests only read it.

    Time, measured on the 2-core development machine: 78 s of CPU for the 600 iterations (one thread, bf16
    autocast there; about 1.7x that on a CPU without bf16), 82 s wall for the fixture at load average 2.5 and 135 s
    at 5-9 (other jobs running). This run's own cost is in `.wall_s` and `.cpu_s`."""
    folder = tmp_path_factory.mktemp("trained")
    cases = hippo_cases(TRAIN_CASES[0], TRAIN_CASES[1] + VALIDATION_CASES[1])
    held_out = hippo_cases(*HELD_OUT_CASES)
    ds = {"labels": LABELS, "labeled": cases[:TRAIN_CASES[1]], "unlabeled": [], "validation": cases[TRAIN_CASES[1]:]}
    path = os.path.join(str(folder), "dataset.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(ds, f)
    before, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
    p = run_micd("train", "--dataset", path, "--out", str(folder / "run"), *TRAINED_MODEL_ARGS, timeout=900)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return TrainedModel(folder / "run", path, ds["validation"], held_out, time.time() - t0, cpu)
