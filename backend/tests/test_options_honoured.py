"""Every option does what it says: `micd train` options land in the recorded config and change the run (learning
rate per iteration, events, exports, cache, preprocessing, network, method options; --config below the flags and
refusing unknown keys), and `micd predict` options change the prediction the way their help says (the branches it
names are the networks that vote, TTA, overlap, batching, slabs, threads)."""

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from realdata import run_micd, write_dataset
from micd.cli import main
from micd.model_package import load_model_package, save_model_package
from micd.nets.vnet import build_network
from micd.training.schedule import consistency_weight
from micd.training.validation import dice_per_class

torch.set_num_threads(1)

# --- micd train ------------------------------------------------------------------------------------------------------

CONFIG = {"seed": 5, "filters": 8, "lr": 0.5, "iterations": 4, "poly-power": 2.0, "warmup_fraction": 0.25}
FLAGS = {"--lr": "0.02", "--log-every": "2", "--validate-every": "2", "--checkpoint-every": "3",
         "--target-spacing": "1.2 1.1 1.3", "--modality": "MR", "--batch-labeled": "1", "--batch-unlabeled": "1",
         "--momentum": "0.5", "--weight-decay": "0.001", "--dropout": "0.2", "--normalization": "instancenorm",
         "--mask-ratio": "0.3", "--mask-block": "4", "--mcpc-mode": "clean_from_masked", "--cfc-distance": "mse",
         "--cmd-mode": "cross_teacher", "--class-weights": "none", "--ema-alpha": "0.9", "--beta-max": "0.5",
         "--rampup-fraction": "0.5", "--term-weights": "1 0.5 0.25", "--pseudo-threshold": "0.1",
         "--init-a": "xavier", "--init-b": "xavier", "--mask-fill": "zero", "--cfc-inputs": "clean",
         "--foreground-fraction": "1.0", "--warmup-step": "full"}
SWITCHES = ["--export-last", "--no-mask-shared", "--no-mask-labeled", "--cmd-weighted", "--keep-clean-cps"]


def _value(text):
    parts = [float(p) if p.replace(".", "").isdigit() else p for p in text.split()]
    return parts if len(parts) > 1 else parts[0]


@pytest.fixture(scope="module")
def options_run(tmp_path_factory, shared_data):
    """One 4-iteration MICD run with every option above away from its default, some from --config."""
    tmp = tmp_path_factory.mktemp("options")
    ds = write_dataset(tmp, n_lab=2, n_unlab=2, n_val=1)
    (tmp / "config.json").write_text(json.dumps(CONFIG), encoding="utf-8")
    args = ["train", "--dataset", ds, "--out", str(tmp / "run"), "--config", str(tmp / "config.json"),
            "--cache-dir", str(tmp / "mycache"), "--patch-size", "16", "32", "16", "--device", "cpu",
            "--num-threads", "1", *SWITCHES]
    for flag, value in FLAGS.items():
        args += [flag, *value.split()]
    p = run_micd(*args)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    run = tmp / "run"
    events = [json.loads(line) for line in open(run / "events.jsonl", encoding="utf-8")]
    config = json.load(open(run / "config.json", encoding="utf-8"))
    return tmp, run, events, config


def test_every_train_option_is_recorded(options_run):
    _, run, _, config = options_run
    for flag, value in FLAGS.items():
        assert config[flag[2:].replace("-", "_")] == pytest.approx(_value(value)), flag
    for switch in SWITCHES:
        key = switch[2:].replace("no-", "", 1).replace("-", "_") if switch.startswith("--no-") else \
            switch[2:].replace("-", "_")
        assert config[key] is (not switch.startswith("--no-")), switch
    # --config gives what no flag gives; a flag wins over --config (lr)
    assert (config["seed"], config["filters"], config["iterations"], config["poly_power"]) == (5, 8, 4, 2.0)
    assert config["lr"] == 0.02
    meta = json.load(open(run / "model" / "model.json", encoding="utf-8"))
    mo = meta["method_options"]
    assert (mo["mask_shared"], mo["mask_labeled"], mo["mcpc_mode"], mo["cmd_mode"]) == \
        (False, False, "clean_from_masked", "cross_teacher")
    assert mo["term_weights"] == [1, 0.5, 0.25] and mo["class_weights"] == "none" and mo["ema_alpha"] == 0.9
    # every method option given reaches the method the model was trained with, not only the run's config
    from micd.methods import MethodConfig
    method_flags = {f: v for f, v in FLAGS.items() if f[2:].replace("-", "_") in MethodConfig.__dataclass_fields__}
    assert len(method_flags) >= 15
    for flag, value in method_flags.items():
        assert mo[flag[2:].replace("-", "_")] == pytest.approx(_value(value)), flag
    for switch in SWITCHES:
        key = switch[2:].replace("no-", "", 1).replace("-", "_")
        if key in MethodConfig.__dataclass_fields__:
            assert mo[key] is (not switch.startswith("--no-")), switch
    assert meta["network"]["normalization"] == "instancenorm" and meta["network"]["dropout"] == 0.2
    assert meta["network"]["filters"] == 8 and meta["provenance"]["seed"] == 5


