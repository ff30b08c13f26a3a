"""The segmentation is right, not just well-formed: a model trained once per session on real hippocampus cases
(trained.py) is scored by `micd predict` + `micd evaluate` against the manual labels, and the same image given on
other grids (mirrored, moved, oblique, anisotropic) must give labels that land on the same anatomy; the ensemble and
TTA averages are checked against a hand computation."""

import csv
import itertools
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from micd.cli import main
from micd.inference.ensemble import EnsembleProbabilities
from micd.training.validation import dice_per_class

torch.set_num_threads(1)

NAMES = {1: "hippocampus_anterior", 2: "hippocampus_posterior"}
# `micd predict` on the original grid vs training's validation on the network grid: the hippocampus is 1 mm
# isotropic, so the grids differ only by orientation and the Dice must agree to rounding (measured: equal to 1e-6)
VALIDATION_TOLERANCE = 0.02
# cases training never saw: the session model scores 0.58-0.77 per label and case (measured); an all-background
# label map scores 0, and one mirrored left-right or one of another case scores far lower
HELD_OUT_FLOOR = 0.45


def predict(model_dir, src, out, *extra):
    code = main(["predict", "--model", str(model_dir), "--input", str(src), "--output", str(out), "--device", "cpu",
                 "--num-threads", "1", *map(str, extra)])
    assert code == 0
    return str(out)


