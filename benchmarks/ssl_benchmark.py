"""Semi-supervised benchmark on the shared hippocampus data: MICD against supervised, mean teacher, CPS and DHC.

Protocol (the papers' one): the recorded split in benchmarks/splits/hippocampus.json (50 test cases; 2 or 5 labeled
cases taken from a fixed pool; 200 unlabeled cases whose labels are never read), the same networks, patch, batch,
number of iterations and seeds for every method, no validation set (the model keeps its last weights, as a user
with 2 labeled cases would have no cases to spare), then `micd predict` and `micd evaluate` on the 50 test cases.

Every finished run is recorded at once in RESULTS/<preset>/runs/<method>-L<k>-s<seed>.json and skipped when the
script is started again, so a long benchmark can run in the background and survive interruption. Training,
prediction and evaluation each resume from what is already on disk. The summary goes to RESULTS/ssl-<preset>.json
and .md; `--report` only rebuilds it from the recorded runs.

Presets:
  cpu        3 seeds x {2, 5} labeled x 5 methods, 1000 iterations, width 8, patch 32x48x32 (about 2.5 h on 2 cores)
  cpu-quick  the cpu preset with seed 0 only, plus the ablation micd-noweights (MICD without DHC's class weights)
  gpu        the spec's full-size settings: width 32, 6000 iterations, patch 32x64x48, 3 seeds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Dict, List

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
METHODS = ["supervised", "mean-teacher", "cps", "dhc", "micd"]
# Ablations: a name, the method it runs and the extra `micd train` flags.
VARIANTS = {"micd-noweights": ("micd", ["--class-weights", "none"])}
ORDER = METHODS + list(VARIANTS)
LABEL_NAMES = {"1": "hippocampus_anterior", "2": "hippocampus_posterior"}

PRESETS = {
    "cpu": dict(seeds=[0, 1, 2], labeled=[2, 5], iterations=1000, filters=8, patch=[32, 48, 32], device="cpu",
                threads=2),
    "cpu-quick": dict(seeds=[0], labeled=[2, 5], iterations=1000, filters=8, patch=[32, 48, 32], device="cpu",
                      threads=2, ablations=["micd-noweights"]),
    "gpu": dict(seeds=[0, 1, 2], labeled=[2, 5], iterations=6000, filters=32, patch=[32, 64, 48], device="cuda",
                threads=0),
}


def micd(args: List[str], log: str, threads: int) -> Dict[str, float]:
    """Run a micd command, appending its output to `log`; return wall and CPU seconds of the child."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    with open(log, "a") as f:
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
            preset: str, train_only: bool = False) -> dict:
    name = f"{method}-L{k}-s{seed}"
    record = os.path.join(runs_dir, name + ".json")
    if os.path.exists(record):
        return json.load(open(record))
    d = os.path.join(work, name)
    os.makedirs(d, exist_ok=True)
    log = os.path.join(d, "log.txt")
    img = lambda n: os.path.join(hip, "imagesTr", n)
    lab = lambda n: os.path.join(hip, "labelsTr", n)
    ds = {"labels": LABEL_NAMES, "modality": "MR",
          "labeled": [{"image": img(n), "label": lab(n)} for n in split["labeled_pool"][:k]],
          "unlabeled": [img(n) for n in split["unlabeled"]]}
    ds_path = os.path.join(d, "dataset.json")
    json.dump(ds, open(ds_path, "w"), indent=1)
    run = os.path.join(d, "run")
    model = os.path.join(run, "model")
    timing = {"wall_s": None, "cpu_s": None}
    timing_file = os.path.join(d, "train_timing.json")
    if not os.path.isfile(os.path.join(model, "model.json")):
        resume = ["--resume"] if os.path.isdir(os.path.join(run, "checkpoints")) else []
        base, extra = VARIANTS.get(method, (method, []))
        t = micd(["train", "--dataset", ds_path, "--out", run, "--method", base, *extra, "--iterations",
                  str(cfg["iterations"]), "--patch-size", *map(str, cfg["patch"]), "--filters", str(cfg["filters"]),
                  "--device", cfg["device"], "--seed", str(seed), "--checkpoint-every", "250", "--val-fraction", "0",
                  "--cache-dir", os.path.join(work, "cache"), "--log-every", "50", "--progress", "none", *resume],
                 log, cfg["threads"])
        prev = json.load(open(timing_file)) if os.path.exists(timing_file) else {"wall_s": 0.0, "cpu_s": 0.0}
        timing = {k_: prev[k_] + t[k_] for k_ in t}
        json.dump(timing, open(timing_file, "w"))
    elif os.path.exists(timing_file):
        timing = json.load(open(timing_file))
    if train_only:
        return {"train_wall_s": timing["wall_s"]}
    test_imgs = link_folder(os.path.join(work, "test_images"), {n: img(n) for n in split["test"]})
    test_labs = link_folder(os.path.join(work, "test_labels"), {n: lab(n) for n in split["test"]})
    preds = os.path.join(d, "predictions")
    if len([f for f in os.listdir(preds)] if os.path.isdir(preds) else []) < len(split["test"]):
        micd(["predict", "--model", model, "--input", test_imgs, "--output", preds, "--device", cfg["device"]], log,
             cfg["threads"])
    ev_path = os.path.join(d, "evaluation.json")
    if not os.path.exists(ev_path):
        micd(["evaluate", "--pred", preds, "--label", test_labs, "--json", ev_path, "--labels", model], log,
             cfg["threads"])
    events = [json.loads(l) for l in open(os.path.join(run, "events.jsonl")) if l.strip()]
    start = [e for e in events if e["event"] == "start"][-1]
    spi = [e["sec_per_iter"] for e in events if e["event"] == "iteration"]
    prov = json.load(open(os.path.join(model, "model.json")))["provenance"]
    ev = json.load(open(ev_path))
    result = {"method": method, "labeled": k, "seed": seed, "preset": preset, "iterations": cfg["iterations"],
              "filters": cfg["filters"], "patch_size": cfg["patch"], "device": start["device"], "amp": start["amp"],
              "unlabeled": len(split["unlabeled"]), "test_cases": len(split["test"]),
              # Training-loop time from the model's provenance (summed over resumes); the process times include
              # start-up and preprocessing.
              "train_wall_s": prov.get("wall_s"), "train_cpu_s": prov.get("cpu_s"),
              "process_wall_s": timing["wall_s"], "process_cpu_s": timing["cpu_s"],
              "sec_per_iter_median": float(np.median(spi)) if spi else None,
              "foreground_ratio": foreground_ratio(ev), "final_class_weights": final_class_weights(run),
              "evaluation": ev, "host": platform.node(),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    tmp = record + ".tmp"
    json.dump(result, open(tmp, "w"), indent=1)
    os.replace(tmp, record)  # recorded at once; a restart skips it
    return result


def foreground_ratio(ev: dict) -> float:
    """Mean over test cases of (predicted foreground voxels / reference foreground voxels): 1 is right, >1 means
    over-segmentation."""
    import SimpleITK as sitk

    ratios = []
    for case in ev["cases"]:
        p = sitk.GetArrayFromImage(sitk.ReadImage(case["prediction"]))  # a copy: a view would outlive its image
        r = sitk.GetArrayFromImage(sitk.ReadImage(case["reference"]))
        ratios.append(float((p > 0).sum()) / max(1.0, float((r > 0).sum())))
    return float(np.mean(ratios))


def final_class_weights(run: str):
    """DiffDW (student A) and DistDW (student B) weights at the end of training, for the methods that use them."""
    import torch

    state = torch.load(os.path.join(run, "checkpoints", "last.pt"), map_location="cpu", weights_only=False)
    extra = state.get("method_extra", {})
    if "diffdw" not in extra:
        return None
    return {"w_diff (A)": [round(float(v), 3) for v in extra["diffdw"]["weights"]],
            "w_dist (B)": [round(float(v), 3) for v in extra["distdw"]["weights"]]}


# ------------------------------------------------------------------------------------------------ report
def per_case_scores(ev: dict) -> Dict[str, Dict[str, Dict[str, float]]]:
    """{case: {label: {"dice":…, "hd95":…}}} from a `micd evaluate` JSON."""
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    for case in ev["cases"]:
        out[case["case"]] = {lab: {"dice": v.get("dice"), "hd95": v.get("hd95")} for lab, v in case["metrics"].items()}
    return out


def case_mean_dice(scores: Dict[str, Dict[str, dict]]) -> Dict[str, float]:
    return {c: float(np.mean([v["dice"] for v in labs.values()])) for c, labs in scores.items()}


def summarize(runs: List[dict]) -> dict:
    groups: Dict[tuple, List[dict]] = {}
    for r in runs:
        groups.setdefault((r["labeled"], r["method"]), []).append(r)
    rows = []
    for (k, method), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], ORDER.index(kv[0][1]))):
        per_seed_mean, per_label = [], {}
        paired = []
        for r in sorted(rs, key=lambda r: r["seed"]):
            sc = per_case_scores(r["evaluation"])
            cm = case_mean_dice(sc)
            per_seed_mean.append(float(np.mean(list(cm.values()))))
            for lab in LABEL_NAMES.values():
                d = [c[lab]["dice"] for c in sc.values() if lab in c]
                h = [c[lab]["hd95"] for c in sc.values() if lab in c and c[lab]["hd95"] is not None]
                per_label.setdefault(lab, {"dice": [], "hd95": []})
                per_label[lab]["dice"].append(float(np.mean(d)))
                per_label[lab]["hd95"].append(float(np.mean(h)) if h else float("nan"))
            base = [b for b in groups.get((k, "supervised"), []) if b["seed"] == r["seed"]]
            if base:
                bm = case_mean_dice(per_case_scores(base[0]["evaluation"]))
                common = sorted(set(bm) & set(cm))
                paired.append(float(np.mean([cm[c] - bm[c] for c in common])))
        rows.append({
            "labeled": k, "method": method, "seeds": sorted(r["seed"] for r in rs),
            "mean_dice": float(np.mean(per_seed_mean)), "std_dice": float(np.std(per_seed_mean)),
            "per_seed_mean_dice": per_seed_mean,
            "labels": {lab: {"dice": float(np.mean(v["dice"])), "dice_std": float(np.std(v["dice"])),
                             "hd95": float(np.nanmean(v["hd95"])) if not all(np.isnan(v["hd95"])) else None}
                       for lab, v in per_label.items()},
            "paired_diff_vs_supervised": float(np.mean(paired)) if paired and method != "supervised" else None,
            "iterations": rs[0]["iterations"], "device": rs[0]["device"], "amp": rs[0].get("amp"),
            "train_wall_s_mean": float(np.mean([r["train_wall_s"] for r in rs if r["train_wall_s"] is not None] or
                                               [float("nan")])),
            "train_cpu_s_mean": float(np.mean([r["train_cpu_s"] for r in rs if r["train_cpu_s"] is not None] or
                                              [float("nan")])),
            "sec_per_iter_median": float(np.median([r["sec_per_iter_median"] for r in rs])),
            "foreground_ratio": float(np.mean([r["foreground_ratio"] for r in rs if r.get("foreground_ratio")] or
                                              [float("nan")])),
            "final_class_weights": [r.get("final_class_weights") for r in rs],
        })
    return {"rows": rows}


