"""Mean and standard deviation per label and overall from per-case metrics (rules in `micd.evaluation`)."""

from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np

METRICS = ("dice", "hd95", "asd")


def _stats(values: List[Optional[float]]) -> dict:
    vals = [v for v in values if v is not None]
    return {"mean": float(np.mean(vals)) if vals else None, "std": float(np.std(vals)) if vals else None,
            "n": len(vals), "n_undefined": len(values) - len(vals)}


def summarize(cases: List[dict], labels: Dict[int, str]) -> dict:
    """cases: [{"case": id, "metrics": {name: {dice, hd95, asd, empty}}}] -> {"per_label": ..., "overall": ...}."""
    per_label = {}
    for v, name in labels.items():
        rows = [c["metrics"][name] for c in cases if name in c["metrics"]]
        per_label[name] = {m: _stats([r[m] for r in rows]) for m in METRICS}
        per_label[name]["label"] = v
        per_label[name]["n_both_empty"] = sum(r["empty"] == "both" for r in rows)
    case_means = {m: [] for m in METRICS}
    for c in cases:
        for m in METRICS:
            vals = [r[m] for r in c["metrics"].values() if r[m] is not None]
            c.setdefault("mean", {})[m] = float(np.mean(vals)) if vals else None
            case_means[m].append(c["mean"][m])
    return {"per_label": per_label, "overall": {m: _stats(case_means[m]) for m in METRICS}}
