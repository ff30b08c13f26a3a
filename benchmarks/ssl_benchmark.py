"""Semi-supervised benchmark on the shared data: MICD against supervised, mean teacher, CPS and DHC.

Datasets (`--dataset`, default hippocampus): `hippocampus` (the protocol below) and `la`, the Left Atrium set
(splits/la.json, written by make_split.py: UA-MT's 20 test cases; 4 or 8 labeled cases, the first of train.list;
4 fixed labeled validation cases; 68 unlabeled cases whose labels are never read; label 1 left_atrium, modality MR).

Protocol: the recorded split in benchmarks/splits/hippocampus.json (50 test cases; 2 or 5 labeled cases taken from
a fixed pool of 10; 200 unlabeled cases whose labels are never read). The last 5 cases of the pool are a labeled
validation set, the same for every run: `micd train` validates ten times per run and keeps the best weights
(RUN/model); the last weights are exported beside them (RUN/model-last) and both are scored on the test cases.
Every method gets the same networks, patch, batch, iterations and seeds, and, through the trainer's own generator
for labeled patches, the same labeled patch sequence for a seed. Peers run with their published defaults
(CPS/DHC: pseudo-labels from the training forward, DHC's class weights); MICD with ours (see micd/methods/micd.py);
supervised as plain supervised training (`--class-weights none`; `supervised-micd-weights` is the product's default).

Every finished run is recorded at once in RESULTS/<preset>/runs/<method>-L<k>-s<seed>.json and skipped when the
script is started again, so a long benchmark can run in the background and survive interruption. Training,
prediction and evaluation each resume from what is already on disk. The summary goes to RESULTS/ssl-<preset>.json
and .md; `--report` only rebuilds it from the recorded runs. Order: 2 labeled (all methods, seed by seed), then 5
labeled, then the ablations, so a partial run already answers the first question.

Per row: mean Dice over seeds; the paired difference to supervised and to the best peer, over test cases x seeds,
as {"mean", "ci95", "n"} (t interval over the n paired per-case differences); the foreground ratio.

Equal time (`--time-budget 7m [21m ...]`): every method trains with `micd train --time-budget B` instead of a fixed
iteration count (the count is planned by each run from its own timed steps and recorded with the plan); these records
(file names ending in -t<budget>) and their summary (RESULTS/ssl-<preset>[-<dataset>]-equal-time.{json,md}) are kept
apart from the equal-iteration ones. Records of another dataset than hippocampus live in
RESULTS/<preset>/runs/<dataset>/ and are summarised in RESULTS/ssl-<preset>-<dataset>.{json,md}; hippocampus' paths
are as they always were.

Presets (for la: 4 and 8 labeled, 4 validation cases, patch 32x64x64, no ablations by default; smoke 16x32x32):
  cpu        3 seeds x {2, 5} labeled x 5 methods + 6 MICD ablations at 2 labeled, 1000 iterations, width 8,
             patch 32x48x32, aimed at about 6 h of 2 cores; what the recorded runs took is the report's compute
             line (for the committed cpu table, more than the aim)
  cpu-quick  1 seed, 2 and 5 labeled, 1000 iterations, no validation set (the first, superseded protocol)
  smoke      1 seed, 2 labeled, 40 iterations at width 4: the script end to end in a few minutes (not a result)
  gpu        the spec's full-size settings: width 32, 6000 iterations, patch 32x64x48, 3 seeds
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Dict, List, Optional

import numpy as np

from micd.cli import tolerant_console

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
METHODS = ["supervised", "mean-teacher", "cps", "dhc", "micd"]
# Ablations: a name, the method it runs and the extra `micd train` flags.
VARIANTS = {
    "micd-noweights": ("micd", ["--class-weights", "none"]),
    "micd-no-mcpc": ("micd", ["--term-weights", "0", "1", "1"]),
    "micd-no-cfc": ("micd", ["--term-weights", "1", "0", "1"]),
    "micd-no-cmd": ("micd", ["--term-weights", "1", "1", "0"]),
    "micd-no-masking": ("micd", ["--mask-ratio", "0"]),
    "micd-dhc-weights": ("micd", ["--class-weights", "dhc"]),
    # every issue-9 fix off: the literal transcription (DHC's weights and pseudo-labels, zero fill, 8^3 blocks,
    # clean and masked inputs in one BatchNorm batch)
    "micd-literal": ("micd", ["--class-weights", "dhc", "--pseudo-labels", "train_pass", "--mask-fill", "zero",
                              "--mask-block", "8", "--bn-passes", "joint"]),
    # the peers with MICD's BatchNorm rule (labeled inputs normalised on their own and alone setting the running
    # statistics): is MICD's gain over a peer only this rule, which any of them could use?
    "mean-teacher-split-bn": ("mean-teacher", ["--bn-passes", "separate"]),
    "cps-split-bn": ("cps", ["--bn-passes", "separate"]),
    "dhc-split-bn": ("dhc", ["--bn-passes", "separate"]),
    # supervised with MICD's class weights (DistDW from its labeled predictions): how much of MICD's gain over
    # supervised is the weighting of its supervised loss rather than the unlabeled data?
    "supervised-micd-weights": ("supervised", ["--class-weights", "dhc-bgfloor"]),
    # one issue-9 default at a time set back to the literal form (micd-dhc-weights above is the class weights'):
    # each default's own share, where micd-literal shows only all of them together
    "micd-train-pass-labels": ("micd", ["--pseudo-labels", "train_pass"]),
    "micd-zero-fill": ("micd", ["--mask-fill", "zero"]),
    "micd-block8": ("micd", ["--mask-block", "8"]),
    "micd-joint-bn": ("micd", ["--bn-passes", "joint"]),
    # stabilisers from the literature that the spec leaves open, each added to MICD's defaults: a supervised
    # warm-up (no unlabeled terms for the first fifth of the run) and FixMatch's confidence threshold (0.95) on
    # the pseudo-labels
    # (recorded with the warm-up's steps the whole step at β = 0, kept so by --warmup-step full)
    "micd-warmup": ("micd", ["--warmup-fraction", "0.2", "--warmup-step", "full"]),
    "micd-threshold": ("micd", ["--pseudo-threshold", "0.95"]),
    # issue 32 item 4, a cost-aware form for equal time: the first half of the iterations are supervised steps (the
    # labeled batch alone, about a quarter of MICD's step), the Gaussian ramp-up spans the second half. Without it
    # the ramp keeps β under a tenth of β_max for the first 30 % of the run, steps that cost MICD's whole price.
    "micd-supervised-warmup": ("micd", ["--warmup-fraction", "0.5"]),
    # item 4: MICD without the two terms the ablation found earning nothing measurable (CFC, CMD); since a term
    # weighted 0 is not computed, its step costs about three quarters of MICD's, so at equal time it trains longer
    "micd-mcpc-only": ("micd", ["--term-weights", "1", "0", "0"]),
    # item 5: nnU-Net's default augmentation (rotation, scaling, noise, blur, brightness, contrast, low resolution,
    # gamma; micd.data.augment) on the product's supervised default and on MICD: with so few labeled cases it may
    # matter more than any unlabeled term. On LA the four labeled scans show the atrium brighter over its background
    # (0.8-1.6 z-units after micd's normalisation) than the two validation scans the models fail on most (0.5)
    "supervised-micd-weights-nnunet-aug": ("supervised", ["--class-weights", "dhc-bgfloor", "--augment", "nnunet"]),
    "micd-nnunet-aug": ("micd", ["--augment", "nnunet"]),
}
# Flags that pin a method's row to the form the benchmark compares: its supervised row is plain supervised training
# (unweighted Dice + CE, the literature's baseline), which `micd train --method supervised` no longer is by default.
METHOD_FLAGS = {"supervised": ["--class-weights", "none"]}
ABLATIONS = ["micd-no-mcpc", "micd-no-cfc", "micd-no-cmd", "micd-no-masking", "micd-dhc-weights", "micd-literal"]
EXTERNAL = ["nnunet"]  # rows trained by another tool (benchmarks/nnunet_row.py), recorded and paired like ours
ORDER = METHODS + list(VARIANTS) + EXTERNAL
LABEL_NAMES = {"1": "hippocampus_anterior", "2": "hippocampus_posterior"}
WEIGHTED = "supervised-micd-weights"  # the baseline every row is also paired with (paired_diff_vs_supervised_weighted)
# Each dataset: its folder under shared/data, its recorded split (benchmarks/make_split.py), its label names (with the
# short forms of the report's columns) and the modality written into every run's dataset.json. The LA images are
# stored as int16 = z x 1000, z-scored by their providers over more than the crop (a crop's mean is about +0.9 z):
# micd's MR normalisation z-scores each crop again after clipping it to its 0.5-99.5th percentiles (undoing the x 1000,
# re-centring and clipping the bright tail); declaring MR matters, as micd would guess CT from their negative values
# (1st percentile below -500 in 80 of the 100 volumes).
DATASETS = {
    "hippocampus": dict(folder="hippocampus", split="hippocampus.json", labels=LABEL_NAMES, modality="MR",
                        title="Hippocampus (shared data)",
                        short={"hippocampus_anterior": "anterior", "hippocampus_posterior": "posterior"}),
    "la": dict(folder="la", split="la.json", labels={"1": "left_atrium"}, modality="MR",
               title="Left atrium (shared data, LGE-MRI at 1.25 mm; UA-MT's test list)",
               short={"left_atrium": "left atrium"}),
}

PRESETS = {
    "cpu": dict(seeds=[0, 1, 2], labeled=[2, 5], iterations=1000, filters=8, patch=[32, 48, 32], device="cpu",
                threads=2, validation=5, ablations=ABLATIONS),
    "cpu-quick": dict(seeds=[0], labeled=[2, 5], iterations=1000, filters=8, patch=[32, 48, 32], device="cpu",
                      threads=2, validation=0, ablations=["micd-noweights"]),
    "smoke": dict(seeds=[0], labeled=[2], iterations=40, filters=4, patch=[16, 32, 16], device="cpu", threads=2,
                  validation=5, ablations=[]),
    "gpu": dict(seeds=[0, 1, 2], labeled=[2, 5], iterations=6000, filters=32, patch=[32, 64, 48], device="cuda",
                threads=0, validation=5, ablations=ABLATIONS),
}


# What differs for a dataset other than hippocampus, by preset: its labeled counts (the literature's 4 and 8 of 80 for
# LA), the validation cases at the end of its labeled pool, a patch for its larger crops (LA: about 44x71x95 voxels
# z y x after preprocessing; micd's own planner would pick 48x80x96) and no ablations unless named.
DATASET_PRESETS = {
    "la": {
        "cpu": dict(labeled=[4, 8], validation=4, patch=[32, 64, 64], ablations=[]),
        "cpu-quick": dict(labeled=[4, 8], validation=0, patch=[32, 64, 64], ablations=[]),
        "smoke": dict(labeled=[4], validation=4, patch=[16, 32, 32], ablations=[]),
        "gpu": dict(labeled=[4, 8], validation=4, patch=[48, 80, 96], ablations=[]),
    },
}


def config(preset: str, dataset: str = "hippocampus") -> dict:
    """The preset's settings for a dataset (hippocampus: the preset as it is)."""
    return dict(PRESETS[preset], **DATASET_PRESETS.get(dataset, {}).get(preset, {}))


