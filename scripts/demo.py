"""The main job on its default: train MICD on a few labeled cases plus unlabeled ones from the shared hippocampus
data, train supervised on the same labeled cases with the same settings (both on their defaults, so both with MICD's
class weights), segment held-out cases with both, and print their Dice side by side, so the effect of the unlabeled
data is visible.

Uses the recorded split (benchmarks/splits/hippocampus.json): 2 labeled cases (--labeled), 40 unlabeled, 5 more
labeled cases for validation, and 20 of the 50 test cases for the final Dice. Everything goes to ./runs/demo (or
--out); an earlier demo run there is resumed rather than overwritten. A short demo, not the benchmark: the measured
comparison over seeds is benchmarks/results/ssl-cpu.md.
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def micd(*args: str) -> None:
    cmd = [sys.executable, "-m", "micd", *args]
    print("$ micd " + " ".join(args), flush=True)
    rc = subprocess.call(cmd)
    if rc != 0:
        sys.exit(f"micd {args[0]} failed with exit code {rc}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shared", default=os.path.join(ROOT, "..", "shared"))
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "demo"))
    ap.add_argument("--iterations", type=int, default=400)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--labeled", type=int, default=2, help="labeled training cases (at most 5)")
    a = ap.parse_args()
    hip = os.path.abspath(os.path.join(a.shared, "data", "hippocampus"))
    split = json.load(open(os.path.join(ROOT, "benchmarks", "splits", "hippocampus.json")))
    img = lambda n: os.path.join(hip, "imagesTr", n)
    lab = lambda n: os.path.join(hip, "labelsTr", n)
    os.makedirs(a.out, exist_ok=True)
    ds = {"labels": {"1": "hippocampus_anterior", "2": "hippocampus_posterior"}, "modality": "MR",
          "labeled": [{"image": img(n), "label": lab(n)} for n in split["labeled_pool"][:min(a.labeled, 5)]],
          "unlabeled": [img(n) for n in split["unlabeled"][:40]],
          "validation": [{"image": img(n), "label": lab(n)} for n in split["labeled_pool"][5:10]]}
    ds_path = os.path.join(a.out, "dataset.json")
    with open(ds_path, "w", encoding="utf-8") as f:
        json.dump(ds, f, indent=1)
    test = split["test"][:20]
    inputs, labels = os.path.join(a.out, "test_images"), os.path.join(a.out, "test_labels")
    for folder, path in ((inputs, img), (labels, lab)):
        os.makedirs(folder, exist_ok=True)
        for n in test:
            link = os.path.join(folder, n)
            if not os.path.lexists(link):
                os.symlink(path(n), link)  # links, not copies, of the shared data
    results = {}
    for method in ("micd", "supervised"):
        run = os.path.join(a.out, f"run-{method}")
        if not os.path.isfile(os.path.join(run, "model", "model.json")):
            resume = ["--resume"] if os.path.isdir(os.path.join(run, "checkpoints")) else []
            micd("train", "--dataset", ds_path, "--out", run, "--method", method, "--iterations", str(a.iterations),
                 "--patch-size", "32", "48", "32", "--filters", "8", "--device", a.device, "--checkpoint-every",
                 "100", "--progress", "bar", "--cache-dir", os.path.join(a.out, "cache"), *resume)
        preds = os.path.join(a.out, f"predictions-{method}")
        micd("predict", "--model", os.path.join(run, "model"), "--input", inputs, "--output", preds, "--device",
             a.device, "--overwrite")  # the demo's own folder: a second demo run replaces its predictions
        report = os.path.join(a.out, f"evaluation-{method}.json")
        micd("evaluate", "--pred", preds, "--label", labels, "--json", report, "--overwrite", "--labels",
             os.path.join(run, "model"))
        with open(report) as f:
            results[method] = (json.load(open(os.path.join(run, "model", "model.json"))), json.load(f), report)
    print(f"\n{a.labeled} labeled + {len(ds['unlabeled'])} unlabeled cases, {a.iterations} iterations; Dice on "
          f"{len(test)} held-out test cases (mean ± std over cases):")
    print(f"  {'':24s} {'MICD (with unlabeled)':>24s} {'supervised (labeled only)':>28s}")
    names = list(results["micd"][1]["per_label"])
    for name in names:
        cells = [f"{r[1]['per_label'][name]['dice']['mean']:.3f} ± {r[1]['per_label'][name]['dice']['std']:.3f}"
                 for r in (results["micd"], results["supervised"])]
        print(f"  {name:24s} {cells[0]:>24s} {cells[1]:>28s}")
    means = [results[m][1]["overall"]["dice"]["mean"] for m in ("micd", "supervised")]
    print(f"  {'mean':24s} {means[0]:>24.3f} {means[1]:>28.3f}")
    for m, (model, _, report) in results.items():
        print(f"{m}: best validation Dice {model['metrics'].get('best_mean_dice'):.3f} at iteration "
              f"{model['metrics'].get('best_iter')}; report {report} (+ .csv, .md)")


if __name__ == "__main__":
    main()
