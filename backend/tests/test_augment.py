"""--augment nnunet: nnU-Net v2's default patch augmentation from MONAI transforms, for every method; flips stay the
default (the spec's, and every recorded benchmark's)."""

import json
import os

import numpy as np
import pytest

from micd.data.augment import make_augmentation


def _patch():
    g = np.random.default_rng(1)
    x = g.normal(size=(24, 32, 24)).astype(np.float32)
    y = np.zeros(x.shape, np.uint8)
    y[6:18, 8:24, 6:18] = 1
    y[10:14, 12:20, 10:14] = 2
    return x, y


def test_flips_add_nothing_and_unknown_names_are_refused():
    assert make_augmentation("flips", np.random.default_rng(0)) is None
    with pytest.raises(ValueError, match="flips, nnunet"):
        make_augmentation("elastic", np.random.default_rng(0))


def test_nnunet_augmentation_moves_image_and_label_together_reproducibly():
    x, y = _patch()
    runs = []
    for _ in range(2):
        aug = make_augmentation("nnunet", np.random.default_rng(5))
        runs.append([aug(x, y) for _ in range(40)])
    changed = 0
    for (a1, b1), (a2, b2) in zip(*runs):
        assert np.array_equal(a1, a2) and np.array_equal(b1, b2)  # the same seed, the same patches
        assert a1.shape == x.shape and a1.dtype == np.float32 and b1.dtype == y.dtype
        assert set(np.unique(b1)) <= {0, 1, 2}  # nearest neighbour: no new label values
        changed += not np.array_equal(a1, x)
        if not np.array_equal(b1, y):  # moved spatially: the image moved with it (where the label is 2, it is
            assert np.abs(a1[b1 == 2].mean() - x[y == 2].mean()) < 1.5  # still the same kind of voxel)
    assert 10 <= changed <= 40  # most patches get at least one transform, not all of them every time
    image, label = make_augmentation("nnunet", np.random.default_rng(0))(x, None)
    assert label is None and image.shape == x.shape


def test_a_run_with_nnunet_augmentation_trains_and_records_it(tmp_path, shared_data):
    from micd.events import read_events
    from realdata import run_micd, write_dataset

    ds = write_dataset(tmp_path, 2, 1, 1)
    out = os.path.join(tmp_path, "run")
    p = run_micd("train", "--dataset", ds, "--out", out, "--iterations", "3", "--augment", "nnunet",
                 "--patch-size", "16", "32", "16", "--filters", "4", "--device", "cpu", "--num-threads", "1")
    assert p.returncode == 0, p.stdout[-1500:] + p.stderr[-1500:]
    assert json.load(open(os.path.join(out, "config.json")))["augment"] == "nnunet"
    assert read_events(os.path.join(out, "events.jsonl"))[-1]["event"] == "done"