def parse_budget(text: str) -> float:
    """Seconds of a --time-budget string, as `micd train` reads it."""
    try:
        from micd.contract import parse_duration
    except ImportError:  # older micd: the parser lived with the budget arithmetic
        from micd.training.budget import parse_duration
    return parse_duration(text)


def budget_tag(budget: str) -> str:
    """The file-name form of a budget ('7m' -> 't7m')."""
    return "t" + "".join(c for c in str(budget) if c.isalnum() or c == ".")


def scope_parts(dataset: str, timed: bool) -> List[str]:
    """Sub-folders of RESULTS/<preset>/runs/ and WORK/<preset>/ that keep a dataset's and equal-time records apart
    (none for hippocampus at equal iterations: the paths it always had)."""
    return ([] if dataset == "hippocampus" else [dataset]) + (["equal-time"] if timed else [])


def summary_name(preset: str, dataset: str, timed: bool) -> str:
    return f"ssl-{preset}" + ("" if dataset == "hippocampus" else f"-{dataset}") + ("-equal-time" if timed else "")


def micd(args: List[str], log: str, threads: int) -> Dict[str, float]:
    """Run a micd command, appending its output to `log`; return wall and CPU seconds of the child."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    with open(log, "a", encoding="utf-8") as f:
        rc = subprocess.call([sys.executable, "-m", "micd", *args], stdout=f, stderr=subprocess.STDOUT, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc != 0:
        raise RuntimeError(f"micd {' '.join(args[:1])} failed ({rc}); see {log}")
    return {"wall_s": time.time() - t0, "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)}


def link_folder(folder: str, sources: Dict[str, str]) -> str:
    os.makedirs(folder, exist_ok=True)
    for name, src in sources.items():
        dst = os.path.join(folder, name)
        if not os.path.lexists(dst):
            os.symlink(src, dst)  # the shared data is linked, never copied
    return folder


def run_one(method: str, k: int, seed: int, cfg: dict, split: dict, hip: str, work: str, runs_dir: str,
            preset: str, dataset: str = "hippocampus", time_budget: Optional[str] = None) -> dict:
    """Train, predict, evaluate and record one run. `hip`: the dataset's folder in the shared data; `time_budget`:
    train with `micd train --time-budget` (equal time) instead of the preset's iterations."""
    name = f"{method}-L{k}-s{seed}" + (f"-{budget_tag(time_budget)}" if time_budget else "")
    record = os.path.join(runs_dir, name + ".json")
    if os.path.exists(record):
        return json.load(open(record))
    d = os.path.join(work, name)
    os.makedirs(d, exist_ok=True)
    log = os.path.join(d, "log.txt")
    ds_path = write_run_dataset(d, split, hip, k, cfg.get("validation", 0), dataset)
    n_val = cfg.get("validation", 0)
    img = lambda n: os.path.join(hip, "imagesTr", n)  # noqa: E731
    lab = lambda n: os.path.join(hip, "labelsTr", n)  # noqa: E731
    run = os.path.join(d, "run")
    model = os.path.join(run, "model")
    timing = {"wall_s": None, "cpu_s": None}
    timing_file = os.path.join(d, "train_timing.json")
    if not os.path.isfile(os.path.join(model, "model.json")):
        resume = ["--resume"] if os.path.isdir(os.path.join(run, "checkpoints")) else []
        base, extra = VARIANTS.get(method, (method, METHOD_FLAGS.get(method, [])))
        # equal time: the budget plans the count; the threads are pinned as at equal iterations (no thread probe)
        length = (["--time-budget", time_budget] + (["--num-threads", str(cfg["threads"])] if cfg["threads"] else [])
                  if time_budget else ["--iterations", str(cfg["iterations"])])
        t = micd(["train", "--dataset", ds_path, "--out", run, "--method", base, *extra, *length,
                  "--patch-size", *map(str, cfg["patch"]), "--filters", str(cfg["filters"]),
                  "--device", cfg["device"], "--seed", str(seed), "--checkpoint-every", "250", "--val-fraction", "0",
                  *(["--export-last"] if n_val else []),
                  "--cache-dir", os.path.join(work, "cache"), "--log-every", "50", "--progress", "none", *resume],
                 log, cfg["threads"])
        prev = json.load(open(timing_file)) if os.path.exists(timing_file) else {"wall_s": 0.0, "cpu_s": 0.0}
        timing = {k_: prev[k_] + t[k_] for k_ in t}
        json.dump(timing, open(timing_file, "w", encoding="utf-8"))
    elif os.path.exists(timing_file):
        timing = json.load(open(timing_file))
    test_imgs = link_folder(os.path.join(work, "test_images"), {n: img(n) for n in split["test"]})
    test_labs = link_folder(os.path.join(work, "test_labels"), {n: lab(n) for n in split["test"]})
    evaluations = {}
    for which, mdir in (("best", model), ("last", os.path.join(run, "model-last"))):
        if not os.path.isdir(mdir):
            continue  # no validation set: RUN/model holds the last weights
        preds = os.path.join(d, "predictions" if which == "best" else "predictions-last")
        if len(os.listdir(preds) if os.path.isdir(preds) else []) < len(split["test"]):
            micd(["predict", "--model", mdir, "--input", test_imgs, "--output", preds, "--device", cfg["device"],
                  "--overwrite"], log, cfg["threads"])  # a partial folder from an interrupted run is ours
        ev_path = os.path.join(d, "evaluation.json" if which == "best" else "evaluation-last.json")
        if not os.path.exists(ev_path):
            micd(["evaluate", "--pred", preds, "--label", test_labs, "--json", ev_path, "--overwrite", "--labels",
                  mdir], log, cfg["threads"])
        evaluations[which] = json.load(open(ev_path))
    events = [json.loads(l) for l in open(os.path.join(run, "events.jsonl")) if l.strip()]
    start = [e for e in events if e["event"] == "start"][-1]
    spi = [e["sec_per_iter"] for e in events if e["event"] == "iteration"]
    curve = [[e["iter"], round(e["mean_dice"], 4)] for e in events if e["event"] == "validation"]
    meta = json.load(open(os.path.join(model, "model.json")))
    prov = meta["provenance"]
    ev = evaluations["best"]
    result = {"method": method, "labeled": k, "seed": seed, "preset": preset, "dataset": dataset,
              # equal time: the budget as given and the count the run planned for it (its `start` event)
              "time_budget": time_budget, "iterations": start["iterations"] if time_budget else cfg["iterations"],
              "filters": cfg["filters"], "patch_size": cfg["patch"], "device": start["device"], "amp": start["amp"],
              "unlabeled": len(split["unlabeled"]), "test_cases": len(split["test"]), "validation_cases": n_val,
              "weights_from": meta.get("weights_from"), "validation_curve": curve,
              # Training-loop time from the model's provenance (summed over resumes); the process times include
              # start-up and preprocessing.
              "train_wall_s": prov.get("wall_s"), "train_cpu_s": prov.get("cpu_s"),
              "process_wall_s": timing["wall_s"], "process_cpu_s": timing["cpu_s"],
              "sec_per_iter_median": float(np.median(spi)) if spi else None,
              "foreground_ratio": foreground_ratio(ev),
              "final_class_weights": meta.get("metrics", {}).get("final_class_weights"),
              "evaluation": ev, "evaluation_last": evaluations.get("last"),
              "foreground_ratio_last": foreground_ratio(evaluations["last"]) if "last" in evaluations else None,
              **machine(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if time_budget:
        result.update({"time_budget_s": start.get("time_budget_s"), "budget_plan": start.get("budget_plan"),
                       "sec_per_iter_expected": start.get("sec_per_iter_expected"),
                       "expected_total_s": start.get("expected_total_s"), "threads": start.get("threads")})
    tmp = record + ".tmp"
    json.dump(result, open(tmp, "w", encoding="utf-8"), indent=1)
    os.replace(tmp, record)  # recorded at once; a restart skips it
    return result


def write_run_dataset(folder: str, split: dict, hip: str, k: int, n_val: int, dataset: str = "hippocampus") -> str:
    """The run's dataset.json: the first k cases of the split's labeled pool, its last n_val as the validation set,
    every unlabeled case (image only: their labels are never read)."""
    img = lambda n: os.path.join(hip, "imagesTr", n)  # noqa: E731
    lab = lambda n: os.path.join(hip, "labelsTr", n)  # noqa: E731
    pool = split["labeled_pool"]
    spec = DATASETS[dataset]
    ds = {"labels": spec["labels"], "modality": spec["modality"],
          "labeled": [{"image": img(n), "label": lab(n)} for n in pool[:k]],
          "unlabeled": [img(n) for n in split["unlabeled"]]}
    if n_val:
        assert k <= len(pool) - n_val, "the validation cases must not be training cases"
        ds["validation"] = [{"image": img(n), "label": lab(n)} for n in pool[len(pool) - n_val:]]
    ds_path = os.path.join(folder, "dataset.json")
    json.dump(ds, open(ds_path, "w", encoding="utf-8"), indent=1)
    return ds_path


def warm_cache(cfg: dict, split: dict, hip: str, work: str, k: int, dataset: str) -> None:
    """Preprocess every training case into WORK's cache before the first run under a time budget: the budget counts
    from the start of `micd train`, so the run that preprocessed the data would otherwise get fewer iterations than
    the others. One untimed 1-iteration MICD run with the largest labeled set (all cases it reads), then removed."""
    d = os.path.join(work, f"cache-warmup-{dataset}")
    marker = os.path.join(d, f"warm-L{k}.json")
    if os.path.exists(marker):
        return
    os.makedirs(d, exist_ok=True)
    ds_path = write_run_dataset(d, split, hip, k, cfg.get("validation", 0), dataset)
    run = os.path.join(d, "run")
    import shutil

    shutil.rmtree(run, ignore_errors=True)
    t = micd(["train", "--dataset", ds_path, "--out", run, "--method", "micd", "--iterations", "1", "--patch-size",
              *map(str, cfg["patch"]), "--filters", str(cfg["filters"]), "--device", cfg["device"],
              "--val-fraction", "0", "--cache-dir", os.path.join(work, "cache"), "--progress", "none"],
             os.path.join(d, "log.txt"), cfg["threads"])
    shutil.rmtree(run, ignore_errors=True)
    json.dump({"labeled": k, "wall_s": t["wall_s"], "finished": time.strftime("%Y-%m-%dT%H:%M:%S")},
              open(marker, "w", encoding="utf-8"))


def machine() -> Dict[str, object]:
    """What a training run's numbers depend on beyond the code: the same seed trains differently on another CPU
    kind (bf16 kernels) and may on another torch."""
    try:
        model = next(l for l in open("/proc/cpuinfo") if l.startswith("model name")).split(":", 1)[1].strip()
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = None
    return {"host": platform.node(), "cpu_model": model, "cpu_flags": cpu_flags(), "torch": torch_version}


def cpu_flags() -> List[str]:
    """The CPU flags that decide the autocast choice, recorded beside every time."""
    try:
        flags = next(l for l in open("/proc/cpuinfo") if l.startswith("flags")).split(":", 1)[1].split()
    except (OSError, StopIteration):
        return []
    return sorted(f for f in flags if f.startswith(("amx", "avx512_bf16", "avx512f", "avx2")))


def cpu_kind(flags: Optional[List[str]]) -> Optional[str]:
    """One record's CPU kind as one string (its autocast-relevant flags), None where it was not recorded."""
    return " ".join(flags or []) or None


def kind_of(run: dict) -> str:
    """The CPU kind a recorded run trained on, for grouping and table cells."""
    return cpu_kind(run.get("cpu_flags")) or "not recorded"


def foreground_ratio(ev: dict) -> Optional[float]:
    """Mean over test cases of (predicted foreground voxels / reference foreground voxels): 1 is right, >1 means
    over-segmentation."""
    import SimpleITK as sitk

    if not all(os.path.exists(case["prediction"]) and os.path.exists(case["reference"]) for case in ev["cases"]):
        return None  # the files are gone (another machine's runs folder): no ratio rather than no report
    ratios = []
    for case in ev["cases"]:
        p = sitk.GetArrayFromImage(sitk.ReadImage(case["prediction"]))  # a copy: a view would outlive its image
        r = sitk.GetArrayFromImage(sitk.ReadImage(case["reference"]))
        ratios.append(float((p > 0).sum()) / max(1.0, float((r > 0).sum())))
    return float(np.mean(ratios))


# ------------------------------------------------------------------------------------------------ report
def per_case_scores(ev: dict) -> Dict[str, Dict[str, Dict[str, float]]]:
    """{case: {label: {"dice":…, "hd95":…}}} from a `micd evaluate` JSON."""
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    for case in ev["cases"]:
        out[case["case"]] = {lab: {"dice": v.get("dice"), "hd95": v.get("hd95")} for lab, v in case["metrics"].items()}
    return out


def case_mean_dice(scores: Dict[str, Dict[str, dict]]) -> Dict[str, float]:
    return {c: float(np.mean([v["dice"] for v in labs.values()])) for c, labs in scores.items()}


def paired(a_runs: List[dict], b_runs: List[dict], key: str = "evaluation") -> Optional[dict]:
    """Mean per-case difference of mean Dice (a − b) over test cases x shared seeds, with a 95 % t interval.

    Cases of one seed share the models, and seeds share the cases, so the interval treats the n pairs as
    independent: read it as a guide, the per-seed means are in the row too."""
    from scipy import stats

    by_seed = {r["seed"]: r for r in b_runs}
    diffs: List[float] = []
    for r in a_runs:
        o = by_seed.get(r["seed"])
        if o is None or r.get(key) is None or o.get(key) is None:
            continue
        am, bm = case_mean_dice(per_case_scores(r[key])), case_mean_dice(per_case_scores(o[key]))
        diffs += [am[c] - bm[c] for c in sorted(set(am) & set(bm))]
    if len(diffs) < 2:
        return None
    d = np.asarray(diffs)
    half = float(stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
    return {"mean": float(d.mean()), "ci95": [float(d.mean() - half), float(d.mean() + half)], "n": int(len(d))}


def seed_means(rs: List[dict], key: str = "evaluation") -> List[float]:
    return [float(np.mean(list(case_mean_dice(per_case_scores(r[key])).values())))
            for r in sorted(rs, key=lambda r: r["seed"]) if r.get(key) is not None]


def same_kind(runs: List[dict], pool: List[dict]) -> List[dict]:
    """For each run, the run of `pool` with its seed trained on its CPU kind (where there is one): a pair across CPU
    kinds would carry the kinds' numerical difference besides the one compared."""
    out = []
    for r in runs:
        out += [o for o in pool if o["seed"] == r["seed"] and kind_of(o) == kind_of(r)][:1]
    return out


def kind_comparisons(groups: Dict[tuple, List[dict]], others: List[dict]) -> List[dict]:
    """Each table row that also has runs on another CPU kind (RESULTS/<preset>/other-kinds/): the same method,
    labels and seeds on the two kinds, so the reader sees how large the kinds' difference is."""
    out = []
    by_group: Dict[tuple, List[dict]] = {}
    for r in others:
        by_group.setdefault((r["labeled"], r["method"]), []).append(r)
    for g, rs in sorted(by_group.items()):
        here = groups.get(g, [])
        for kind in sorted({kind_of(r) for r in rs}):
            there = [r for r in rs if kind_of(r) == kind]
            seeds = sorted({r["seed"] for r in there} & {r["seed"] for r in here if kind_of(r) != kind})
            if not seeds:
                continue
            a = [r for r in here if r["seed"] in seeds]
            b = [r for r in there if r["seed"] in seeds]
            out.append({"labeled": g[0], "method": g[1], "seeds": seeds, "other_kind": kind,
                        "kind": sorted({kind_of(r) for r in a}),
                        "mean_dice": float(np.mean(seed_means(a))), "other_mean_dice": float(np.mean(seed_means(b))),
                        "paired_diff": paired(a, b)})
    return out


def summarize_all(runs: List[dict], others: Optional[List[dict]] = None, dataset: str = "hippocampus") -> dict:
    """`summarize` for each time budget among the runs (None: equal iterations) and the rows of all of them: a row
    pairs only with rows of its own budget."""
    budgets: Dict[Optional[str], List[dict]] = {}
    for r in runs:
        budgets.setdefault(r.get("time_budget"), []).append(r)
    if set(budgets) <= {None}:
        return summarize(runs, others, dataset)
    out: dict = {"rows": [], "supervised_validation_curves": {}, "best_validation": {}, "kind_comparisons": [],
                 "compute": compute(runs)}
    for b in sorted(budgets, key=lambda b: (b is not None, parse_budget(b) if b else 0.0)):
        s = summarize(budgets[b], others if b is None else [], dataset)
        prefix = f"{budget_tag(b)}-" if b else ""
        out["rows"] += s["rows"]
        curves = s["supervised_validation_curves"]
        out["supervised_validation_curves"].update({prefix + k: v for k, v in curves.items()})
        out["best_validation"].update({prefix + k: v for k, v in s["best_validation"].items()})
        out["kind_comparisons"] += [dict(c, time_budget=b) for c in s["kind_comparisons"]]
    return out


def summarize(runs: List[dict], others: Optional[List[dict]] = None, dataset: str = "hippocampus") -> dict:
    """The table's rows from the recorded runs (of one dataset and one time budget or none); `others` are runs
    replaced in the table by a run on another CPU kind, kept because rows trained on that kind (ablations) pair with
    them."""
    others = others or []
    label_names = list(DATASETS[dataset]["labels"].values())
    groups: Dict[tuple, List[dict]] = {}
    for r in runs:
        groups.setdefault((r["labeled"], r["method"]), []).append(r)
    # full MICD on every CPU kind it ran on: an ablation pairs with the MICD run of its own seed and kind
    micd_pool = {k: groups.get((k, "micd"), []) + [o for o in others if o["method"] == "micd" and o["labeled"] == k]
                 for k in {g[0] for g in groups}}
    means = {g: float(np.mean(seed_means(rs))) for g, rs in groups.items()}
    rows = []
    # full MICD's mean best validation Dice over exactly the runs each ablation pairs with, for the ablation table
    micd_val = {}
    for (k, method), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], ORDER.index(kv[0][1]))):
        per_label = {}
        for r in sorted(rs, key=lambda r: r["seed"]):
            sc = per_case_scores(r["evaluation"])
            for lab in label_names:
                d = [c[lab]["dice"] for c in sc.values() if lab in c]
                h = [c[lab]["hd95"] for c in sc.values() if lab in c and c[lab]["hd95"] is not None]
                per_label.setdefault(lab, {"dice": [], "hd95": []})
                per_label[lab]["dice"].append(float(np.mean(d)))
                per_label[lab]["hd95"].append(float(np.mean(h)) if h else float("nan"))
        per_seed = seed_means(rs)
        last = seed_means(rs, "evaluation_last")
        # the strongest other method of the five at this label count (by mean Dice)
        peers = [m for m in METHODS if m != method and m != "micd" and (k, m) in groups]
        best_peer = max(peers, key=lambda m: means[(k, m)]) if peers else None
        base = VARIANTS[method][0] if method in VARIANTS else None
        micd_ref = same_kind(rs, micd_pool[k]) if base == "micd" and micd_pool.get(k) else None
        base_ref = same_kind(rs, groups.get((k, base), [])) if base not in (None, "micd") else None
        if micd_ref is not None:
            micd_val[f"{k}-{method}"] = best_validation_mean(micd_ref)
        rows.append({
            "dataset": dataset, "time_budget": rs[0].get("time_budget"),
            "labeled": k, "method": method, "seeds": sorted(r["seed"] for r in rs),
            "mean_dice": float(np.mean(per_seed)), "std_dice": float(np.std(per_seed)),
            "per_seed_mean_dice": per_seed,
            "mean_dice_last": float(np.mean(last)) if last else None, "per_seed_mean_dice_last": last,
            "best_iter": [r.get("weights_from") for r in rs],
            "best_validation_mean": best_validation_mean(rs),
            # the default-change rule reads this: a variant replaces MICD's default only if ahead at every seed
            "validation_ahead_of_micd": validation_ahead(rs, micd_ref) if micd_ref is not None else None,
            "labels": {lab: {"dice": float(np.mean(v["dice"])), "dice_std": float(np.std(v["dice"])),
                             "hd95": float(np.nanmean(v["hd95"])) if not all(np.isnan(v["hd95"])) else None}
                       for lab, v in per_label.items()},
            "paired_diff_vs_supervised": (paired(rs, groups[(k, "supervised")])
                                          if method != "supervised" and (k, "supervised") in groups else None),
            # against supervised with MICD's class weights (the product's supervised default), same seeds
            "paired_diff_vs_supervised_weighted": (paired(rs, groups[(k, WEIGHTED)])
                                                   if method != WEIGHTED and (k, WEIGHTED) in groups else None),
            "best_peer": best_peer,
            "paired_diff_vs_best_peer": paired(rs, groups[(k, best_peer)]) if best_peer else None,
            "paired_diff_vs_micd": paired(rs, micd_ref) if micd_ref is not None else None,
            "micd_kinds": sorted({kind_of(r) for r in micd_ref}) if micd_ref is not None else None,
            # a peer variant against its own method (same seeds and CPU kind) and against MICD
            "base_method": base if base_ref else None,
            "base_mean_dice": float(np.mean(seed_means(base_ref))) if base_ref else None,
            "base_foreground_ratio": float(np.mean([r["foreground_ratio"] for r in base_ref])) if base_ref else None,
            "paired_diff_vs_base": paired(rs, base_ref) if base_ref else None,
            "paired_diff_micd_minus_this": (paired(same_kind(rs, micd_pool.get(k, [])), rs)
                                            if base_ref and micd_pool.get(k) else None),
            "iterations": rs[0]["iterations"], "device": rs[0]["device"], "amp": rs[0].get("amp"),
            # per seed (in the order of `seeds`): equal time plans each run's count from its own timed steps
            "iterations_by_seed": [r["iterations"] for r in sorted(rs, key=lambda r: r["seed"])],
            "time_budget_s": rs[0].get("time_budget_s"),
            "cpu_flags": rs[0].get("cpu_flags"),
            # per seed: the same seed and code train differently under other bf16 kernels (AMX or not), so a row
            # compared across machines carries that difference too
            "cpu_flags_by_seed": {str(r["seed"]): cpu_kind(r.get("cpu_flags")) for r in rs},
            "train_wall_s_mean": float(np.mean([r["train_wall_s"] for r in rs if r.get("train_wall_s") is not None] or
                                               [float("nan")])),
            "train_cpu_s_mean": float(np.mean([r["train_cpu_s"] for r in rs if r.get("train_cpu_s") is not None] or
                                              [float("nan")])),
            "sec_per_iter_median": float(np.median([r.get("sec_per_iter_median") or float("nan") for r in rs])),
            # records of another tool (nnunet_row.py) carry the evaluation only: their ratio comes from the prediction
            # files, which live in the (uncommitted) runs folder; without them the record has none
            "foreground_ratio": float(np.mean([x for x in (r.get("foreground_ratio") or
                                                           foreground_ratio(r["evaluation"]) for r in rs)
                                               if x is not None] or [float("nan")])),
            "final_class_weights": [r.get("final_class_weights") for r in rs],
        })
    curves = {f"L{k}-s{r['seed']}": r.get("validation_curve") for (k, m), rs in groups.items() if m == "supervised"
              for r in rs}
    for row in rows:  # every run's validation curve, for the plateau question of the weighted baseline and MICD
        row["validation_curves"] = {str(r["seed"]): r.get("validation_curve")
                                    for r in sorted(groups[(row["labeled"], row["method"])], key=lambda r: r["seed"])}
    return {"rows": rows, "supervised_validation_curves": curves, "best_validation": micd_val,
            "kind_comparisons": kind_comparisons(groups, others), "compute": compute(runs)}


