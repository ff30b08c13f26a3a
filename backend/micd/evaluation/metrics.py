"""Per-case, per-label metrics with MONAI on label images that share one grid (checked first)."""

from __future__ import annotations

import math
import warnings
from typing import Dict, Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance

EMPTY_RULES = {
    "both_empty": "Dice 1.0, HD95 0.0, ASD 0.0; included in all means",
    "one_empty": "Dice 0.0 (included in the mean); HD95 and ASD null (undefined), excluded from their means and "
                 "counted in n_undefined",
}


class GridMismatchError(ValueError):
    """Prediction and reference are not on the same voxel grid."""


def check_same_grid(pred: sitk.Image, ref: sitk.Image, what: str = "") -> None:
    """Raise GridMismatchError unless size, spacing, origin and direction agree (spacing/origin to 1e-3 mm)."""
    pre = f"{what}: " if what else ""
    if pred.GetSize() != ref.GetSize():
        raise GridMismatchError(f"{pre}prediction size {pred.GetSize()} != reference size {ref.GetSize()}")
    for name, tol in (("Spacing", 1e-3), ("Origin", 1e-3), ("Direction", 1e-4)):
        a, b = np.array(getattr(pred, "Get" + name)()), np.array(getattr(ref, "Get" + name)())
        if not np.allclose(a, b, atol=tol, rtol=1e-5):
            raise GridMismatchError(f"{pre}prediction {name.lower()} {tuple(np.round(a, 4))} != reference "
                                    f"{tuple(np.round(b, 4))}; resample the prediction onto the reference grid")


def label_metrics(pred: np.ndarray, ref: np.ndarray, spacing_zyx: Sequence[float]) -> dict:
    """Metrics of two boolean masks (z, y, x). Distances in the units of `spacing_zyx` (mm)."""
    p_any, r_any = bool(pred.any()), bool(ref.any())
    if not p_any and not r_any:
        return {"dice": 1.0, "hd95": 0.0, "asd": 0.0, "empty": "both"}
    if not p_any or not r_any:
        return {"dice": 0.0, "hd95": None, "asd": None, "empty": "prediction" if not p_any else "reference"}
    box = _bounding_box(pred | ref, margin=1)  # distances only depend on the masks' neighbourhood
    yp = torch.from_numpy(np.ascontiguousarray(pred[box]))[None, None].float()
    yr = torch.from_numpy(np.ascontiguousarray(ref[box]))[None, None].float()
    sp = [float(s) for s in spacing_zyx]
    with warnings.catch_warnings():  # MONAI warns about its own internal use of a deprecated argument
        warnings.simplefilter("ignore", FutureWarning)
        dice = float(compute_dice(yp, yr, include_background=True, ignore_empty=False)[0, 0])
        hd95 = float(compute_hausdorff_distance(yp, yr, include_background=True, percentile=95, spacing=sp)[0, 0])
        asd = float(compute_average_surface_distance(yp, yr, include_background=True, symmetric=True,
                                                     spacing=sp)[0, 0])
    return {"dice": dice, "hd95": _finite(hd95), "asd": _finite(asd), "empty": None}


def case_metrics(pred: sitk.Image, ref: sitk.Image, labels: Sequence[int], what: str = "") -> Dict[int, dict]:
    """{label value: metrics} for one case; the images must share a grid."""
    check_same_grid(pred, ref, what)
    p, r = sitk.GetArrayViewFromImage(pred), sitk.GetArrayViewFromImage(ref)
    spacing_zyx = tuple(reversed(ref.GetSpacing()))
    return {int(v): label_metrics(p == v, r == v, spacing_zyx) for v in labels}


def _bounding_box(mask: np.ndarray, margin: int):
    idx = [np.flatnonzero(mask.any(axis=tuple(j for j in range(mask.ndim) if j != i))) for i in range(mask.ndim)]
    return tuple(slice(max(0, int(i[0]) - margin), min(n, int(i[-1]) + 1 + margin)) for i, n in zip(idx, mask.shape))


def _finite(x: float) -> Optional[float]:
    return x if math.isfinite(x) else None