def test_train_options_change_the_run(options_run):
    tmp, run, events, config = options_run
    iters = [e for e in events if e["event"] == "iteration"]
    # --log-every 2: the first iteration, every second one and the last
    assert [e["iter"] for e in iters] == [1, 2, 4]
    # --lr 0.02 with --poly-power 2 from --config: lr(t) = 0.02 (1 - t/4)^2 for the step from t to t+1
    for e in iters:
        assert e["lr"] == pytest.approx(0.02 * (1 - (e["iter"] - 1) / 4) ** 2)
    # --warmup-fraction 0.25 (config) and --beta-max 0.5 --rampup-fraction 0.5: beta 0 in the first step, then ramps
    for e in iters:
        assert e["beta"] == pytest.approx(consistency_weight(e["iter"] - 1, 4, 0.5, 0.5, 0.25))
    assert iters[0]["beta"] == 0 and 0 < iters[-1]["beta"] <= 0.5
    # --warmup-step full: the warm-up's step is the whole MICD step at β = 0 (the default's is supervised)
    assert {"sup", "mcpc", "cfc", "cmd"} <= set(iters[0]["loss"])
    # --validate-every 2 and the end; --checkpoint-every 3 (and the final one)
    assert [e["iter"] for e in events if e["event"] == "validation"] == [2, 4]
    assert [e["iter"] for e in events if e["event"] == "checkpoint" and e.get("kind") != "best"][:1] == [3]
    (start,) = [e for e in events if e["event"] == "start"]
    assert start["batch_size"] == {"labeled": 1, "unlabeled": 1}
    # --cache-dir: the preprocessed arrays are there, not in the run folder
    assert os.listdir(tmp / "mycache") and not os.path.exists(run / "cache")
    # --target-spacing, --modality: the model's preprocessing, and the cached arrays are on that grid
    meta = json.load(open(run / "model" / "model.json", encoding="utf-8"))
    assert meta["preprocessing"]["target_spacing"] == pytest.approx([1.2, 1.1, 1.3])
    assert meta["preprocessing"]["modality"] == "MR"
    # --export-last: the last weights as a second model folder that loads, and differs from the best one
    last, best = load_model_package(str(run / "model-last")), load_model_package(str(run / "model"))
    assert last.meta["weights_from"] == "last" and best.meta["weights_from"].startswith("best validation")
    assert best.meta["metrics"]["best_iter"] == 2
    a, b = last.networks["student_a"].state_dict(), best.networks["student_a"].state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_written_loads_back(options_run):
    """The checkpoint a run writes holds the networks of its model folder at its iteration."""
    from micd.training.checkpoint import load_checkpoint

    _, run, _, _ = options_run
    ckpt = load_checkpoint(str(run / "checkpoints" / "last.pt"))
    assert ckpt["iteration"] == 4
    last = load_model_package(str(run / "model-last"))
    assert ckpt["options"]["lr"] == 0.02 and ckpt["options"]["filters"] == 8
    state = last.networks["student_b"].state_dict()
    assert state
    for k, v in state.items():
        assert torch.equal(ckpt["model"][f"students.student_b.{k}"].cpu(), v), k