def compute(runs: List[dict]) -> Dict[str, dict]:
    """What the recorded runs cost, by part of the grid: training wall and CPU hours (prediction and evaluation
    are not counted), so the report says the budget it took rather than an estimate."""
    part = lambda m: "main grid" if m in METHODS else ("ablations" if m in ABLATIONS else "variants")  # noqa: E731
    out: Dict[str, dict] = {}
    for r in runs:
        c = out.setdefault(part(r["method"]), {"runs": 0, "train_wall_h": 0.0, "train_cpu_h": 0.0})
        c["runs"] += 1
        c["train_wall_h"] += (r.get("train_wall_s") or 0.0) / 3600
        c["train_cpu_h"] += (r.get("train_cpu_s") or 0.0) / 3600
    return out


def machines_line(rows: List[dict]) -> str:
    """Which runs trained on which CPU kind (by its autocast-relevant flags): bf16 on AMX and on AVX512-BF16 differs
    numerically, so one seed's run on the two kinds is not the same run, and speeds compare only within one kind."""
    kinds: Dict[str, List[str]] = {}
    for r in rows:
        by_seed = r["cpu_flags_by_seed"]
        for flags in sorted(set(by_seed.values()), key=str):
            seeds = " ".join(f"s{s}" for s, f in sorted(by_seed.items()) if f == flags)
            kinds.setdefault(flags or "not recorded", []).append(f"{r['method']} L{r['labeled']} {seeds}")
    if len(kinds) == 1:
        return f"CPU flags: {next(iter(kinds))}."
    return "runs trained on CPUs of different kinds: " + "; ".join(
        f"{flags}: {', '.join(runs)}" for flags, runs in sorted(kinds.items())) + "."


