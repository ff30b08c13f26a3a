"""Evaluating matched prediction/reference pairs into one result dict (the JSON written by `micd evaluate`).

Cases are read one at a time. Without declared names, the labels are every non-zero value found in any case; a
label found in other cases but absent from both masks of a case gets the both-empty values there.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from micd.data.io import read_label
from micd.evaluation import EVALUATION_SCHEMA_VERSION
from micd.evaluation.metrics import EMPTY_RULES, case_metrics, label_metrics
from micd.evaluation.summary import summarize

BOTH_EMPTY = label_metrics(np.zeros(1, bool), np.zeros(1, bool), (1.0,))


def evaluate_pairs(pairs: List[Tuple[str, str, str]], names: Optional[Dict[int, str]] = None,
                   progress: Optional[Callable[[Iterable], Iterable]] = None) -> dict:
    """pairs: [(case, prediction path, reference path)] -> result dict (see `build_result`)."""
    per_case = []
    seen: Dict[int, str] = {}
    for case, p, r in (progress(pairs) if progress else pairs):
        pred, ref = read_label(p), read_label(r)
        if names is None:
            values = set()
            for img in (pred.image, ref.image):
                values.update(int(v) for v in np.flatnonzero(np.bincount(sitk.GetArrayViewFromImage(img).ravel()
                                                                         .astype(np.int64))) if v)
            for v in values:
                seen.setdefault(v, ref.names.get(v) or pred.names.get(v) or f"label_{v}")
        wanted = sorted(names) if names is not None else sorted(values)
        per_case.append((case, p, r, case_metrics(pred.image, ref.image, wanted, what=case)))
    labels = dict(sorted(names.items())) if names is not None else dict(sorted(seen.items()))
    cases = [{"case": case, "prediction": p, "reference": r,
              "metrics": {labels[v]: {"label": v, **m.get(v, BOTH_EMPTY)} for v in labels}}
             for case, p, r, m in per_case]
    return build_result(cases, labels)


def evaluate_arrays(pred: np.ndarray, ref: np.ndarray, spacing_zyx, labels: Dict[int, str]) -> dict:
    """One case from arrays (z, y, x) already on one grid; spacing in mm, (z, y, x) order like the arrays."""
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} != reference shape {ref.shape}")
    m = {labels[v]: {"label": v, **label_metrics(pred == v, ref == v, spacing_zyx)} for v in sorted(labels)}
    return build_result([{"case": "case", "metrics": m}], dict(sorted(labels.items())))


def build_result(cases: List[dict], labels: Dict[int, str]) -> dict:
    out = {"schema": "micd-evaluation", "schema_version": EVALUATION_SCHEMA_VERSION,
           "labels": {str(k): v for k, v in labels.items()}, "empty_rules": EMPTY_RULES,
           "units": {"hd95": "mm", "asd": "mm"}, "cases": cases}
    out.update(summarize(cases, labels))
    return out