def test_config_unknown_key_and_bad_file_are_refused(tmp_path, shared_data):
    ds = write_dataset(tmp_path, n_lab=1, n_unlab=1, n_val=0)
    (tmp_path / "c.json").write_text(json.dumps({"iterations": 2, "mask_sharred": False}), encoding="utf-8")
    p = run_micd("train", "--dataset", ds, "--out", str(tmp_path / "run"), "--config", str(tmp_path / "c.json"))
    assert p.returncode == 2 and "unknown option 'mask_sharred'" in p.stdout
    assert not os.path.exists(tmp_path / "run" / "model")
    (tmp_path / "c.json").write_text("[1, 2]", encoding="utf-8")
    p = run_micd("train", "--dataset", ds, "--out", str(tmp_path / "run2"), "--config", str(tmp_path / "c.json"))
    assert p.returncode == 2 and "expected a JSON object" in p.stdout


def test_network_and_optimizer_options_reach_torch(options_run):
    """--dropout and --normalization are the layers of the trained networks; --momentum and --weight-decay the SGD
    that made the checkpoint's optimizer state (Nesterov whenever there is momentum); --num-threads torch's thread
    count in the run."""
    from micd.training.checkpoint import load_checkpoint

    _, run, events, _ = options_run
    net = load_model_package(str(run / "model")).networks["student_a"]
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)]
    assert norms and all(isinstance(m, torch.nn.InstanceNorm3d) for m in norms)
    drops = [m for m in net.modules() if isinstance(m, torch.nn.Dropout3d)]
    assert drops and all(d.p == pytest.approx(0.2) for d in drops)
    (group,) = load_checkpoint(str(run / "checkpoints" / "last.pt"))["optimizer"]["param_groups"]
    assert (group["momentum"], group["weight_decay"], group["nesterov"]) == (0.5, 0.001, True)
    (start,) = [e for e in events if e["event"] == "start"]
    assert start["threads"] == 1


def test_amp_sets_the_autocast_of_the_training_step(tmp_path, shared_data):
    """--amp off trains in float32, --amp bf16 under bfloat16 autocast: same seed and patches, the first losses
    differ by rounding only, and the start event names the precision chosen and why."""
    ds = write_dataset(tmp_path, n_lab=1, n_unlab=1, n_val=0)
    losses = {}
    for mode, name in (("off", "off"), ("bf16", "bfloat16")):
        run = tmp_path / f"run-{mode}"
        p = run_micd("train", "--dataset", ds, "--out", str(run), "--iterations", "1", "--amp", mode,
                     "--patch-size", "16", "32", "16", "--filters", "4", "--device", "cpu", "--num-threads",
                     "1", "--method", "supervised", "--val-fraction", "0", "--cache-dir", str(tmp_path / "c"))
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
        events = [json.loads(line) for line in open(run / "events.jsonl", encoding="utf-8")]
        (start,) = [e for e in events if e["event"] == "start"]
        assert start["amp"] == name and "--amp" in start["precision_reason"]
        losses[mode] = next(e for e in events if e["event"] == "iteration")["loss"]["total"]
    assert np.isfinite(losses["bf16"]) and losses["bf16"] != losses["off"]
    assert losses["bf16"] == pytest.approx(losses["off"], rel=0.05)


def test_sync_bn_on_cpu_ranks_is_refused_with_what_to_do(tmp_path, shared_data):
    """--sync-bn is torch's SyncBatchNorm, CUDA only: on CPU ranks it is refused before training, with the way out."""
    ds = write_dataset(tmp_path, n_lab=2, n_unlab=2, n_val=0)
    p = run_micd("train", "--dataset", ds, "--out", str(tmp_path / "run"), "--nproc", "2", "--sync-bn",
                 "--iterations", "1", "--patch-size", "16", "32", "16", "--filters", "4", "--device", "cpu",
                 "--num-threads", "1", "--val-fraction", "0", timeout=300)
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    error = next(json.loads(line) for line in p.stdout.splitlines() if '"error"' in line)
    assert error["kind"] == "data" and "--sync-bn needs CUDA" in error["message"]
    assert "instancenorm" in error["hint"]
    assert not os.path.exists(tmp_path / "run" / "model")