def short_kind(kinds: Optional[List[str]]) -> str:
    """A CPU kind for a table cell: AMX or not is what changes the bf16 numbers."""
    if not kinds:
        return "–"
    return ", ".join("AMX" if "amx_tile" in k else ("AVX512-BF16, no AMX" if "avx512_bf16" in k else k)
                     for k in kinds)


def best_validation(run: dict) -> Optional[float]:
    """The best validation Dice of a run's curve (None without one)."""
    return max(d for _, d in run["validation_curve"]) if run.get("validation_curve") else None


def validation_ahead(runs: List[dict], reference: List[dict]) -> Dict[str, object]:
    """Per seed both runs have a validation curve for: is `runs`' best validation Dice above `reference`'s?"""
    ref = {r["seed"]: best_validation(r) for r in reference}
    pairs = {r["seed"]: (best_validation(r), ref.get(r["seed"])) for r in runs}
    seeds = sorted(s for s, (v, m) in pairs.items() if v is not None and m is not None)
    return {"seeds": seeds, "ahead": [s for s in seeds if pairs[s][0] > pairs[s][1]]}


def best_validation_mean(runs: List[dict]) -> Optional[float]:
    """Mean over runs of the best validation Dice of each run's curve (None without curves)."""
    best = [b for b in map(best_validation, runs) if b is not None]
    return float(np.mean(best)) if best else None


