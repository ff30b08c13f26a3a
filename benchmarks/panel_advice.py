"""What the training panel says about unlabeled data, generated from the committed equal-time results (issue 32):
for each dataset and budget, MICD against supervised training with MICD's class weights at the same wait, on our
2-core CPU benchmark. Writes MICDTraining/Resources/equal-time-advice.json; the panel only reads it (no number in it
is typed by hand). Run after ssl_benchmark.py --time-budget has recorded new rows."""

from __future__ import annotations

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SOURCES = [os.path.join(HERE, "results", name) for name in ("ssl-cpu-equal-time.json", "ssl-cpu-la-equal-time.json")]
TARGET = os.path.join(ROOT, "MICDTraining", "Resources", "equal-time-advice.json")
WEIGHTED = "supervised-micd-weights"
MIN_SEEDS = 2  # a budget short of its seeds is left out here, and so from the README tables built from these rows


def best_validation_by_seed(row: dict) -> dict:
    """{seed: best validation mean Dice} from the row's validation curves ([[iteration, Dice], ...] per seed)."""
    out = {}
    for seed, curve in (row.get("validation_curves") or {}).items():
        values = [point[1] for point in curve or [] if point and point[1] is not None]
        if values:
            out[seed] = max(values)
    return out


def paired_with_weighted(sources=SOURCES):
    """(source path, row, the WEIGHTED row of its dataset, labeled count and budget) for every equal-time row of the
    summaries that is paired with it, in dataset, labeled count, budget and method order."""
    for path in sources:
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as f:
            summary = json.load(f)
        table = {(r["dataset"], r["labeled"], r["time_budget"], r["method"]): r for r in summary["rows"]}
        for (dataset, labeled, budget, method), row in sorted(
                table.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[1].get("time_budget_s") or 0.0, kv[0][3])):
            weighted = table.get((dataset, labeled, budget, WEIGHTED))
            if budget and weighted is not None and row.get("paired_diff_vs_supervised_weighted"):
                yield path, row, weighted


def advice(sources=SOURCES) -> dict:
    rows = []
    for path, micd, weighted in paired_with_weighted(sources):
        if micd["method"] == "micd" and min(len(micd["seeds"]), len(weighted["seeds"])) >= MIN_SEEDS:
            dataset, labeled, budget = micd["dataset"], micd["labeled"], micd["time_budget"]
            diff = micd["paired_diff_vs_supervised_weighted"]
            val_m, val_w = best_validation_by_seed(micd), best_validation_by_seed(weighted)
            seeds = sorted(set(val_m) & set(val_w))
            rows.append({
                "dataset": dataset, "labeled": labeled, "time_budget": budget, "time_budget_s": micd["time_budget_s"],
                "seeds": micd["seeds"],
                # unrounded: the panel rounds as the tables do, so both print the same figures
                "micd_mean_dice": micd["mean_dice"], "weighted_mean_dice": weighted["mean_dice"],
                "paired_diff": {"mean": diff["mean"], "ci95": list(diff["ci95"]), "n": diff["n"]},
                "iterations": {"micd": micd["iterations_by_seed"], "weighted": weighted["iterations_by_seed"]},
                # the default-change rule looks at validation only (never at test cases): ahead at every seed?
                "validation_micd_ahead_every_seed": bool(seeds) and all(val_m[s] > val_w[s] for s in seeds),
                "validation_weighted_ahead_every_seed": bool(seeds) and all(val_w[s] > val_m[s] for s in seeds),
                "cpu_flags": micd.get("cpu_flags"), "amp": micd.get("amp"), "source": os.path.relpath(path, ROOT).replace(os.sep, "/")})
    return {"generated_by": "benchmarks/panel_advice.py", "compared": f"micd vs {WEIGHTED}, same wait", "rows": rows}


def main() -> None:
    os.makedirs(os.path.dirname(TARGET), exist_ok=True)
    with open(TARGET, "w", encoding="utf-8") as f:
        json.dump(advice(), f, indent=1)
        f.write("\n")
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
