"""Preprocessing done once, into a cache folder of memory-mapped `.npy` arrays.

Each case becomes one entry folder `<name>-<key>/` holding `image.npy` (float32, z y x, on the network grid),
`label.npy` (uint8/uint16, same grid; labeled cases only; network output channels, not label values:
data/label_channels.py), `fg.npy` (a random subset of foreground voxel coordinates per channel, for foreground
oversampling) and `meta.json`. The key hashes everything the arrays depend on (the files'
absolute paths, sizes and modification times, the plan, the label names), so a changed file or plan is preprocessed
again while an unchanged one is only memory-mapped. An entry is written into a temporary folder and renamed into
place, so a killed run never leaves a torn entry; the OS pages arrays in on demand, so hundreds of CTs fit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from micd.data.dataset import Case, DatasetSpec, load_label_for_case, normalize_modality, read_image_info
from micd.data.io import ImageReadError, read_image
from micd.data.label_channels import LabelChannels
from micd.data.preprocess import PreprocessPlan, guess_modality, median_spacing, preprocess_image, preprocess_label

CACHE_VERSION = 1  # bump when the entry layout or the preprocessing code changes meaning
MAX_FG_COORDS = 5000  # per class and case
_STALE_TMP_SECONDS = 24 * 3600

Progress = Callable[[int, int, str, bool], None]  # (done, total, case name, was cached)


@dataclass
class PreparedCase:
    """One preprocessed case, arrays memory-mapped read-only from the cache.

    `fg_coords[c]` holds up to MAX_FG_COORDS voxel coordinates (z, y, x) of class c (present classes only).
    `pad_value` is the image minimum, the constant to pad patches with. `entry` is the cache folder of this case.
    """

    name: str
    image: np.ndarray
    label: Optional[np.ndarray]
    fg_coords: Dict[int, np.ndarray]
    source: str
    label_source: Optional[str] = None
    pad_value: float = 0.0
    entry: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> Tuple[int, int, int]:
        return tuple(int(s) for s in self.image.shape)  # type: ignore[return-value]

    @property
    def classes(self) -> List[int]:
        return sorted(c for c, v in self.fg_coords.items() if len(v))

    def without_label(self) -> "PreparedCase":
        """The same image as an unlabeled case (for samplers that must not look at labels)."""
        return dataclasses.replace(self, label=None, label_source=None, fg_coords={})


# ----------------------------------------------------------------------------------------------------- cache key

def _file_signature(path: str) -> list:
    """Absolute path, size and modification time of a file, or of every file in a (DICOM) folder."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        entries = sorted(os.scandir(path), key=lambda e: e.name)
        return [path, [(e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in entries if e.is_file()]]
    st = os.stat(path)
    return [path, st.st_size, st.st_mtime_ns]


def cache_key(case: Case, plan: PreprocessPlan, labels: Dict[int, str]) -> str:
    """Hash of everything a cache entry depends on; raises OSError when a file is missing."""
    parts = {
        "version": CACHE_VERSION,
        "image": _file_signature(case.image),
        "label": _file_signature(case.label) if case.label else None,
        "labels": {str(k): v for k, v in sorted(labels.items())} if case.label else None,
        "plan": plan.to_dict(),
    }
    if case.label and not LabelChannels.for_labels(labels).identity:
        parts["label_space"] = "channels"  # such entries once held raw label values
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=list).encode()).hexdigest()


