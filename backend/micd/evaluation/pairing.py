"""Matching predictions with references (files, or folders matched by case name) and finding label names."""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Tuple

from micd.contract import MODEL_JSON
from micd.data.io import expand_image_sources
from micd.inference.outputs import case_name


class PairingError(ValueError):
    """Predictions and references cannot be matched; the message lists what is missing."""


def pair_cases(pred: str, label: str) -> List[Tuple[str, str, str]]:
    """[(case, prediction path, reference path)]. Folders: every prediction needs a reference of the same case name
    (references without a prediction are ignored, so a label folder may hold more cases than were predicted)."""
    if not os.path.exists(pred):
        raise PairingError(f"--pred {pred}: not found")
    if not os.path.exists(label):
        raise PairingError(f"--label {label}: not found")
    if os.path.isfile(pred) and os.path.isfile(label):
        return [(case_name(pred), pred, label)]
    if os.path.isfile(pred) != os.path.isfile(label):
        raise PairingError("--pred and --label must both be files or both be folders")
    preds, _ = expand_image_sources([pred])
    preds += sorted(os.path.join(pred, f) for f in os.listdir(pred) if f.lower().endswith(".seg.nrrd"))
    refs, _ = expand_image_sources([label])
    refs += sorted(os.path.join(label, f) for f in os.listdir(label) if f.lower().endswith(".seg.nrrd"))
    by_name = {case_name(r): r for r in refs}
    missing = [case_name(p) for p in preds if case_name(p) not in by_name]
    if not preds:
        raise PairingError(f"--pred {pred}: no label images found")
    if missing:
        raise PairingError(f"no reference in {label} for {len(missing)} prediction(s): {', '.join(missing[:10])}"
                           + (" ..." if len(missing) > 10 else ""))
    return [(case_name(p), p, by_name[case_name(p)]) for p in preds]


def read_label_names(spec: Optional[str]) -> Optional[Dict[int, str]]:
    """Label names from a model folder, a model.json / dataset.json (its "labels"), or a {"1": "name"} JSON file."""
    if not spec:
        return None
    path = os.path.join(spec, MODEL_JSON) if os.path.isdir(spec) else spec
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
        d = d.get("labels", d) if isinstance(d, dict) else d
        names = {int(k): str(v) for k, v in d.items()}
    except (OSError, json.JSONDecodeError, AttributeError, ValueError, TypeError) as e:
        raise PairingError(f"--labels {spec}: cannot read label names ({e})") from None
    names.pop(0, None)
    if not names:
        raise PairingError(f"--labels {spec}: no foreground labels")
    return names