def test_ct_window_maps_the_window_onto_zero_to_one(tmp_path, shared_data):
    """--ct-window LOW HIGH: the CT's Hounsfield units are clipped to the window and mapped linearly onto [0, 1] in
    the arrays the network trains on, and the window is the model's, so prediction repeats it. One case: its own
    spacing is the target, so the cached array holds exactly the original voxels (reoriented)."""
    ct = os.path.join(shared_data, "data", "ct_abdomen_example")
    ds = tmp_path / "ds.json"
    labels = json.load(open(os.path.join(ct, "dataset.json"), encoding="utf-8"))["labels"]
    ds.write_text(json.dumps({"labels": labels, "modality": "CT", "labeled": [
        {"image": os.path.join(ct, "ct.nii.gz"), "label": os.path.join(ct, "labels.nii.gz")}]}), encoding="utf-8")
    p = run_micd("train", "--dataset", str(ds), "--out", str(tmp_path / "run"), "--ct-window", "-100", "200",
                 "--iterations", "1", "--patch-size", "16", "32", "32", "--filters", "4", "--device", "cpu",
                 "--num-threads", "1", "--method", "supervised", "--val-fraction", "0", "--cache-dir",
                 str(tmp_path / "cache"))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    (cached,) = [np.load(os.path.join(d, "image.npy")) for d, _, files in os.walk(tmp_path / "cache")
                 if "image.npy" in files]
    hu = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(ct, "ct.nii.gz"))).astype(np.float64)
    assert cached.size == hu.size
    assert np.allclose(np.sort(cached.ravel()), np.sort(np.clip((hu.ravel() + 100) / 300, 0, 1)), atol=1e-5)
    meta = json.load(open(tmp_path / "run" / "model" / "model.json", encoding="utf-8"))
    assert meta["preprocessing"]["ct_window"] == [-100.0, 200.0]


# --- micd predict ----------------------------------------------------------------------------------------------------

def predict(model_dir, src, out, *extra, capsys=None):
    code = main(["predict", "--model", str(model_dir), "--input", str(src), "--output", str(out), "--device", "cpu",
                 "--num-threads", "1", *map(str, extra)])
    assert code == 0
    plan = None
    if capsys is not None:
        plan = next(json.loads(line) for line in capsys.readouterr().out.splitlines() if '"plan"' in line)
    return sitk.GetArrayFromImage(sitk.ReadImage(str(out))), plan


def mean_dice(pred, ref):
    d = dice_per_class(pred, ref, [1, 2])
    return float(np.mean([d.get(1, 0.0), d.get(2, 0.0)]))


@pytest.fixture(scope="module")
def mixed_model(trained_model, tmp_path_factory):
    """The session model's networks under other names beside untrained ones: student_a and teacher_b are trained,
    student_b and teacher_a are random, so a vote can be traced to the networks that cast it."""
    trained = load_model_package(trained_model.model_dir)
    torch.manual_seed(1)
    random_nets = [build_network(trained.network_config).eval() for _ in range(2)]
    meta = {k: v for k, v in trained.meta.items() if k not in ("branches", "format", "schema_version")}
    nets = {"student_a": trained.networks["student_a"], "student_b": random_nets[0],
            "teacher_a": random_nets[1], "teacher_b": trained.networks["student_b"]}
    return save_model_package(str(tmp_path_factory.mktemp("mixed") / "model"), meta, nets)


def test_branches_option_uses_the_networks_it_names(trained_model, mixed_model, tmp_path, capsys):
    case = trained_model.held_out[1]
    ref = sitk.GetArrayFromImage(sitk.ReadImage(case["label"]))
    score = {}
    for spec in ("student_a", "student_b", "teacher_a", "teacher_b", "teachers", "students"):
        labels, plan = predict(mixed_model, case["image"], tmp_path / f"{spec}.nii.gz", "--branches", spec,
                               capsys=capsys)
        assert plan["branches"] == {"teachers": ["teacher_a", "teacher_b"],
                                    "students": ["student_a", "student_b"]}.get(spec, [spec])
        score[spec] = mean_dice(labels, ref)
    # the random networks label nothing useful (measured 0.03-0.04); the trained ones do (0.3-0.55)
    assert max(score["student_b"], score["teacher_a"]) < 0.15 < min(score["student_a"], score["teacher_b"]), score
    # and each named branch is exactly the network stored under that name: the session model's students
    for mixed_name, session_name in (("student_a", "student_a"), ("teacher_b", "student_b")):
        alone, _ = predict(trained_model.model_dir, case["image"], tmp_path / f"s-{session_name}.nii.gz",
                           "--branches", session_name)
        np.testing.assert_array_equal(alone, predict(mixed_model, case["image"], tmp_path / f"m-{mixed_name}.nii.gz",
                                                     "--branches", mixed_name)[0])


