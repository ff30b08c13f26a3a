"""Writing an evaluation as CSV (one row per case and label, then summary rows) and Markdown."""

from __future__ import annotations

import csv
from typing import Optional

from micd.atomicfile import open_replacing
from micd.evaluation.summary import METRICS


def _fmt(x: Optional[float], digits: int = 4) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def write_csv(result: dict, path: str) -> None:
    with open_replacing(path, newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "label", "name", "dice", "hd95_mm", "asd_mm", "empty"])
        for c in result["cases"]:
            for name, m in c["metrics"].items():
                w.writerow([c["case"], m["label"], name, _fmt(m["dice"], 6), _fmt(m["hd95"], 6), _fmt(m["asd"], 6),
                            m["empty"] or ""])
        for stat in ("mean", "std"):
            for name, s in result["per_label"].items():
                w.writerow([stat.upper(), s["label"], name] + [_fmt(s[m][stat], 6) for m in METRICS] + [""])
            w.writerow([stat.upper(), "all", "overall"] + [_fmt(result["overall"][m][stat], 6) for m in METRICS]
                       + [""])


def markdown(result: dict) -> str:
    def cell(s):
        return "–" if s["mean"] is None else f"{s['mean']:.4f} ± {s['std']:.4f}" if s["mean"] < 10 else \
            f"{s['mean']:.2f} ± {s['std']:.2f}"
    lines = [f"Evaluation of {len(result['cases'])} case(s); mean ± std over cases; distances in mm.", "",
             "| label | Dice | HD95 (mm) | ASD (mm) | cases | undefined distances | both empty |",
             "|---|---|---|---|---|---|---|"]
    for name, s in result["per_label"].items():
        lines.append(f"| {s['label']} {name} | {cell(s['dice'])} | {cell(s['hd95'])} | {cell(s['asd'])} | "
                     f"{s['dice']['n']} | {s['hd95']['n_undefined']} | {s['n_both_empty']} |")
    o = result["overall"]
    lines.append(f"| **overall** | {cell(o['dice'])} | {cell(o['hd95'])} | {cell(o['asd'])} | {o['dice']['n']} | "
                 f"{o['hd95']['n_undefined']} | |")
    lines += ["", "Empty masks: both empty -> Dice 1, distances 0; one empty -> Dice 0, distances undefined "
                  "(left out of the distance means)."]
    return "\n".join(lines) + "\n"


def write_markdown(result: dict, path: str) -> None:
    with open_replacing(path) as f:
        f.write(markdown(result))