def markdown(summary: dict, preset: str, cfg: dict) -> str:
    lines = [f"# Semi-supervised benchmark, preset `{preset}`", "",
             f"Hippocampus (shared data), 50 test cases, 200 unlabeled cases, {cfg['iterations']} iterations, "
             f"VNet width {cfg['filters']}, patch {'x'.join(map(str, cfg['patch']))}, batch 2 labeled + 2 unlabeled. "
             "Dice and HD95 (mm) on the test cases, mean over seeds (± std over seeds); Δ sup = mean paired "
             "per-case difference of mean Dice to supervised with the same seed; fg ratio = predicted / reference foreground "
             "voxels (1 is right, above 1 over-segments). Generated by "
             "`benchmarks/ssl_benchmark.py`; do not edit by hand.", "",
             "| labeled | method | seeds | mean Dice | Δ sup | anterior Dice | posterior Dice | anterior HD95 | "
             "posterior HD95 | fg ratio | train wall s | train CPU s | s/iter | device |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    f = lambda v, d=3: "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{d}f}"
    for r in summary["rows"]:
        a, p = r["labels"]["hippocampus_anterior"], r["labels"]["hippocampus_posterior"]
        diff = r["paired_diff_vs_supervised"]
        lines.append(f"| {r['labeled']} | {r['method']} | {len(r['seeds'])} | {f(r['mean_dice'])} ± "
                     f"{f(r['std_dice'])} | {'' if diff is None else f'{diff:+.3f}'} | {f(a['dice'])} | "
                     f"{f(p['dice'])} | {f(a['hd95'], 2)} | {f(p['hd95'], 2)} | {f(r['foreground_ratio'], 2)} | "
                     f"{f(r['train_wall_s_mean'], 0)} | "
                     f"{f(r['train_cpu_s_mean'], 0)} | {f(r['sec_per_iter_median'], 3)} | {r['device']} "
                     f"({r['amp']}) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=ORDER)
    ap.add_argument("--shared", default=os.path.join(ROOT, "..", "shared"))
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    ap.add_argument("--work", default=os.path.join(HERE, "runs"), help="training runs, predictions (not committed)")
    ap.add_argument("--report", action="store_true", help="only rebuild the summary from recorded runs")
    a = ap.parse_args()
    cfg = PRESETS[a.preset]
    split = json.load(open(os.path.join(HERE, "splits", "hippocampus.json")))
    hip = os.path.abspath(os.path.join(a.shared, "data", "hippocampus"))
    out = os.path.join(a.results, a.preset)
    runs_dir = os.path.join(out, "runs")
    os.makedirs(runs_dir, exist_ok=True)
    work = os.path.join(a.work, a.preset)
    if not a.report:
        # Train every run first (the long part), then predict and evaluate them all; ablations come last.
        plan = [(seed, k, m) for seed in cfg["seeds"] for k in cfg["labeled"] for m in a.methods]
        plan += [(seed, k, m) for m in cfg.get("ablations", []) for k in cfg["labeled"] for seed in cfg["seeds"]]
        for seed, k, method in plan:
            if not os.path.exists(os.path.join(runs_dir, f"{method}-L{k}-s{seed}.json")):
                run_one(method, k, seed, cfg, split, hip, work, runs_dir, a.preset, train_only=True)
                print(f"{method:13s} L{k} s{seed}: trained", flush=True)
        for seed, k, method in plan:
            r = run_one(method, k, seed, cfg, split, hip, work, runs_dir, a.preset)
            print(f"{method:13s} L{k} s{seed}: recorded ({r['train_wall_s'] or 0:.0f} s wall)", flush=True)
    runs = [json.load(open(os.path.join(runs_dir, f))) for f in sorted(os.listdir(runs_dir)) if f.endswith(".json")]
    summary = summarize(runs)
    summary.update(preset=a.preset, config=cfg, runs=len(runs))
    json.dump(summary, open(os.path.join(a.results, f"ssl-{a.preset}.json"), "w"), indent=1)
    with open(os.path.join(a.results, f"ssl-{a.preset}.md"), "w") as f:
        f.write(markdown(summary, a.preset, cfg))
    print(open(os.path.join(a.results, f"ssl-{a.preset}.md")).read())


if __name__ == "__main__":
    main()