def repo_path(path: str) -> str:
    """`path` relative to the root of the repository that holds it (the report may be written from a worktree)."""
    root = os.path.abspath(path)
    while not os.path.exists(os.path.join(root, ".git")) and os.path.dirname(root) != root:
        root = os.path.dirname(root)
    return os.path.relpath(path, root) if os.path.exists(os.path.join(root, ".git")) else os.path.abspath(path)


def markdown(summary: dict, preset: str, cfg: dict, plateau: Optional[str] = None, dataset: str = "hippocampus",
             split: Optional[dict] = None, timed: bool = False) -> str:
    """The report. Hippocampus at equal iterations keeps the table it always had; another dataset or equal time
    (`timed`) adds the budget, the planned iterations and the difference to supervised with MICD's weights."""
    spec = DATASETS[dataset]
    labels = list(spec["labels"].values())
    n_test, n_unlabeled = (len(split["test"]), len(split["unlabeled"])) if split else (50, 200)
    extra = timed or dataset != "hippocampus"
    length = (f"{cfg['iterations']} iterations" if not timed else
              "equal wall-clock time per run (`micd train --time-budget`: each run plans its iteration count from its "
              "own timed steps, start-up and data preparation included; budget and planned iterations per seed in "
              "the row)")
    lines = [f"# Semi-supervised benchmark, preset `{preset}`" + (f", {dataset}" if dataset != "hippocampus" else "")
             + (", equal time" if timed else ""), "",
             f"{spec['title']}, {n_test} test cases, {n_unlabeled} unlabeled cases, {length}, "
             f"VNet width {cfg['filters']}, patch {'x'.join(map(str, cfg['patch']))}, batch 2 labeled + 2 unlabeled, "
             f"{cfg.get('validation', 0)} labeled validation cases. "
             "Dice and HD95 (mm) on the test cases, mean over seeds (± std over seeds), from the weights the "
             "validation picked (\"last\": the last weights); Δ sup, Δ best peer = mean paired per-case difference of "
             "mean Dice over test cases x seeds [95 % t interval]; fg ratio = predicted / reference foreground "
             "voxels (1 is right, above 1 over-segments); supervised = plain supervised training (unweighted Dice + "
             "CE, `--class-weights none`). "
             + (f"Δ sup-w: the same difference to `{WEIGHTED}` (supervised with MICD's class weights, the product's "
                "supervised default) at the same labeled count" + (" and budget" if timed else "") + ". "
                if extra else "")
             + "Generated by `benchmarks/ssl_benchmark.py`; do not edit by hand.", ""]
    short = [spec["short"].get(lab, lab) for lab in labels]
    head = (["budget"] if timed else []) + ["labeled", "method", "seeds"] + (["iterations"] if timed else []) + \
        ["mean Dice", "last", "Δ sup"] + (["Δ sup-w"] if extra else []) + ["Δ best peer"] + \
        [f"{n} Dice" for n in short] + [f"{n} HD95" for n in short] + \
        ["fg ratio", "train wall s", "train CPU s", "s/iter"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    f = lambda v, d=3: "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{d}f}"

    def ahead(v):
        return f"{len(v['ahead'])} of {len(v['seeds'])}" if v and v["seeds"] else "–"

    def ci(p, name=None):
        if not p:
            return ""
        return f"{p['mean']:+.3f} [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}]" + (f" ({name})" if name else "")
    for r in summary["rows"]:
        per = [r["labels"][lab] for lab in labels]
        cells = (([r.get("time_budget") or "–"] if timed else [])
                 + [str(r["labeled"]), r["method"], str(len(r["seeds"]))]
                 + ([" ".join(str(n) for n in r.get("iterations_by_seed") or [])] if timed else [])
                 + [f"{f(r['mean_dice'])} ± {f(r['std_dice'])}", f(r.get("mean_dice_last")),
                    ci(r["paired_diff_vs_supervised"])]
                 + ([ci(r.get("paired_diff_vs_supervised_weighted"))] if extra else [])
                 + [ci(r["paired_diff_vs_best_peer"], r["best_peer"])]
                 + [f(x["dice"]) for x in per] + [f(x["hd95"], 2) for x in per]
                 + [f(r["foreground_ratio"], 2), f(r["train_wall_s_mean"], 0), f(r["train_cpu_s_mean"], 0),
                    f(r["sec_per_iter_median"], 3)])
        lines.append("| " + " | ".join(cells) + " |")
    ablations = [r for r in summary["rows"] if r.get("paired_diff_vs_micd")]
    if ablations:
        # Each module's share: the variant against full MICD on the same seeds and test cases. Defaults are chosen
        # on the validation column, never on the test columns.
        lines += ["", f"MICD ablations at {ablations[0]['labeled']} labeled: Δ MICD = mean paired per-case "
                  "difference of mean Dice to full MICD over test cases x shared seeds [95 % t interval]; "
                  f"validation = mean over seeds of the best validation Dice ({cfg.get('validation', 0)} labeled "
                  "validation cases). Each "
                  "variant's run pairs with the full MICD run of its seed trained on the same CPU kind (MICD CPU); "
                  "ahead on validation = at how many of those seeds the variant's best validation Dice is above "
                  "MICD's (a default changes only when a variant is ahead at every seed).",
                  "", "| variant | seeds | mean Dice | Δ MICD | validation | MICD validation | ahead on validation "
                  "| MICD CPU |",
                  "|---|---|---|---|---|---|---|---|"]
        micd_val = summary.get("best_validation", {})
        for r in ablations:
            key = f"{r['labeled']}-{r['method']}"
            lines.append(f"| {r['method']} | {len(r['seeds'])} | {f(r['mean_dice'])} | "
                         f"{ci(r['paired_diff_vs_micd'])} | {f(r.get('best_validation_mean'))} | "
                         f"{f(micd_val.get(key))} | {ahead(r.get('validation_ahead_of_micd'))} | "
                         f"{short_kind(r.get('micd_kinds'))} |")
    peers = [r for r in summary["rows"] if r.get("base_method")]
    if peers:
        lines += ["", "Baselines given one of MICD's ingredients, each variant against its method and against MICD, "
                  "same seeds and CPU kind, mean paired per-case difference [95 % t interval]. `*-split-bn`: MICD's "
                  "BatchNorm rule (`--bn-passes separate`: labeled inputs normalised on their own and alone setting "
                  "the running statistics; the peers' own code normalises labeled and unlabeled patches in one "
                  "batch). `supervised-micd-weights`: MICD's class weights on the supervised loss "
                  "(`--class-weights dhc-bgfloor`, DistDW from the labeled patches), no unlabeled data.", "",
                  "| labeled | variant | seeds | mean Dice | method's | Δ method | MICD − variant | fg ratio | "
                  "method's fg ratio |", "|---|---|---|---|---|---|---|---|---|"]
        for r in peers:
            lines.append(f"| {r['labeled']} | {r['method']} | {len(r['seeds'])} | {f(r['mean_dice'])} | "
                         f"{f(r['base_mean_dice'])} | {ci(r['paired_diff_vs_base'])} | "
                         f"{ci(r.get('paired_diff_micd_minus_this'))} | {f(r['foreground_ratio'], 2)} | "
                         f"{f(r['base_foreground_ratio'], 2)} |")
    kinds = summary.get("kind_comparisons") or []
    if kinds:
        lines += ["", "The same runs on two CPU kinds (bf16 kernels with and without AMX differ numerically; the "
                  "other kind's records are in `other-kinds/`): mean Dice over the shared seeds, paired difference "
                  "(this table − other kind) over test cases x seeds [95 % t interval].", "",
                  "| labeled | method | seeds | this table | CPU | other kind | CPU | Δ |", "|---|---|---|---|---|---|---|---|"]
        for c in kinds:
            lines.append(f"| {c['labeled']} | {c['method']} | {len(c['seeds'])} | {f(c['mean_dice'])} | "
                         f"{short_kind(c['kind'])} | {f(c['other_mean_dice'])} | {short_kind([c['other_kind']])} | "
                         f"{ci(c['paired_diff'])} |")
    first = next((r for r in summary["rows"] if r.get("cpu_flags") is not None), None)
    if first:
        lines += ["", f"Device: {first['device']} ({first['amp']}); {machines_line(summary['rows'])}"]
    spent = summary.get("compute") or {}
    if spent:
        threads = f"{cfg['threads']} torch threads" if cfg.get("threads") else "torch's default threads"
        lines += ["", f"Compute of the recorded runs (training only, {threads}; wall time includes pauses and "
                  "other load on the machine, CPU time does not): " + "; ".join(
                      f"{p} {c['runs']} runs, {c['train_wall_h']:.1f} h wall, {c['train_cpu_h']:.1f} h CPU"
                      for p, c in sorted(spent.items(), key=lambda kv: ("main grid", "ablations", "variants")
                                         .index(kv[0]))) + "."]
    curves = {k: v for k, v in summary.get("supervised_validation_curves", {}).items() if v}
    if curves and not extra:  # otherwise every run's curve is listed below
        longer = f" (longer runs: `{plateau}/`)" if plateau else ""
        lines += ["", f"Supervised validation Dice ({cfg.get('validation', 0)} labeled validation cases) by iteration, "
                  f"to show whether it has plateaued{longer}:",
                  "", "| run | " + " | ".join(str(i) for i, _ in next(iter(curves.values()))) + " |",
                  "|---|" + "---|" * len(next(iter(curves.values())))]
        for k, v in sorted(curves.items()):
            lines.append(f"| {k} | " + " | ".join(f"{d:.3f}" for _, d in v) + " |")
    if extra:
        # equal time: whether the weighted baseline had plateaued within its budget (its best iteration against its
        # planned count) and how far MICD got in the same time
        runs = [(r, seed, c) for r in summary["rows"] if r["method"] in ("supervised", WEIGHTED, "micd")
                for seed, c in (r.get("validation_curves") or {}).items() if c]
        if runs:
            lines += ["", f"Validation Dice ({cfg.get('validation', 0)} labeled validation cases) by iteration, "
                      "per run:", ""]
            for r, seed, c in runs:
                budget = f"{r['time_budget']}, " if r.get("time_budget") else ""
                lines.append(f"- {budget}{r['labeled']} labeled, {r['method']}, seed {seed}: "
                             + ", ".join(f"{i}: {d:.3f}" for i, d in c))
    return "\n".join(lines) + "\n"


def main() -> None:
    tolerant_console()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    ap.add_argument("--dataset", default="hippocampus", choices=sorted(DATASETS),
                    help="the shared dataset and its recorded split (default hippocampus)")
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS + list(VARIANTS))
    ap.add_argument("--shared", default=os.path.join(ROOT, "..", "shared"))
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    ap.add_argument("--work", default=os.path.join(HERE, "runs"), help="training runs, predictions (not committed)")
    ap.add_argument("--seeds", nargs="+", type=int, help="train only these of the preset's seeds (default: all)")
    ap.add_argument("--labeled", nargs="+", type=int, help="train only these of the preset's labeled counts")
    ap.add_argument("--time-budget", nargs="+", metavar="DURATION",
                    help="equal time: train each run with `micd train --time-budget DURATION` (e.g. 7m) instead of the "
                         "preset's iterations; several budgets run one after the other; recorded and summarised apart "
                         "from the equal-iteration runs")
    ap.add_argument("--threads", type=int, help="torch threads of every micd command (default: the preset's)")
    ap.add_argument("--report", action="store_true", help="only rebuild the summary from recorded runs")
    ap.add_argument("--no-ablations", action="store_true", help="skip the preset's ablation rows")
    ap.add_argument("--ablations", nargs="+", choices=ABLATIONS, metavar="NAME",
                    help="run only these of the preset's ablation rows (default: all of them), e.g. to finish the "
                         "required ablations at every seed before an optional one; with --time-budget the ablations "
                         "run only when named here")
    a = ap.parse_args()
    cfg = config(a.preset, a.dataset)
    if a.threads is not None:
        cfg["threads"] = a.threads
    for b in a.time_budget or []:
        try:
            parse_budget(b)
        except ValueError as e:
            ap.error(f"--time-budget: {e}")
    split = json.load(open(os.path.join(HERE, "splits", DATASETS[a.dataset]["split"])))
    hip = os.path.abspath(os.path.join(a.shared, "data", DATASETS[a.dataset]["folder"]))
    timed = bool(a.time_budget)
    out = os.path.join(a.results, a.preset)
    runs_dir = os.path.join(out, "runs", *scope_parts(a.dataset, timed))
    os.makedirs(runs_dir, exist_ok=True)
    work = os.path.join(a.work, a.preset, *scope_parts(a.dataset, timed))
    if not a.report:
        os.makedirs(work, exist_ok=True)
        shared_cache, cache = os.path.join(a.work, a.preset, "cache"), os.path.join(work, "cache")
        if cache != shared_cache:
            os.makedirs(shared_cache, exist_ok=True)
            if not os.path.lexists(cache):
                os.symlink(os.path.abspath(shared_cache), cache)  # one preprocessing cache for every dataset and axis
        # Each run is trained, scored and recorded before the next: 2 labeled seed by seed, then 5 labeled, then
        # the ablations at 2 labeled, so that an interrupted benchmark has already answered the first question.
        # Equal time: budget by budget, each as the equal-iteration grid.
        seeds = [s for s in cfg["seeds"] if a.seeds is None or s in a.seeds]
        labeled = [k for k in cfg["labeled"] if a.labeled is None or k in a.labeled]
        ablations = [m for m in cfg.get("ablations", []) if a.ablations is None or m in a.ablations]
        if timed and a.ablations is None:
            ablations = []
        plan = []
        for budget in a.time_budget or [None]:
            plan += [(seed, k, m, budget) for k in labeled for seed in seeds for m in a.methods]
            if min(cfg["labeled"]) in labeled and not a.no_ablations:
                plan += [(seed, min(cfg["labeled"]), m, budget) for seed in seeds for m in ablations]
        if timed and plan:
            warm_cache(cfg, split, hip, work, max(k for _, k, _, _ in plan), a.dataset)
        for seed, k, method, budget in plan:
            r = run_one(method, k, seed, cfg, split, hip, work, runs_dir, a.preset, a.dataset, budget)
            print(f"{method:16s} L{k} s{seed}" + (f" {budget}: {r['iterations']} iterations," if budget else ":")
                  + f" recorded ({r['train_wall_s'] or 0:.0f} s wall)", flush=True)
            write_summary(a, cfg, runs_dir, split, timed)
    text = write_summary(a, cfg, runs_dir, split, timed)
    if a.report and not timed:  # --report also rebuilds the dataset's equal-time summary where it has records
        timed_dir = os.path.join(out, "runs", *scope_parts(a.dataset, True))
        if os.path.isdir(timed_dir) and any(n.endswith(".json") for n in os.listdir(timed_dir)):
            write_summary(a, cfg, timed_dir, split, True)
    print(text)