def test_tta_overlap_batch_slabs_and_threads(trained_model, tmp_path, capsys):
    case = trained_model.held_out[2]["image"]
    model = trained_model.model_dir
    base, plan = predict(model, case, tmp_path / "base.nii.gz", capsys=capsys)
    assert (plan["tta"], plan["overlap"], plan["sw_batch_size"], plan["plan"]["n_slabs"]) == (False, 0.25, 2, 1)
    # --tta: recorded, and the mirrored passes change the labels (how well: test_tta_keeps_the_held_out_dice)
    tta, plan = predict(model, case, tmp_path / "tta.nii.gz", "--tta", capsys=capsys)
    assert plan["tta"] is True and (tta != base).mean() > 0.001
    # --overlap: more windows for more overlap, fewer for none
    counts = {}
    for overlap in ("0", "0.5"):
        labels, plan = predict(model, case, tmp_path / f"o{overlap}.nii.gz", "--overlap", overlap, capsys=capsys)
        assert plan["overlap"] == float(overlap)
        counts[overlap] = plan["windows"]
        assert mean_dice(labels, base) > 0.7  # other window seams, same anatomy (measured 0.79 for no overlap)
    assert counts["0"] < counts["0.5"]
    # --sw-batch-size: windows per pass only; in fp32 the labels do not change (bf16 kernels round differently per
    # batch size: measured 3 of 62271 voxels)
    labels, plan = predict(model, case, tmp_path / "b1.nii.gz", "--sw-batch-size", "1", "--amp", "off", capsys=capsys)
    assert plan["sw_batch_size"] == 1 and plan["precision"] == "fp32"
    np.testing.assert_array_equal(labels, predict(model, case, tmp_path / "b2.nii.gz", "--amp", "off",
                                                  capsys=capsys)[0])
    # --max-buffer-gb: a budget smaller than the grid's probabilities -> float16 slabs, stitched to nearly the same
    # labels (windows are placed per slab, so seams differ: measured 98.8% of voxels equal, Dice 0.89 / 0.93)
    labels, plan = predict(model, case, tmp_path / "slabs.nii.gz", "--max-buffer-gb", "0.0002", capsys=capsys)
    assert plan["plan"]["n_slabs"] > 1 and plan["plan"]["budget_bytes"] <= 0.0002 * 1024 ** 3 + 1
    assert (labels == base).mean() > 0.97 and min(dice_per_class(labels, base, [1, 2]).values()) > 0.8
    # --num-threads: torch's thread count for the run
    try:
        main(["predict", "--model", model, "--input", case, "--output", str(tmp_path / "t.nii.gz"), "--device",
              "cpu", "--num-threads", "2"])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


def test_tta_keeps_the_held_out_dice(trained_model, tmp_path):
    """Test-time augmentation must not make the segmentation worse than without it (mirroring z as well, which
    training never does, took the held-out anterior Dice from about 0.65 to 0.1)."""
    for i, case in enumerate(trained_model.held_out):
        ref = sitk.GetArrayFromImage(sitk.ReadImage(case["label"]))
        base, _ = predict(trained_model.model_dir, case["image"], tmp_path / f"b{i}.nii.gz")
        tta, _ = predict(trained_model.model_dir, case["image"], tmp_path / f"t{i}.nii.gz", "--tta")
        assert mean_dice(tta, ref) > mean_dice(base, ref) - 0.05, i