def _entry_name(case: Case, key: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", case.name)[:60] or "case"
    return f"{safe}-{key[:16]}"


# ------------------------------------------------------------------------------------------------- foreground

def sample_foreground(label: np.ndarray, seed: int, max_per_class: int = MAX_FG_COORDS) -> np.ndarray:
    """Rows (class, z, y, x) of at most max_per_class random voxels of each foreground class (int32)."""
    flat = np.flatnonzero(label)
    values = label.ravel()[flat]
    rng = np.random.default_rng(seed)
    rows = []
    for c in np.unique(values):
        idx = flat[values == c]
        if idx.size > max_per_class:
            idx = np.sort(rng.choice(idx, max_per_class, replace=False))
        zyx = np.stack(np.unravel_index(idx, label.shape), axis=1)
        rows.append(np.concatenate([np.full((len(idx), 1), c), zyx], axis=1))
    return np.concatenate(rows).astype(np.int32) if rows else np.zeros((0, 4), np.int32)


def _coords_by_class(rows: np.ndarray) -> Dict[int, np.ndarray]:
    return {int(c): np.ascontiguousarray(rows[rows[:, 0] == c, 1:]) for c in np.unique(rows[:, 0])}


# ------------------------------------------------------------------------------------------------------ entries

def _write_entry(case: Case, plan: PreprocessPlan, labels: Dict[int, str], key: str, final: str) -> None:
    """Preprocess one case into a temporary folder next to `final`, then rename it into place."""
    tmp = os.path.join(os.path.dirname(final), f".tmp-{os.path.basename(final)}-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
    try:
        arr, ref = preprocess_image(read_image(case.image), plan)
        np.save(os.path.join(tmp, "image.npy"), arr)
        meta = {"version": CACHE_VERSION, "key": key, "name": case.name, "source": os.path.abspath(case.image),
                "label_source": os.path.abspath(case.label) if case.label else None, "shape": list(arr.shape),
                "pad_value": float(arr.min()), "plan": plan.to_dict(), "spacing": list(ref.GetSpacing()),
                "origin": list(ref.GetOrigin()), "direction": list(ref.GetDirection()), "fg_voxels": {}}
        if case.label:
            lbl = LabelChannels.for_labels(labels).to_channels(
                preprocess_label(load_label_for_case(case.label, labels), ref))
            np.save(os.path.join(tmp, "label.npy"), lbl)
            np.save(os.path.join(tmp, "fg.npy"), sample_foreground(lbl, seed=int(key[:8], 16)))
            counts = np.bincount(lbl.ravel())
            meta["fg_voxels"] = {str(c): int(n) for c, n in enumerate(counts) if c and n}
        with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
        try:
            os.rename(tmp, final)
        except OSError:
            if not os.path.isfile(os.path.join(final, "meta.json")):  # not a concurrent writer's finished entry
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_entry(entry: str) -> PreparedCase:
    """Memory-map one finished cache entry."""
    with open(os.path.join(entry, "meta.json"), encoding="utf-8") as f:
        meta = json.load(f)
    label_path = os.path.join(entry, "label.npy")
    has_label = meta.get("label_source") is not None
    rows = np.load(os.path.join(entry, "fg.npy")) if has_label else np.zeros((0, 4), np.int32)
    return PreparedCase(
        name=meta["name"], image=np.load(os.path.join(entry, "image.npy"), mmap_mode="r"),
        label=np.load(label_path, mmap_mode="r") if has_label else None, fg_coords=_coords_by_class(rows),
        source=meta["source"], label_source=meta.get("label_source"), pad_value=float(meta["pad_value"]),
        entry=entry, meta=meta)


def prepare_case(case: Case, plan: PreprocessPlan, cache_dir: str, labels: Dict[int, str]) -> Tuple[PreparedCase,
                                                                                                     bool]:
    """Return one case from the cache, preprocessing it first when its entry is missing; and whether it was cached."""
    key = cache_key(case, plan, labels)
    final = os.path.join(cache_dir, _entry_name(case, key))
    cached = os.path.isfile(os.path.join(final, "meta.json"))
    if not cached:
        _write_entry(case, plan, labels, key, final)
    return load_entry(final), cached


def _remove_stale_tmp(cache_dir: str) -> None:
    """Remove temporary folders left by runs killed long ago (recent ones may belong to a live run)."""
    now = time.time()
    for e in os.scandir(cache_dir):
        if e.name.startswith(".tmp-") and e.is_dir() and now - e.stat().st_mtime > _STALE_TMP_SECONDS:
            shutil.rmtree(e.path, ignore_errors=True)


def prepare_cases(cases: Sequence[Union[Case, str]], plan: PreprocessPlan, cache_dir: str, labels: Dict[int, str],
                  progress: Optional[Progress] = None) -> List[PreparedCase]:
    """Preprocess (or reuse from the cache) every case; plain paths are unlabeled images. Order is kept.

    `progress(done, total, name, cached)` is called after each case. Errors reading a file propagate as
    ImageReadError (validation should have caught them).
    """
    os.makedirs(cache_dir, exist_ok=True)
    _remove_stale_tmp(cache_dir)
    out = []
    for i, c in enumerate(cases):
        case = c if isinstance(c, Case) else Case(c)
        try:
            prepared, cached = prepare_case(case, plan, cache_dir, labels)
        except FileNotFoundError as e:
            raise ImageReadError(f"{e.filename}: file not found") from None
        out.append(prepared)
        if progress:
            progress(i + 1, len(cases), prepared.name, cached)
    return out


# --------------------------------------------------------------------------------------------------------- plan

def _float_tuple(value, n: int, what: str) -> Tuple[float, ...]:
    vals = [value] * n if isinstance(value, (int, float)) else list(value)
    if len(vals) != n or not all(float(v) > 0 or what == "ct_window" for v in vals):
        raise ValueError(f"{what} needs {n} {'numbers' if what == 'ct_window' else 'positive numbers'}, got {value!r}")
    return tuple(float(v) for v in vals)


def make_plan(spec: DatasetSpec, overrides: Optional[dict] = None) -> Tuple[PreprocessPlan, List[str]]:
    """Decide the preprocessing plan from the labeled set, applying overrides; return it and notes saying why.

    overrides (None values are ignored): `target_spacing` (x, y, z mm, or one number for isotropic), `modality`
    ("CT", "MR", ...), `ct_window` (low, high HU), and any other PreprocessPlan field.
    Defaults: target spacing = median spacing of the labeled cases (after canonical reorientation); modality from the
    dataset, else guessed from the first labeled image.
    """
    ov = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = set(ov) - set(PreprocessPlan.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown preprocessing option(s): {sorted(unknown)}")
    special = ("target_spacing", "ct_window", "modality")
    plan = PreprocessPlan.from_dict({k: v for k, v in ov.items() if k not in special})
    notes = []
    cases = spec.labeled or spec.validation
    if "target_spacing" in ov:
        plan.target_spacing = _float_tuple(ov["target_spacing"], 3, "target_spacing")  # type: ignore[assignment]
        notes.append(f"target spacing {_fmt(plan.target_spacing)} mm (x, y, z): given")
    else:
        spacings = []
        for c in cases:
            try:
                spacings.append(read_image_info(c.image).canonical_spacing())
            except ImageReadError:
                continue
        if spacings:
            plan.target_spacing = median_spacing(spacings)
            notes.append(f"target spacing {_fmt(plan.target_spacing)} mm (x, y, z): median of {len(spacings)} "
                         "labeled case(s)")
    modality, why = _decide_modality(ov.get("modality"), spec, cases)
    plan.modality = modality
    if "ct_window" in ov:
        plan.ct_window = _float_tuple(ov["ct_window"], 2, "ct_window")  # type: ignore[assignment]
        if plan.ct_window[0] >= plan.ct_window[1]:
            raise ValueError(f"ct_window must be (low, high) with low < high, got {plan.ct_window}")
    if modality == "CT":
        notes.append(f"modality CT ({why}): HU window {plan.ct_window[0]:g}..{plan.ct_window[1]:g} scaled to [0, 1]")
    else:
        notes.append(f"modality {modality} ({why}): per-volume robust z-score")
    return plan, notes


def _decide_modality(given, spec: DatasetSpec, cases: Sequence[Case]) -> Tuple[str, str]:
    if given:
        return normalize_modality(given) or "MR", "given"
    if spec.modality:
        return spec.modality, "from the dataset"
    for c in cases:
        try:
            return guess_modality(read_image(c.image)), f"guessed from {os.path.basename(c.image)}"
        except ImageReadError:
            continue
    return "MR", "default"


def _fmt(values: Sequence[float]) -> str:
    return " x ".join(f"{v:g}" for v in values)
