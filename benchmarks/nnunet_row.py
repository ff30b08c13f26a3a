"""One row of nnU-Net itself at equal time (issue 32, item 5): nnunetv2's `3d_fullres` trained on the same labeled
cases as ssl_benchmark.py's split, on the CPU, for the same wall-clock budget as the equal-time rows, then predicted on
the same test cases and scored by `micd evaluate`. Each run is recorded as `nnunet-L<k>-s<replicate>-t<budget>.json`
beside the equal-time records, so `ssl_benchmark.py --time-budget ... --report` pairs it with supervised training
with MICD's class weights like any row.

nnU-Net runs in an environment of its own (it brings its own dependencies), given by --nnunet-python, e.g.
    python -m venv /path/nnunet && /path/nnunet/bin/pip install torch==2.14.1 torchvision==0.29.1 nnunetv2==2.8.1
nnU-Net imports every trainer module while it looks for one, and its Primus trainers import timm, hence torchvision:
PyPI's torchvision does not load beside the CPU-only torch 2.13.0 ("operator torchvision::nms does not exist"), so
nnU-Net gets a torch and torchvision pair of its own (a CUDA build, which trains on the CPU here). Its torch version is
recorded with each run (`nnunet_torch`).
Everything is nnU-Net's defaults (plans, network, augmentation, loss, optimiser, test-time mirroring) but the length
(benchmarks/nnunet/nnUNetTrainer_MICDBudget.py), the device (cpu), its data-augmentation workers (1, so that the two
cores train as MICD's runs do) and fold `all` (2 labeled cases give no 5-fold split). Planning and preprocessing are
not timed, as the MICD runs' preprocessing cache is warmed before their budgets start. nnU-Net takes no seed: each
replicate is another random start.

Usage: python benchmarks/nnunet_row.py --nnunet-python /path/nnunet/bin/python [--dataset hippocampus] [--labeled 2]
       [--seeds 0 1] [--time-budget 7m]"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from ssl_benchmark import DATASETS, budget_tag, link_folder, machine, parse_budget, scope_parts  # noqa: E402

TRAINER = "nnUNetTrainer_MICDBudget"
DATASET_ID = {"hippocampus": 901, "la": 902}
ITERATIONS_PER_EPOCH = 50  # nnUNetTrainer_MICDBudget's


def case_id(file_name: str) -> str:
    return file_name[:-len(".nii.gz")] if file_name.endswith(".nii.gz") else os.path.splitext(file_name)[0]


def tool(python: str, name: str) -> str:
    """An nnU-Net command installed beside its interpreter."""
    path = os.path.join(os.path.dirname(python), name)
    if not os.path.exists(path):
        sys.exit(f"nnunet_row: {path} not found: install nnunetv2 into the environment of {python}")
    return path


def run(cmd, log: str, env: dict) -> float:
    """Run a command into `log`; its wall seconds (its CPU seconds are RUSAGE_CHILDREN's growth)."""
    t0 = time.time()
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if rc != 0:
        sys.exit(f"nnunet_row: {' '.join(cmd[:2])} failed (exit {rc}); see {log}")
    return time.time() - t0


def children_cpu_s() -> float:
    """User + system CPU seconds of the finished child processes (nnU-Net's and its data loaders')."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def raw_dataset(root: str, dataset: str, cases, folder: str, labels: dict) -> str:
    """nnU-Net's raw layout of the labeled cases: links to the shared data (nothing copied)."""
    name = f"Dataset{DATASET_ID[dataset]}_{dataset.capitalize()}L{len(cases)}"
    base = os.path.join(root, name)
    link_folder(os.path.join(base, "imagesTr"),
                {f"{case_id(n)}_0000.nii.gz": os.path.join(folder, "imagesTr", n) for n in cases})
    link_folder(os.path.join(base, "labelsTr"), {n: os.path.join(folder, "labelsTr", n) for n in cases})
    spec = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, **{n: int(v) for v, n in labels.items()}},
            "numTraining": len(cases), "file_ending": ".nii.gz"}
    json.dump(spec, open(os.path.join(base, "dataset.json"), "w", encoding="utf-8"), indent=1)
    return name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nnunet-python", required=True, help="the Python of an environment with nnunetv2")
    ap.add_argument("--dataset", default="hippocampus", choices=sorted(DATASET_ID))
    ap.add_argument("--labeled", type=int, default=2)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="replicates (nnU-Net takes no seed)")
    ap.add_argument("--time-budget", default="7m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--preset", default="cpu", help="whose records folder and micd evaluate threads (default cpu)")
    ap.add_argument("--shared", default=os.path.join(ROOT, "..", "shared"))
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    ap.add_argument("--work", default=os.path.join(HERE, "runs"))
    a = ap.parse_args()
    budget_s = parse_budget(a.time_budget)
    python = os.path.abspath(a.nnunet_python)
    spec = DATASETS[a.dataset]
    split = json.load(open(os.path.join(HERE, "splits", spec["split"])))
    folder = os.path.abspath(os.path.join(a.shared, "data", spec["folder"]))
    cases = split["labeled_pool"][:a.labeled]
    runs_dir = os.path.join(a.results, a.preset, "runs", *scope_parts(a.dataset, True))
    work = os.path.abspath(os.path.join(a.work, a.preset, *scope_parts(a.dataset, True), "nnunet"))
    os.makedirs(runs_dir, exist_ok=True)
    os.makedirs(work, exist_ok=True)
    env = dict(os.environ, nnUNet_raw=os.path.join(work, "raw"), nnUNet_preprocessed=os.path.join(work, "preprocessed"),
               nnUNet_extTrainer=os.path.join(HERE, "nnunet"), nnUNet_n_proc_DA="1", OMP_NUM_THREADS=str(a.threads),
               MKL_NUM_THREADS=str(a.threads), MICD_NNUNET_BUDGET_S=str(budget_s))
    name = raw_dataset(env["nnUNet_raw"], a.dataset, cases, folder, spec["labels"])
    log = os.path.join(work, "log.txt")
    plans = os.path.join(env["nnUNet_preprocessed"], name, "nnUNetPlans.json")
    if not os.path.exists(plans):  # untimed, as the MICD runs' preprocessing cache
        run([tool(python, "nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID[a.dataset]), "-c", "3d_fullres",
             "-np", "1", "--verify_dataset_integrity"], log, env)
    test_in = link_folder(os.path.join(work, "test_images"),
                          {f"{case_id(n)}_0000.nii.gz": os.path.join(folder, "imagesTr", n) for n in split["test"]})
    test_labels = link_folder(os.path.join(work, "test_labels"),
                              {n: os.path.join(folder, "labelsTr", n) for n in split["test"]})
    nnunet_torch = subprocess.run([python, "-c", "import torch, nnunetv2; print(torch.__version__)"],
                                  capture_output=True, text=True, check=True).stdout.strip()
    labels_file = os.path.join(work, "labels.json")
    json.dump(spec["labels"], open(labels_file, "w", encoding="utf-8"))
    for seed in a.seeds:
        record = os.path.join(runs_dir, f"nnunet-L{a.labeled}-s{seed}-{budget_tag(a.time_budget)}.json")
        if os.path.exists(record):
            print(f"nnunet L{a.labeled} s{seed} {a.time_budget}: recorded already")
            continue
        d = os.path.join(work, f"L{a.labeled}-s{seed}-{budget_tag(a.time_budget)}")
        shutil.rmtree(d, ignore_errors=True)  # an interrupted replicate starts again: its budget is whole or nothing
        os.makedirs(d)
        run_env = dict(env, nnUNet_results=os.path.join(d, "results"), MICD_NNUNET_START=str(time.time()))
        cpu0 = children_cpu_s()
        train_s = run([tool(python, "nnUNetv2_train"), str(DATASET_ID[a.dataset]), "3d_fullres", "all", "-tr",
                       TRAINER, "-device", "cpu"], os.path.join(d, "log.txt"), run_env)
        train_cpu_s = children_cpu_s() - cpu0
        preds = os.path.join(d, "predictions")
        run([tool(python, "nnUNetv2_predict"), "-i", test_in, "-o", preds, "-d", str(DATASET_ID[a.dataset]), "-c",
             "3d_fullres", "-f", "all", "-tr", TRAINER, "-chk", "checkpoint_final.pth", "-device", "cpu",
             "-npp", "1", "-nps", "1"], os.path.join(d, "log.txt"), run_env)
        ev_path = os.path.join(d, "evaluation.json")
        run([sys.executable, "-m", "micd", "evaluate", "--pred", preds, "--label", test_labels, "--json", ev_path,
             "--overwrite", "--labels", labels_file], os.path.join(d, "log.txt"), dict(os.environ))
        fold = os.path.join(run_env["nnUNet_results"], name, f"{TRAINER}__nnUNetPlans__3d_fullres", "fold_all")
        log_lines = open(os.path.join(d, "log.txt"), encoding="utf-8").readlines()
        epochs = [line for line in log_lines if "MICD budget:" in line]
        epoch_s = [float(line.split("Epoch time:")[1].split()[0]) for line in log_lines if "Epoch time:" in line]
        trained_epochs = len(epoch_s)  # nnU-Net logs each finished epoch's time
        result = {"method": "nnunet", "labeled": a.labeled, "seed": seed, "preset": a.preset, "dataset": a.dataset,
                  "time_budget": a.time_budget, "time_budget_s": budget_s,
                  "iterations": trained_epochs * ITERATIONS_PER_EPOCH, "epochs": trained_epochs,
                  "nnunet_plan": epochs[-1].strip() if epochs else None, "configuration": "3d_fullres",
                  "trainer": TRAINER, "nnunet_torch": nnunet_torch, "device": "cpu", "amp": "off", "threads": a.threads,
                  "test_cases": len(split["test"]), "weights_from": "nnU-Net checkpoint_final.pth",
                  "process_wall_s": round(train_s, 1), "train_wall_s": round(train_s, 1),
                  "train_cpu_s": round(train_cpu_s, 1),
                  "sec_per_iter_median": round(statistics.median(epoch_s) / ITERATIONS_PER_EPOCH, 4) if epoch_s else None, "validation_curve": [],
                  "nnunet_output": os.path.relpath(fold, ROOT), "evaluation": json.load(open(ev_path)), **machine(),
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        tmp = record + ".tmp"
        json.dump(result, open(tmp, "w", encoding="utf-8"), indent=1)
        os.replace(tmp, record)
        print(f"nnunet L{a.labeled} s{seed} {a.time_budget}: trained {train_s:.0f} s, mean Dice "
              f"{result['evaluation']['overall']['dice']['mean']:.3f}", flush=True)


if __name__ == "__main__":
    main()
