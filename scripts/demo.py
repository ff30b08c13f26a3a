"""The main job on its default: train MICD on a small labeled split of the shared hippocampus data, segment held-out
cases with the trained model, and print their Dice.

Uses the recorded split (benchmarks/splits/hippocampus.json): 5 labeled cases, 40 unlabeled, 5 more labeled cases for
validation, and 20 of the 50 test cases for the final Dice. Everything goes to ./runs/demo (or --out); an earlier demo
run there is resumed rather than overwritten.
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
    a = ap.parse_args()
    hip = os.path.abspath(os.path.join(a.shared, "data", "hippocampus"))
    split = json.load(open(os.path.join(ROOT, "benchmarks", "splits", "hippocampus.json")))
    img = lambda n: os.path.join(hip, "imagesTr", n)
    lab = lambda n: os.path.join(hip, "labelsTr", n)
    os.makedirs(a.out, exist_ok=True)
    ds = {"labels": {"1": "hippocampus_anterior", "2": "hippocampus_posterior"}, "modality": "MR",
          "labeled": [{"image": img(n), "label": lab(n)} for n in split["labeled_pool"][:5]],
          "unlabeled": [img(n) for n in split["unlabeled"][:40]],
          "validation": [{"image": img(n), "label": lab(n)} for n in split["labeled_pool"][5:10]]}
    ds_path = os.path.join(a.out, "dataset.json")
    with open(ds_path, "w") as f:
        json.dump(ds, f, indent=1)
    run = os.path.join(a.out, "run")
    done = os.path.isfile(os.path.join(run, "model", "model.json"))
    if not done:
        resume = ["--resume"] if os.path.isdir(os.path.join(run, "checkpoints")) else []
        micd("train", "--dataset", ds_path, "--out", run, "--iterations", str(a.iterations), "--patch-size", "32",
             "48", "32", "--filters", "8", "--device", a.device, "--checkpoint-every", "100", "--progress", "bar",
             *resume)
    test = split["test"][:20]
    inputs, labels = os.path.join(a.out, "test_images"), os.path.join(a.out, "test_labels")
    for folder, path in ((inputs, img), (labels, lab)):
        os.makedirs(folder, exist_ok=True)
        for n in test:
            link = os.path.join(folder, n)
            if not os.path.lexists(link):
                os.symlink(path(n), link)  # links, not copies, of the shared data
    preds = os.path.join(a.out, "predictions")
    micd("predict", "--model", os.path.join(run, "model"), "--input", inputs, "--output", preds, "--device", a.device)
    report = os.path.join(a.out, "evaluation.json")
    micd("evaluate", "--pred", preds, "--label", labels, "--json", report, "--labels", os.path.join(run, "model"))
    model = json.load(open(os.path.join(run, "model", "model.json")))
    with open(report) as f:
        ev = json.load(f)
    print(f"\nbest validation Dice during training: {model['metrics'].get('best_mean_dice'):.3f} "
          f"(iteration {model['metrics'].get('best_iter')}, {len(ds['validation'])} validation cases)")
    print(f"Dice on {len(test)} held-out test cases (mean ± std over cases):")
    for name, m in ev["per_label"].items():
        print(f"  {name:24s} {m['dice']['mean']:.3f} ± {m['dice']['std']:.3f}   HD95 {m['hd95']['mean']:.2f} mm")
    print(f"  {'mean':24s} {ev['overall']['dice']['mean']:.3f}")
    print(f"report: {report} (+ .csv, .md)")


if __name__ == "__main__":
    main()
