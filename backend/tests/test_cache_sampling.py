"""The preprocessing cache (reuse, invalidation, atomic writes), the plan, patch sampling and patch-size planning."""

import os
import shutil
import time

import numpy as np
import pytest
import SimpleITK as sitk

from micd.data import cache as cache_mod
from micd.data.cache import PreparedCase, make_plan, prepare_cases
from micd.data.dataset import Case, DatasetSpec, load_dataset_spec
from micd.data.planning import estimate_training_bytes, median_shape, plan_patch_size
from micd.data.preprocess import PreprocessPlan
from micd.data.sampling import PatchSampler

HIPPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "hippocampus"))
CT_DIR = os.path.abspath(os.path.join(HIPPO, "..", "ct_abdomen_example"))
LABELS = {1: "hippocampus_anterior", 2: "hippocampus_posterior"}
PLAN = PreprocessPlan(target_spacing=(1.0, 1.0, 1.0), modality="MR")


def real(i, kind="images"):
    return os.path.join(HIPPO, f"{kind}Tr", sorted(os.listdir(os.path.join(HIPPO, "imagesTr")))[i])


def entries(cache_dir):
    return sorted(e for e in os.listdir(cache_dir) if not e.startswith("."))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    cache_dir = str(tmp_path_factory.mktemp("cache"))
    cases = [Case(real(0), real(0, "labels")), Case(real(1), real(1, "labels")), real(2)]
    return prepare_cases(cases, PLAN, cache_dir, LABELS), cache_dir


def test_prepared_cases_are_memory_mapped_and_match_preprocessing(prepared):
    cases, cache_dir = prepared
    assert [c.name for c in cases] == ["hippocampus_001", "hippocampus_003", "hippocampus_004"]
    a = cases[0]
    assert isinstance(a.image, np.memmap) and a.image.dtype == np.float32 and a.image.ndim == 3
    assert isinstance(a.label, np.memmap) and a.label.dtype == np.uint8 and a.label.shape == a.image.shape
    ref = sitk.GetArrayFromImage(sitk.ReadImage(real(0, "labels")))
    assert np.array_equal(np.bincount(a.label.ravel(), minlength=3), np.bincount(ref.ravel(), minlength=3))
    assert abs(float(a.image.mean())) < 1e-3 and a.pad_value == pytest.approx(float(a.image.min()))  # z-scored MR
    assert a.classes == [1, 2] and a.source == real(0) and a.label_source == real(0, "labels")
    for c, coords in a.fg_coords.items():
        assert coords.shape[1] == 3 and 0 < len(coords) <= cache_mod.MAX_FG_COORDS
        assert np.all(a.label[tuple(coords.T)] == c)
    assert cases[2].label is None and cases[2].fg_coords == {}
    assert len(entries(cache_dir)) == 3


def test_seg_nrrd_labels_are_cached_in_the_dataset_numbering(tmp_path):
    from micd.data.io import write_seg_nrrd
    lbl = sitk.ReadImage(real(0, "labels"))
    arr = sitk.GetArrayFromImage(lbl)
    swapped = sitk.GetImageFromArray(np.choose(arr, [0, 2, 1]).astype(np.uint8))
    swapped.CopyInformation(lbl)
    seg = str(tmp_path / "l.seg.nrrd")
    write_seg_nrrd(swapped, seg, {1: "Hippocampus posterior", 2: "Hippocampus anterior"})
    case = prepare_cases([Case(real(0), seg)], PLAN, str(tmp_path / "cache"), LABELS)[0]
    plain = prepare_cases([Case(real(0), real(0, "labels"))], PLAN, str(tmp_path / "cache"), LABELS)[0]
    assert np.array_equal(case.label, plain.label)


def test_foreground_coords_are_a_bounded_random_subset():
    label = np.zeros((30, 40, 50), np.uint8)
    label[:20] = 1
    label[25:, :2, :2] = 3
    rows = cache_mod.sample_foreground(label, seed=1, max_per_class=100)
    by_class = cache_mod._coords_by_class(rows)
    assert sorted(by_class) == [1, 3] and len(by_class[1]) == 100 and len(by_class[3]) == 20
    assert np.all(label[tuple(by_class[1].T)] == 1)
    assert np.array_equal(rows, cache_mod.sample_foreground(label, seed=1, max_per_class=100))


def test_second_prepare_reuses_the_cache(prepared):
    cases, cache_dir = prepared
    files = [os.path.join(cache_dir, e, f) for e in entries(cache_dir) for f in os.listdir(os.path.join(cache_dir, e))]
    before = {f: os.stat(f).st_mtime_ns for f in files}
    seen = []
    again = prepare_cases([Case(real(0), real(0, "labels")), Case(real(1), real(1, "labels")), real(2)], PLAN,
                          cache_dir, LABELS, progress=lambda *a: seen.append(a))
    assert [s[3] for s in seen] == [True, True, True] and [s[:2] for s in seen] == [(1, 3), (2, 3), (3, 3)]
    assert {f: os.stat(f).st_mtime_ns for f in files} == before
    assert [c.entry for c in again] == [c.entry for c in cases]