def label_array(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def link_folder(folder, paths):
    """A folder of links to shared-data files (the files themselves are read-only and shared)."""
    os.makedirs(folder, exist_ok=True)
    for p in paths:
        os.symlink(p, os.path.join(folder, os.path.basename(p)))
    return str(folder)


def test_predict_reproduces_the_validation_dice(trained_model, tmp_path):
    """Training recorded a Dice per label on its validation cases; `micd predict` + a Dice on the original grid
    must give the same numbers."""
    per_label = {c: [] for c in NAMES}
    for case in trained_model.validation:
        pred = label_array(predict(trained_model.model_dir, case["image"], tmp_path / os.path.basename(case["image"])))
        for c, d in dice_per_class(pred, label_array(case["label"]), list(NAMES)).items():
            per_label[c].append(d)
    recorded = trained_model.validation_dice
    assert set(recorded) == set(NAMES.values())
    for c, name in NAMES.items():
        assert abs(np.mean(per_label[c]) - recorded[name]) <= VALIDATION_TOLERANCE, (name, per_label[c], recorded)
    assert min(recorded.values()) > 0.3, f"the session model learned too little to prove anything: {recorded}"


@pytest.fixture(scope="module")
def held_out_scored(trained_model, tmp_path_factory):
    """Folder in, folder out: the held-out cases predicted by one `micd predict` call and scored by `micd
    evaluate` (JSON, CSV and Markdown)."""
    tmp = tmp_path_factory.mktemp("held_out")
    images = link_folder(tmp / "images", [c["image"] for c in trained_model.held_out])
    labels = link_folder(tmp / "labels", [c["label"] for c in trained_model.held_out])
    predict(trained_model.model_dir, images, tmp / "pred", "--format", "nrrd")
    assert main(["evaluate", "--pred", str(tmp / "pred"), "--label", labels, "--json", str(tmp / "ev.json"),
                 "--labels", trained_model.model_dir]) == 0
    return tmp, trained_model.held_out


def test_held_out_cases_score_above_the_floor(held_out_scored):
    tmp, cases = held_out_scored
    names = [os.path.basename(c["image"]) for c in cases]
    assert sorted(os.listdir(tmp / "pred")) == sorted(n.replace(".nii.gz", ".nrrd") for n in names)
    for c in cases:
        pred_img = sitk.ReadImage(str(tmp / "pred" / os.path.basename(c["image"]).replace(".nii.gz", ".nrrd")))
        ref_img = sitk.ReadImage(c["label"])
        pred, ref = sitk.GetArrayFromImage(pred_img), sitk.GetArrayFromImage(ref_img)
        assert pred.shape == ref.shape and pred_img.GetOrigin() == pytest.approx(ref_img.GetOrigin())
        d = dice_per_class(pred, ref, list(NAMES))
        assert min(d[1], d[2]) > HELD_OUT_FLOOR, (c["image"], d)
        ratio = (pred > 0).sum() / (ref > 0).sum()  # neither all background nor everything foreground
        assert 0.5 < ratio < 2.5, (c["image"], ratio)  # measured 1.2-1.6: this small model over-segments


# bf16 autocast (the CPU default where AMX/AVX512-BF16 exists) against fp32 on the held-out cases: Dice within this
# of each other per label and case, and nearly every voxel the same label (measured on the session model: Dice
# differences up to 0.002, labels differing in 0.04 % of the voxels)
BF16_DICE_TOLERANCE = 0.01


BF16_MEAN_DICE_TOLERANCE = 0.005  # issue 31: bf16 by default only where the held-out mean Dice loses at most this


def test_bf16_prediction_scores_like_fp32(trained_model, tmp_path):
    mean_differences = []
    for c in trained_model.held_out:
        name = os.path.basename(c["image"])
        ref = label_array(c["label"])
        fp32 = label_array(predict(trained_model.model_dir, c["image"], tmp_path / f"fp32-{name}", "--amp", "off"))
        bf16 = label_array(predict(trained_model.model_dir, c["image"], tmp_path / f"bf16-{name}", "--amp", "bf16"))
        assert (fp32 != bf16).mean() < 0.005, (name, (fp32 != bf16).mean())
        d32, d16 = dice_per_class(fp32, ref, list(NAMES)), dice_per_class(bf16, ref, list(NAMES))
        for k in NAMES:
            assert abs(d32[k] - d16[k]) <= BF16_DICE_TOLERANCE, (name, k, d32[k], d16[k])
        mean_differences.append(sum(d32[k] - d16[k] for k in NAMES) / len(NAMES))
    assert sum(mean_differences) / len(mean_differences) <= BF16_MEAN_DICE_TOLERANCE, mean_differences


def test_evaluation_reports_agree_with_a_direct_dice(held_out_scored):
    """The JSON, CSV and Markdown reports of `micd evaluate` are parsed and hold the Dice computed here."""
    tmp, cases = held_out_scored
    direct = {}
    for c in cases:
        case = os.path.basename(c["image"]).replace(".nii.gz", "")
        pred = label_array(tmp / "pred" / f"{case}.nrrd")
        direct[case] = dice_per_class(pred, label_array(c["label"]), list(NAMES))
    result = json.load(open(tmp / "ev.json", encoding="utf-8"))
    rows = list(csv.DictReader(open(tmp / "ev.csv", encoding="utf-8")))
    for case, d in direct.items():
        (jcase,) = [r for r in result["cases"] if r["case"] == case]
        for c, name in NAMES.items():
            assert jcase["metrics"][name]["dice"] == pytest.approx(d[c], abs=1e-6)
            (row,) = [r for r in rows if r["case"] == case and r["name"] == name]
            assert float(row["dice"]) == pytest.approx(d[c], abs=1e-5) and row["label"] == str(c)
    md = open(tmp / "ev.md", encoding="utf-8").read().splitlines()
    for c, name in NAMES.items():
        mean = np.mean([d[c] for d in direct.values()])
        (row,) = [r for r in rows if r["case"] == "MEAN" and r["name"] == name]
        assert float(row["dice"]) == pytest.approx(mean, abs=1e-5)
        (line,) = [ln for ln in md if ln.startswith(f"| {c} {name} |")]
        assert line.split("|")[2].strip().startswith(f"{mean:.4f} ± ")
        assert line.split("|")[5].strip() == str(len(cases))


# --- the same image on other grids -----------------------------------------------------------------------------------

def _rotation(axis, angle):
    t = sitk.VersorTransform(tuple(float(a) for a in axis), float(angle))
    return np.array(t.GetMatrix()).reshape(3, 3)


def covering_grid(points, direction, spacing):
    """An empty image with `direction` and `spacing` whose voxel centres span `points` (physical, N x 3)."""
    d = np.asarray(direction, float).reshape(3, 3)
    along = np.asarray(points) @ d  # coordinates along the grid's axes (the columns of the direction matrix)
    lo, hi = along.min(0), along.max(0)
    size = [int(np.ceil((h - l) / s - 1e-6)) + 1 for l, h, s in zip(lo, hi, spacing)]
    ref = sitk.Image(size, sitk.sitkFloat32)
    ref.SetSpacing(tuple(float(s) for s in spacing))
    ref.SetDirection(tuple(d.ravel()))
    ref.SetOrigin(tuple(d @ lo))
    return ref


def corners(img):
    """The centres of the corner voxels, physical (8 x 3)."""
    return np.array([img.TransformIndexToPhysicalPoint(idx)
                     for idx in itertools.product(*[(0, s - 1) for s in img.GetSize()])])


def variant(img, name):
    """(a grid over `img`'s extent, the transform T with which the image on it is sampled: new(p) = old(T(p))).
    Content moved by T is mapped back with T's inverse."""
    identity = sitk.Transform(3, sitk.sitkIdentity)
    if name == "mirrored":  # x axis reversed: the same voxels in the opposite order, det(direction) = -1
        return covering_grid(corners(img), np.diag([-1.0, 1.0, 1.0]), img.GetSpacing()), identity
    if name == "moved":  # the whole volume 40.5 mm / -17.25 mm / 3 mm away: same array, another origin
        t = sitk.TranslationTransform(3, (-40.5, 17.25, -3.0))
        return covering_grid(corners(img) + (40.5, -17.25, 3.0), np.eye(3), img.GetSpacing()), t
    if name == "oblique":  # axes rotated 0.25 rad about (1, 2, 0.5)
        return covering_grid(corners(img), _rotation((1, 2, 0.5), 0.25), img.GetSpacing()), identity
    if name == "anisotropic":  # 0.8 x 1.0 x 1.6 mm voxels
        return covering_grid(corners(img), np.eye(3), (0.8, 1.0, 1.6)), identity
    if name == "all":  # content rotated and moved, sampled on a mirrored oblique anisotropic grid
        t = sitk.Euler3DTransform()
        t.SetCenter(tuple(corners(img).mean(0)))
        t.SetRotation(0.1, -0.15, 0.1)
        t.SetTranslation((12.0, -30.0, 7.5))
        pts = np.array([t.GetInverse().TransformPoint(tuple(p)) for p in corners(img)])
        d = _rotation((0.3, -1, 1), 0.15) @ np.diag([1.0, -1.0, 1.0])
        return covering_grid(pts, d, (0.9, 1.2, 1.4)), t
    raise KeyError(name)


# The compared region is the scan less MARGIN voxels on every side, so that an oblique grid over it still samples
# the scan (its corners reach out of the region) instead of padding: `micd predict` z-scores each image as a whole,
# and a zero border shifts that normalisation enough to change the labels (2 voxels of zeros around the whole scan
# take this model's anterior Dice from 0.69 to 0.01).
MARGIN = 6
# Dice between the labels of the region and of each variant mapped back (mean of the two labels). The mirrored
# and moved grids hold exactly the same voxels, so the labels must be identical; oblique and anisotropic grids
# interpolate the image (and 1.6 mm slices lose detail), so boundary voxels change. Measured with the session
# model: oblique 0.80, anisotropic 0.74, all 0.58; the same labels mirrored left-right score 0.2-0.45.
AGREEMENT_FLOOR = {"mirrored": 0.999, "moved": 0.999, "oblique": 0.7, "anisotropic": 0.65, "all": 0.5}


@pytest.fixture(scope="module")
def original(trained_model, tmp_path_factory):
    """(the held-out scan, the region compared, the labels `micd predict` gives the region)."""
    scan = sitk.ReadImage(trained_model.held_out[0]["image"])
    region = scan[MARGIN:-MARGIN, MARGIN:-MARGIN, MARGIN:-MARGIN]
    tmp = tmp_path_factory.mktemp("orig")
    sitk.WriteImage(region, str(tmp / "region.nii.gz"))
    labels = sitk.ReadImage(predict(trained_model.model_dir, tmp / "region.nii.gz", tmp / "labels.nii.gz"))
    assert set(np.unique(sitk.GetArrayFromImage(labels))) == {0, 1, 2}
    return scan, region, labels


@pytest.mark.parametrize("name", list(AGREEMENT_FLOOR))
def test_labels_follow_the_anatomy_on_other_grids(trained_model, original, tmp_path, name):
    scan, region, labels = original
    ref, transform = variant(region, name)
    moved = sitk.Resample(scan, ref, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    src = tmp_path / f"{name}.nii.gz"
    sitk.WriteImage(moved, str(src))
    out = sitk.ReadImage(predict(trained_model.model_dir, src, tmp_path / f"{name}-labels.nii.gz"))
    assert out.GetSize() == moved.GetSize() and np.allclose(out.GetDirection(), moved.GetDirection())
    back = sitk.Resample(out, region, transform.GetInverse(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    d = dice_per_class(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(labels), list(NAMES))
    assert np.mean([d[1], d[2]]) >= AGREEMENT_FLOOR[name], d
    # the floor tells right from wrong: the same labels mirrored left-right score under it
    wrong = dice_per_class(sitk.GetArrayFromImage(back)[:, :, ::-1], sitk.GetArrayFromImage(labels), list(NAMES))
    assert np.mean([wrong.get(1, 0), wrong.get(2, 0)]) < AGREEMENT_FLOOR[name] - 0.1, wrong


# --- the averages, by hand ----------------------------------------------------------------------------------------

class PositionNet(torch.nn.Module):
    """Logits that depend on the voxel's position as well as its value, so a window flipped and not flipped back
    gives other probabilities."""

    def __init__(self, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = torch.nn.Conv3d(1, 3, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g))
            self.conv.bias.zero_()
        self.bias = torch.randn((1, 3, 4, 5, 6), generator=g) * 2

    def forward(self, x, turnoff_drop=False):
        assert turnoff_drop
        return [self.conv(x) + self.bias]


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_ensemble_and_tta_are_the_hand_computed_means():
    nets = [PositionNet(1).eval(), PositionNet(2).eval()]
    x = torch.randn((1, 1, 4, 5, 6), generator=torch.Generator().manual_seed(0))
    xn = x.numpy()

    def probs(net, arr):
        with torch.no_grad():
            return _softmax(net(torch.from_numpy(np.ascontiguousarray(arr)), True)[0].numpy().astype(np.float64))

    # students: the mean of the probabilities (not of the logits)
    by_hand = (probs(nets[0], xn) + probs(nets[1], xn)) / 2
    got = EnsembleProbabilities(nets).eval()(x).numpy()
    np.testing.assert_allclose(got, by_hand, atol=1e-6)
    assert np.abs(got - _softmax(sum(n(x, True)[0].detach().numpy() for n in nets) / 2)).max() > 1e-3
    # TTA: every subset of the axes training mirrors (y, x) mirrored in, and the probabilities mirrored back,
    # 2 nets x 4; z is never mirrored (the networks never saw z-mirrored inputs)
    total = np.zeros_like(by_hand)
    subsets = [s for r in range(3) for s in itertools.combinations((3, 4), r)]
    assert len(subsets) == 4
    for axes in subsets:
        for net in nets:
            total += np.flip(probs(net, np.flip(xn, axes)), axes) if axes else probs(net, xn)
    tta = EnsembleProbabilities(nets, tta=True).eval()(x).numpy()
    np.testing.assert_allclose(tta, total / 8, atol=1e-6)
    assert np.abs(tta - by_hand).max() > 1e-3  # the flips made a difference, so un-flipping them is tested