def write_summary(a, cfg: dict, runs_dir: str, split: Optional[dict] = None, timed: bool = False) -> str:
    """RESULTS/ssl-<preset>[-<dataset>][-equal-time].{json,md} from the records in `runs_dir` (one dataset, one
    axis); hippocampus at equal iterations keeps its ssl-<preset> files."""
    dataset = getattr(a, "dataset", "hippocampus")

    def records(folder: str) -> List[dict]:
        return [json.load(open(os.path.join(folder, f))) for f in sorted(os.listdir(folder))
                if f.endswith(".json")] if os.path.isdir(folder) else []
    out = os.path.join(a.results, a.preset)
    runs = [r for r in records(runs_dir) if r.get("dataset", "hippocampus") == dataset
            and bool(r.get("time_budget")) == timed]
    others = records(os.path.join(out, "other-kinds", *scope_parts(dataset, timed)))
    summary = summarize_all(runs, others, dataset)
    summary.update(preset=a.preset, config=cfg, runs=len(runs))
    summary.update(dataset=dataset, time_budgets=sorted({r["time_budget"] for r in runs if r.get("time_budget")},
                                                        key=parse_budget))
    name = summary_name(a.preset, dataset, timed)
    json.dump(summary, open(os.path.join(a.results, f"{name}.json"), "w", encoding="utf-8"), indent=1)
    plateau = os.path.join(a.results, f"{a.preset}-plateau")  # where benchmarks/plateau.py writes
    show_plateau = os.path.isdir(plateau) and dataset == "hippocampus" and not timed
    text = markdown(summary, a.preset, cfg, repo_path(plateau) if show_plateau else None, dataset, split, timed)
    with open(os.path.join(a.results, f"{name}.md"), "w", encoding="utf-8") as f:
        f.write(text)
    return text


if __name__ == "__main__":
    main()