def test_changed_file_or_plan_is_preprocessed_again(tmp_path):
    img = tmp_path / "img.nii.gz"
    shutil.copy(real(0), img)
    cache_dir = str(tmp_path / "cache")
    first = prepare_cases([str(img)], PLAN, cache_dir, LABELS)[0]
    os.utime(img, ns=(time.time_ns(), time.time_ns() + 10 ** 9))  # the file changed
    second = prepare_cases([str(img)], PLAN, cache_dir, LABELS)[0]
    assert second.entry != first.entry
    other = PreprocessPlan(target_spacing=(2.0, 2.0, 2.0), modality="MR")
    third = prepare_cases([str(img)], other, cache_dir, LABELS)[0]
    assert third.entry not in (first.entry, second.entry)
    assert third.shape == tuple((np.array(first.shape) / 2).round().astype(int))
    assert len(entries(cache_dir)) == 3


def test_killed_write_leaves_no_entry_and_stale_tmp_is_cleaned(tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    stale = cache_dir / ".tmp-old-entry"
    stale.mkdir()
    os.utime(stale, (time.time() - 3 * 24 * 3600,) * 2)
    real_save = np.save

    def dying_save(path, arr):
        if str(path).endswith("label.npy"):
            raise KeyboardInterrupt("killed")
        real_save(path, arr)

    monkeypatch.setattr(cache_mod.np, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        prepare_cases([Case(real(0), real(0, "labels"))], PLAN, str(cache_dir), LABELS)
    assert os.listdir(cache_dir) == []  # neither a torn entry nor the stale temporary folder
    monkeypatch.setattr(cache_mod.np, "save", real_save)
    case = prepare_cases([Case(real(0), real(0, "labels"))], PLAN, str(cache_dir), LABELS)[0]
    assert case.label is not None and len(entries(cache_dir)) == 1


def test_make_plan_from_labeled_set_and_overrides():
    spec = load_dataset_spec(HIPPO)
    spec.labeled = spec.labeled[:5]
    plan, notes = make_plan(spec, {})
    assert plan.target_spacing == (1.0, 1.0, 1.0) and plan.modality == "MR"
    assert any("median of 5" in n for n in notes) and any("z-score" in n for n in notes)
    plan, notes = make_plan(spec, {"target_spacing": 2, "modality": "ct", "ct_window": (-100, 200),
                                   "zscore_percentiles": None})
    assert plan.target_spacing == (2.0, 2.0, 2.0) and plan.modality == "CT" and plan.ct_window == (-100.0, 200.0)
    assert any("-100..200" in n for n in notes)
    with pytest.raises(ValueError):
        make_plan(spec, {"spacing": 1})
    ct = DatasetSpec(labels={1: "spleen"}, labeled=[Case(os.path.join(CT_DIR, "ct.nii.gz"),
                                                         os.path.join(CT_DIR, "labels.nii.gz"))])
    plan, notes = make_plan(ct, {})
    assert plan.modality == "CT" and plan.target_spacing == (3.0, 3.0, 3.0) and any("guessed" in n for n in notes)


# ------------------------------------------------------------------------------------------------------ sampling

def test_sampler_shapes_types_and_determinism(prepared):
    cases = prepared[0][:2]
    a = PatchSampler(cases, (16, 32, 16), np.random.default_rng(7))
    x, y = a.sample(4)
    assert x.shape == (4, 1, 16, 32, 16) and x.dtype == np.float32
    assert y.shape == (4, 16, 32, 16) and y.dtype == np.int64 and set(np.unique(y)) <= {0, 1, 2}
    b = PatchSampler(cases, (16, 32, 16), np.random.default_rng(7))
    xb, yb = b.sample(4)
    assert np.array_equal(x, xb) and np.array_equal(y, yb)
    state = a.rng.bit_generator.state  # checkpoint, draw, restore: the same patches again
    x1, y1 = a.sample(3)
    a.rng.bit_generator.state = state
    x2, y2 = a.sample(3)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    c = PatchSampler(cases, (16, 32, 16), np.random.default_rng(8))
    assert not np.array_equal(c.sample(4)[0], x)


def test_patch_values_come_from_the_volume(prepared):
    case = prepared[0][0]
    sampler = PatchSampler([case], (16, 16, 16), np.random.default_rng(0), foreground_fraction=0.0, flip_axes=())
    x, y = sampler.sample(1)
    img = np.asarray(case.image)
    # find where the patch came from: it must be an exact sub-block of the volume, with its label
    hits = [(z, yy, xx) for z in range(img.shape[0] - 15) for yy in range(img.shape[1] - 15)
            for xx in range(img.shape[2] - 15) if img[z, yy, xx] == x[0, 0, 0, 0, 0]
            and np.array_equal(img[z:z + 16, yy:yy + 16, xx:xx + 16], x[0, 0])]
    assert hits
    z, yy, xx = hits[0]
    assert np.array_equal(np.asarray(case.label)[z:z + 16, yy:yy + 16, xx:xx + 16], y[0])


def test_small_volumes_are_padded_with_their_minimum(prepared):
    case = prepared[0][0]
    patch = (64, 64, 48)
    x, y = PatchSampler([case], patch, np.random.default_rng(1), flip_axes=()).sample(2)
    assert x.shape == (2, 1) + patch
    d, h, w = case.shape
    pad_z = (64 - d + 1) // 2  # the volume sits centred (the odd voxel of padding goes first)
    pad = np.float32(case.pad_value)
    assert pad == np.asarray(case.image).min()
    assert np.all(x[:, 0, :pad_z] == pad) and np.all(y[:, :pad_z] == 0)
    assert np.all(x[:, 0, pad_z + d:] == pad) and np.all(y[:, pad_z + d:] == 0)
    assert not np.all(x[:, 0, pad_z] == pad) and not np.all(x[:, 0, pad_z + d - 1] == pad)
    py, px = (64 - h + 1) // 2, (48 - w + 1) // 2
    assert np.array_equal(x[0, 0, pad_z:pad_z + d, py:py + h, px:px + w], case.image)  # the whole volume, centred
    assert np.array_equal(y[1, pad_z:pad_z + d, py:py + h, px:px + w], case.label)


def test_full_foreground_fraction_always_hits_foreground(prepared):
    cases = prepared[0][:2]
    sampler = PatchSampler(cases, (16, 16, 16), np.random.default_rng(3), foreground_fraction=1.0)
    _, y = sampler.sample(40)
    assert all((y[i] > 0).any() for i in range(len(y)))
    both = {int(c) for c in np.unique(y) if c}
    assert both == {1, 2}


def test_unlabeled_sampler_returns_no_labels_and_mixed_is_rejected(prepared):
    cases = prepared[0]
    x, y = PatchSampler([cases[2]], (16, 16, 16), np.random.default_rng(0), foreground_fraction=1.0).sample(2)
    assert x.shape == (2, 1, 16, 16, 16) and y is None
    with pytest.raises(ValueError, match="all labeled or all unlabeled"):
        PatchSampler(cases, (16, 16, 16), np.random.default_rng(0))


def test_flips_mirror_image_and_label_together():
    vol = np.arange(4 * 6 * 8, dtype=np.float32).reshape(4, 6, 8)
    case = PreparedCase("toy", vol, (vol % 3).astype(np.uint8), {}, "toy", pad_value=0.0)
    seen = set()
    sampler = PatchSampler([case], (4, 6, 8), np.random.default_rng(0), foreground_fraction=0.0)
    for _ in range(20):
        x, y = sampler.sample(1)
        corner = x[0, 0, 0, 0, 0]
        seen.add((bool(x[0, 0, 0, -1, 0] < corner), bool(x[0, 0, 0, 0, -1] < corner)))  # y flipped, x flipped
        assert np.array_equal(y[0], (x[0, 0] % 3).astype(np.int64))
        assert np.array_equal(x[0, 0, :, 0, 0], np.sort(x[0, 0, :, 0, 0]))  # z is never flipped
    assert len(seen) == 4


# ------------------------------------------------------------------------------------------------------ planning

def test_estimate_grows_with_patch_filters_and_batch():
    base = estimate_training_bytes((32, 64, 64), 16, 4, 3)
    assert estimate_training_bytes((64, 128, 128), 16, 4, 3) > 7 * base
    assert estimate_training_bytes((32, 64, 64), 32, 4, 3) > 1.8 * base
    assert estimate_training_bytes((32, 64, 64), 16, 2, 3) < 0.6 * base
    assert estimate_training_bytes((32, 64, 64), 16, 4, 3, bytes_per_value=2) < 0.6 * base


def test_plan_patch_size(prepared):
    shape = median_shape([c.shape for c in prepared[0]])
    patch, note = plan_patch_size(shape, None, filters=16, batch=4)
    assert all(p % 16 == 0 and p >= s and p - s < 16 for p, s in zip(patch, shape))
    assert "patch" in note and "median" in note
    assert plan_patch_size((5, 200, 300), None, 16, 4)[0] == (16, 128, 128)  # min 16, capped at the spec's size
    big = (300, 512, 512)
    small_gpu, note = plan_patch_size(big, 8 * 2 ** 30, 16, 4)
    assert estimate_training_bytes(small_gpu, 16, 4, 3) <= 0.8 * 8 * 2 ** 30 and "reduced" in note
    large_gpu, note = plan_patch_size(big, 80 * 2 ** 30, 16, 4)
    assert np.prod(large_gpu) > 64 * 128 * 128 and "beyond" in note
    assert estimate_training_bytes(large_gpu, 16, 4, 3) <= 0.8 * 80 * 2 ** 30
    assert all(p % 16 == 0 for p in small_gpu + large_gpu)