def test_uncertainty_is_the_normalised_entropy_of_the_students_mean(trained_model, tmp_path):
    """--uncertainty, recomputed independently: MONAI's sliding window over the two students' mean softmax on the
    network grid, entropy / ln(3), brought onto the scan's grid; and it is high where the labels are unsure."""
    from monai.inferers import sliding_window_inference

    from micd.data.preprocess import preprocess_image

    case = trained_model.held_out[0]
    out, unc = tmp_path / "l.nii.gz", tmp_path / "u.nii.gz"
    labels, _ = predict(trained_model.model_dir, case["image"], out, "--uncertainty", unc, "--amp", "off")  # fp32 as below
    written = sitk.ReadImage(str(unc))
    package = load_model_package(trained_model.model_dir)
    scan = sitk.ReadImage(case["image"])
    array, grid = preprocess_image(scan, package.plan)
    nets = [package.networks[b] for b in ("student_a", "student_b")]
    with torch.no_grad():
        probs = sliding_window_inference(
            torch.from_numpy(array)[None, None], tuple(package.patch_size), 2,
            lambda x: sum(torch.softmax(n(x, turnoff_drop=True)[0], 1) for n in nets) / 2,
            overlap=0.25, mode="gaussian", cval=float(array.min()))[0].numpy().astype(np.float64)
    entropy = -(probs * np.log(np.clip(probs, 1e-12, 1))).sum(0) / np.log(3)
    by_hand = sitk.GetImageFromArray(entropy.astype(np.float32))
    by_hand.CopyInformation(grid)
    by_hand = sitk.GetArrayFromImage(sitk.Resample(by_hand, scan, sitk.Transform(), sitk.sitkLinear, 0.0))
    got = sitk.GetArrayFromImage(written)
    assert got.shape == by_hand.shape and np.abs(got - by_hand).max() < 1e-3
    # unsure where the label is foreground or next to it, sure far from it
    fg = labels > 0
    assert got[fg].mean() > 3 * got[~fg].mean()


@pytest.mark.parametrize("fraction,held_out", [("0", 0), ("0.4", 2)])
def test_val_fraction_holds_out_that_share_of_the_labeled_cases(tmp_path, shared_data, fraction, held_out):
    ds = write_dataset(tmp_path, n_lab=5, n_unlab=1, n_val=0)
    run = tmp_path / "run"
    p = run_micd("train", "--dataset", ds, "--out", str(run), "--iterations", "2", "--method", "supervised",
                 "--val-fraction", fraction, "--patch-size", "16", "32", "16", "--filters", "4", "--device", "cpu",
                 "--num-threads", "1")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    events = [json.loads(line) for line in open(run / "events.jsonl", encoding="utf-8")]
    (start,) = [e for e in events if e["event"] == "start"]
    assert (start["labeled"], start["validation"]) == (5 - held_out, held_out)
    validations = [e for e in events if e["event"] == "validation"]
    meta = json.load(open(run / "model" / "model.json", encoding="utf-8"))
    if held_out:
        assert validations and meta["weights_from"].startswith("best validation")
    else:
        assert not validations and meta["weights_from"] == "last" and meta["metrics"]["best_mean_dice"] is None


def test_precedence_defaults_saved_run_config_flags(tmp_path):
    """defaults < the resumed run's config.json < --config < flags; where/how-to-run options are not restored."""
    import argparse

    from micd.training.options import add_arguments, resolve

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    (tmp_path / "c.json").write_text(json.dumps({"lr": 0.2, "seed": 7, "mask-shared": False}), encoding="utf-8")
    saved = {"lr": 0.5, "seed": 1, "filters": 8, "iterations": 100, "device": "cuda", "num_threads": 9,
             "mask_shared": True}
    o = resolve(parser.parse_args(["--config", str(tmp_path / "c.json"), "--seed", "9"]), saved)
    assert (o.filters, o.iterations) == (8, 100)  # the saved run's, over the defaults
    assert o.lr == 0.2 and o.mask_shared is False  # --config over the saved run
    assert o.seed == 9  # the flag over --config
    assert (o.device, o.num_threads) == ("auto", 0)  # per invocation: not taken from the saved run
    assert o.batch_labeled == 2  # untouched: the default


def test_lr_schedule_constant_keeps_the_learning_rate(tmp_path, shared_data):
    """--lr-schedule constant: every iteration steps with --lr itself (poly, the default, is checked above)."""
    ds = write_dataset(tmp_path, n_lab=1, n_unlab=1, n_val=0)
    p = run_micd("train", "--dataset", ds, "--out", str(tmp_path / "run"), "--iterations", "3", "--lr-schedule",
                 "constant", "--lr", "0.02", "--method", "supervised", "--patch-size", "16", "32", "16", "--filters",
                 "4", "--device", "cpu", "--num-threads", "1", "--val-fraction", "0")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    lrs = [e["lr"] for e in map(json.loads, open(tmp_path / "run" / "events.jsonl")) if e["event"] == "iteration"]
    assert len(lrs) == 3 and all(v == pytest.approx(0.02) for v in lrs)
