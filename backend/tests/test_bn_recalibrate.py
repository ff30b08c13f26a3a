"""--bn-recalibrate N: before validation and export the BatchNorm running statistics are re-estimated from N batches
of uniform patches of the unlabeled images; nothing else about training changes."""

import json
import os

import numpy as np
import pytest
import torch

from realdata import TINY, run_micd, write_dataset
from micd.data.cache import prepare_cases
from micd.data.dataset import load_dataset_spec
from micd.data.sampling import PatchSampler
from micd.model_package import load_model_package

torch.set_num_threads(1)


def _train(tmp_path, ds, name, *extra):
    run = tmp_path / name
    p = run_micd("train", "--dataset", ds, "--out", str(run), "--method", "supervised", "--iterations", "4",
                 "--seed", "2", "--cache-dir", str(tmp_path / "cache"), "--export-last", *TINY, *extra)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    losses = [e["loss"]["total"] for e in map(json.loads, open(run / "events.jsonl")) if e["event"] == "iteration"]
    return run, losses


def test_recalibration_replaces_only_the_running_statistics(tmp_path, shared_data):
    ds = write_dataset(tmp_path, n_lab=2, n_unlab=2, n_val=1)
    plain, plain_losses = _train(tmp_path, ds, "plain")
    precise, precise_losses = _train(tmp_path, ds, "precise", "--bn-recalibrate", "3")
    assert precise_losses == plain_losses  # training itself is untouched
    a = load_model_package(str(plain / "model-last")).networks["student_a"]
    b = load_model_package(str(precise / "model-last")).networks["student_a"]
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        if "running" in k:
            assert not torch.equal(sa[k], sb[k]), k
        elif "num_batches_tracked" not in k:
            assert torch.equal(sa[k], sb[k]), k
    # independently: the first BatchNorm's running mean is the mean over the 3 batches of its input's channel means,
    # the batches being the uniform patches of the unlabeled images drawn from the generator (seed, 2, iteration)
    spec = load_dataset_spec(ds)
    pkg = load_model_package(str(precise / "model-last"))
    unl = [c.without_label() for c in prepare_cases(spec.unlabeled, pkg.plan, str(tmp_path / "cache"), dict(spec.labels))]
    sampler = PatchSampler(unl, tuple(pkg.patch_size), np.random.default_rng([2, 2, 4]), foreground_fraction=0.0)
    conv = b.enc1[0]
    with torch.no_grad():
        means = [conv(torch.from_numpy(sampler.sample(4)[0])).mean(dim=(0, 2, 3, 4)) for _ in range(3)]
    assert torch.allclose(b.enc1[1].running_mean, torch.stack(means).mean(0), atol=1e-5)
    # the choice is recorded
    assert json.load(open(precise / "config.json"))["bn_recalibrate"] == 3
