"""Preprocessing shared by training and inference: canonical orientation, resampling, intensity normalisation.

A `PreprocessPlan` is decided once from the labeled set and stored in `model.json`, so that inference repeats exactly
what training did. Preprocessed images stay SimpleITK images until the end, so a prediction made on the
preprocessed grid maps back to the original scan with one physical-space resampling (`restore_geometry`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

CANONICAL_ORIENTATION = "LPS"  # ITK's identity direction; axis-aligned after DICOMOrient
DEFAULT_CT_WINDOW = (-175.0, 250.0)


@dataclass
class PreprocessPlan:
    """How every image is brought onto the network's grid. Spacing is (x, y, z) in mm, as SimpleITK orders it."""

    target_spacing: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    modality: str = "MR"  # "CT": HU window to [0, 1]; anything else: per-volume robust z-score
    ct_window: Tuple[float, float] = DEFAULT_CT_WINDOW
    orientation: str = CANONICAL_ORIENTATION
    zscore_percentiles: Tuple[float, float] = (0.5, 99.5)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessPlan":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for k in ("target_spacing", "ct_window", "zscore_percentiles"):
            if k in known:
                known[k] = tuple(float(v) for v in known[k])
        return cls(**known)


def canonical(img: sitk.Image, orientation: str = CANONICAL_ORIENTATION) -> sitk.Image:
    """Permute/flip axes so that the direction is as close to `orientation` as the image allows (no resampling)."""
    return sitk.DICOMOrient(img, orientation)


def resample_to_spacing(img: sitk.Image, spacing: Sequence[float], is_label: bool) -> sitk.Image:
    """Resample onto a grid of the given spacing covering the same physical extent (linear, or nearest for labels)."""
    old_sp = np.array(img.GetSpacing(), float)
    new_sp = np.array(spacing, float)
    if np.allclose(old_sp, new_sp, rtol=1e-3):
        return img
    old_size = np.array(img.GetSize(), float)
    new_size = np.maximum(1, np.round(old_size * old_sp / new_sp)).astype(int)
    return sitk.Resample(img, [int(s) for s in new_size], sitk.Transform(), sitk.sitkNearestNeighbor if is_label
                         else sitk.sitkLinear, img.GetOrigin(), [float(s) for s in new_sp], img.GetDirection(), 0,
                         img.GetPixelID() if is_label else sitk.sitkFloat32)


def normalize(arr: np.ndarray, plan: PreprocessPlan, in_place: bool = False) -> np.ndarray:
    """CT: clip to the HU window and scale to [0, 1]. Others: z-score with robust (percentile-clipped) statistics.

    `in_place`: CT arrays that are already float32 are overwritten instead of copied (a 512 x 512 x 400 CT is 420 MB
    per copy), with the same float32 arithmetic. The z-score keeps its float64 statistics and arithmetic (the
    percentiles are float64), so that cached training arrays stay bit-identical."""
    a = arr.astype(np.float32, copy=not in_place)
    if plan.modality.upper() == "CT":
        lo, hi = plan.ct_window
        np.subtract(a, lo, out=a)
        np.divide(a, hi - lo, out=a)
        return np.clip(a, 0.0, 1.0, out=a)
    lo, hi = np.percentile(a, plan.zscore_percentiles)
    c = np.clip(a, lo, hi)
    std = float(c.std())
    return ((c - float(c.mean())) / (std if std > 1e-6 else 1.0)).astype(np.float32)


def preprocess_image(img: sitk.Image, plan: PreprocessPlan) -> Tuple[np.ndarray, sitk.Image]:
    """Return the normalised float32 array (z, y, x) on the network grid, and that grid as an image (geometry).

    Reoriented in the input's own pixel type (a permutation: exact), resampled straight to float32, and normalised in
    the one array copy, so that at most about two volume-sized float32 arrays exist at once."""
    ref = resample_to_spacing(canonical(img, plan.orientation), plan.target_spacing, is_label=False)
    arr = normalize(sitk.GetArrayFromImage(ref), plan, in_place=True)
    return arr, ref


def preprocess_label(lbl: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """Bring a label map onto the grid of a preprocessed image (nearest neighbour, physical space)."""
    out = sitk.Resample(lbl, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt16)
    return sitk.GetArrayFromImage(out).astype(np.uint8 if sitk.GetArrayViewFromImage(out).max(initial=0) < 256
                                               else np.uint16)


def array_to_image(arr: np.ndarray, reference: sitk.Image) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(reference)
    return img


def restore_geometry(labels: sitk.Image, original: sitk.Image) -> sitk.Image:
    """Resample a label map from the network grid back onto the original scan's exact grid (nearest neighbour)."""
    return sitk.Resample(labels, original, sitk.Transform(), sitk.sitkNearestNeighbor, 0, labels.GetPixelID())


def guess_modality(img: sitk.Image) -> str:
    """CT when the image holds clearly negative Hounsfield-like values (air around -1000), else MR."""
    arr = sitk.GetArrayViewFromImage(img)
    return "CT" if float(np.percentile(arr, 1)) < -500 else "MR"


def median_spacing(spacings: List[Sequence[float]]) -> Tuple[float, float, float]:
    return tuple(float(v) for v in np.median(np.array(spacings, float), axis=0))  # type: ignore[return-value]
