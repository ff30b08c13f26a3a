"""Checking a dataset before any training starts, so that every problem reaches the user at once, in one report.

Problems stop training (unreadable or missing files, non-3D images, image/label geometry mismatches, non-integer,
undeclared or empty label maps, no labeled cases, unlabeled sources without readable images). Warnings do not
(spacing and intensity outliers, a CT-looking scan in an MR set, overlapping case lists).

Images are read whole by default: a truncated compressed file only fails when its voxels are decoded, and the
intensity warnings need voxel values. `read_voxels=False` reads only image headers (labels are always read whole).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from micd.data.dataset import (Case, DatasetSpec, ImageInfo, Problem, expand_unlabeled, image_info, nifti_truncation,
                               read_case_label, read_image_info)
from micd.data.io import ImageReadError, check_fits_in_memory, read_image

__all__ = ["Problem", "Report", "validate_dataset", "check_image", "check_label"]

SPACING_OUTLIER_FACTOR = 2.0
INTENSITY_OUTLIER_FACTOR = {"CT": 10.0, "MR": 1000.0}  # MR units are arbitrary (z-scored later): only extremes
_SAMPLE_VOXELS = 1_000_000  # intensity statistics use a strided subsample of this many voxels at most


@dataclass
class Report:
    """The outcome of `validate_dataset`: problems (training must not start) and warnings (worth a look)."""

    problems: List[Problem] = field(default_factory=list)
    warnings: List[Problem] = field(default_factory=list)
    source: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        """Human-readable report: a summary line, then each problem and warning as `file: reason`."""
        head = f"Dataset check{' of ' + self.source if self.source else ''}: "
        head += f"{len(self.problems)} problem(s), {len(self.warnings)} warning(s)"
        lines = [head]
        for title, items in (("Problems", self.problems), ("Warnings", self.warnings)):
            if items:
                lines.append(f"{title}:")
                lines += [f"  - {p.file}: {p.reason}" for p in items]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "problems": [vars(p) for p in self.problems],
                "warnings": [vars(p) for p in self.warnings]}


@dataclass
class _Tolerance:
    spacing_rtol: float
    origin_atol_mm: float
    direction_atol: float


@dataclass
class ImageCheck:
    """What checking one image found: its header (if readable), intensity statistics (if read) and problems."""

    path: str
    info: Optional[ImageInfo] = None
    p1: Optional[float] = None
    p99: Optional[float] = None
    minimum: Optional[float] = None
    problems: List[Problem] = field(default_factory=list)


def _reason(e: Exception, path: str) -> str:
    msg = str(e)
    return msg[len(path) + 2:] if msg.startswith(path + ": ") else msg


# ------------------------------------------------------------------------------------------------------- images

def check_image(path: str, read_voxels: bool = True) -> ImageCheck:
    """Check that one image is readable and a 3D scalar volume; with read_voxels, also gather intensity statistics."""
    out = ImageCheck(path)
    try:
        info = read_image_info(path)
    except ImageReadError as e:
        out.problems.append(Problem(path, _reason(e, path)))
        return out
    bad = info.not_3d_reason()
    if bad:
        out.problems.append(Problem(path, bad))
        return out
    out.info = info.as_3d()
    try:
        check_fits_in_memory(path, info.size, info.components, info.pixel_id)
        cut = nifti_truncation(path, info, decompress=read_voxels)
        if cut:
            raise ImageReadError(f"{path}: {cut}")
        if not read_voxels:
            return out
        img = read_image(path)
    except ImageReadError as e:
        out.problems.append(Problem(path, _reason(e, path)))
        out.info = None
        return out
    arr = sitk.GetArrayViewFromImage(img).ravel()
    sample = arr[:: max(1, arr.size // _SAMPLE_VOXELS)].astype(np.float64)
    out.p1, out.p99 = (float(v) for v in np.percentile(sample, [1, 99]))
    out.minimum = float(arr.min())
    return out


# ------------------------------------------------------------------------------------------------------- labels

def _geometry_problems(label: ImageInfo, image: ImageInfo, path: str, tol: _Tolerance) -> List[Problem]:
    """Size must match exactly; spacing, origin and direction within tolerance."""
    fmt = lambda v: "(" + ", ".join(f"{x:.4g}" for x in v) + ")"  # noqa: E731
    out = []
    if tuple(label.size) != tuple(image.size):
        out.append(Problem(path, f"size {label.size} differs from its image's size {image.size}"))
    if not np.allclose(label.spacing, image.spacing, rtol=tol.spacing_rtol, atol=0):
        out.append(Problem(path, f"spacing {fmt(label.spacing)} mm differs from its image's {fmt(image.spacing)} mm"))
    if not np.allclose(label.origin, image.origin, rtol=0, atol=tol.origin_atol_mm):
        out.append(Problem(path, f"origin {fmt(label.origin)} mm differs from its image's {fmt(image.origin)} mm"))
    if not np.allclose(label.direction, image.direction, rtol=0, atol=tol.direction_atol):
        out.append(Problem(path, f"direction {fmt(label.direction)} differs from its image's "
                                 f"{fmt(image.direction)}"))
    return out


def label_values(arr: np.ndarray) -> Tuple[Optional[np.ndarray], Optional[str]]:
    """The distinct values of a label array, or a reason why they are not usable label values."""
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            return None, "label values include NaN or infinity"
        frac = arr[arr != np.round(arr)]
        if frac.size:
            return None, (f"label values are not integers ({frac.size} voxels, e.g. {float(frac.flat[0]):g}); "
                          "a label map must hold whole numbers")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0:
        return None, f"negative label values (minimum {lo:g})"
    if hi <= 65535:  # count in slabs: one int64 copy of a whole CT label map would cost gigabytes
        counts = np.zeros(int(hi) + 1, np.int64)
        step = max(1, 8_000_000 // max(1, arr[0].size))
        for z in range(0, arr.shape[0], step):
            counts += np.bincount(arr[z:z + step].ravel().astype(np.int64), minlength=len(counts))
        return np.flatnonzero(counts), None
    return np.unique(arr).astype(np.int64), None


def check_label(path: str, labels: Dict[int, str], image: Optional[ImageInfo], tol: _Tolerance) -> List[Problem]:
    """Check one label map: readable, 3D, its geometry matches the image, integer declared values, not empty."""
    try:
        if path.lower().endswith((".nii", ".nii.gz")) and os.path.isfile(path):
            cut = nifti_truncation(path, read_image_info(path))
            if cut:
                raise ImageReadError(f"{path}: {cut}")
        lbl, undeclared = read_case_label(path, labels)
    except ImageReadError as e:
        return [Problem(path, _reason(e, path))]
    problems = [Problem(path, f"segment {name!r} matches no declared label name {sorted(labels.values())}")
                for name in undeclared]
    if image is not None:
        problems += _geometry_problems(image_info(lbl), image, path, tol)
    values, bad = label_values(sitk.GetArrayViewFromImage(lbl))
    if bad:
        return problems + [Problem(path, bad)]
    extra = sorted(int(v) for v in values if v != 0 and int(v) not in labels)
    if extra:
        declared = dict(sorted(labels.items()))
        problems.append(Problem(path, f"label value(s) {extra} are not declared in labels {declared}"))
    if not any(v != 0 for v in values) and not undeclared:
        problems.append(Problem(path, "label map is empty (only background 0)"))
    return problems


def _check_case(case: Case, labels: Dict[int, str], tol: _Tolerance, read_voxels: bool) -> Tuple[ImageCheck,
                                                                                                   List[Problem]]:
    img = check_image(case.image, read_voxels)
    if case.label is None:
        return img, [Problem(case.image, "labeled case has no label file")]
    return img, check_label(case.label, labels, img.info, tol)


# ----------------------------------------------------------------------------------------------------- warnings

def _spacing_warnings(checks: Sequence[ImageCheck]) -> List[Problem]:
    """Warn on images whose (canonical) spacing differs more than 2x from the median on any axis."""
    spacing = {c.path: np.array(c.info.canonical_spacing()) for c in checks if c.info is not None}
    if len(spacing) < 3:
        return []
    med = np.median(np.stack(list(spacing.values())), axis=0)
    out = []
    for path, sp in spacing.items():
        ratio = sp / med
        if np.any(ratio > SPACING_OUTLIER_FACTOR) or np.any(ratio < 1 / SPACING_OUTLIER_FACTOR):
            out.append(Problem(path, f"spacing outlier: {tuple(round(float(v), 3) for v in sp)} mm vs the median "
                                     f"{tuple(round(float(v), 3) for v in med)} mm (more than "
                                     f"{SPACING_OUTLIER_FACTOR:g}x apart); it will be resampled"))
    return out


def _intensity_warnings(checks: Sequence[ImageCheck], modality: Optional[str], labeled: Sequence[str]) -> List[Problem]:
    """Warn on CT-looking scans in an MR set (and the reverse) and on intensity ranges far from the typical one."""
    stats = [c for c in checks if c.p1 is not None]
    if not stats:
        return []
    ct_like = {c.path: c.p1 < -500 for c in stats}
    if modality not in ("CT", "MR"):
        votes = [ct_like[p] for p in labeled if p in ct_like] or list(ct_like.values())
        modality = "CT" if sum(votes) > len(votes) / 2 else "MR"
    out = []
    for c in stats:
        if modality == "MR" and ct_like[c.path]:
            out.append(Problem(c.path, f"looks like a CT (values down to {c.minimum:g}, 1st percentile {c.p1:g}) "
                                       "in an MR dataset"))
        elif modality == "CT" and c.minimum is not None and c.minimum >= 0:
            out.append(Problem(c.path, f"does not look like CT in Hounsfield units (no negative values, range "
                                       f"{c.minimum:g}..{c.p99:g}) in a CT dataset"))
    if len(stats) >= 3:
        factor = INTENSITY_OUTLIER_FACTOR[modality]
        ranges = np.array([c.p99 - c.p1 for c in stats])
        med = float(np.median(ranges))
        for c, r in zip(stats, ranges):
            if med > 0 and (r > factor * med or r < med / factor):
                out.append(Problem(c.path, f"intensity outlier: 1-99th percentile range {c.p1:g}..{c.p99:g} is more "
                                           f"than {factor:g}x wider or narrower than the typical {med:g}"))
    return out


def _list_warnings(spec: DatasetSpec) -> List[Problem]:
    out = []
    seen = set()
    for c in spec.labeled:
        if c.image in seen:
            out.append(Problem(c.image, "listed twice among the labeled cases"))
        seen.add(c.image)
    out += [Problem(c.image, "validation case is also a labeled training case; its Dice will be optimistic")
            for c in spec.validation if c.image in seen]
    return out


# ------------------------------------------------------------------------------------------------------ dataset

def validate_dataset(spec: DatasetSpec, spacing_rtol: float = 1e-3, origin_atol_mm: float = 1e-2,
                     direction_atol: float = 1e-3, read_voxels: bool = True,
                     workers: Optional[int] = None) -> Report:
    """Check every file of the dataset and return one report of all problems and warnings.

    Geometry tolerances: spacing relative (`spacing_rtol`), origin absolute in mm, direction cosines absolute.
    `workers` threads read files in parallel (SimpleITK releases the GIL); the report's order does not depend on it.
    """
    tol = _Tolerance(spacing_rtol, origin_atol_mm, direction_atol)
    report = Report(list(spec.problems), [], spec.source)
    if not spec.labels:
        report.problems.append(Problem(spec.source, "no foreground labels are declared"))
    if not spec.labeled:
        report.problems.append(Problem(spec.source, "no labeled cases: at least one image with a label is needed"))
    cases = spec.labeled + spec.validation
    groups, source_problems = expand_unlabeled(spec.unlabeled_sources)
    unlabeled = list(dict.fromkeys([os.path.normpath(p) for ps in groups.values() for p in ps] +
                                   [os.path.normpath(p) for p in spec.unlabeled]))
    labeled_images = {os.path.realpath(c.image) for c in cases}  # checked as cases already
    unlabeled = [p for p in unlabeled if os.path.realpath(p) not in labeled_images]
    n_workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        case_results = list(pool.map(lambda c: _check_case(c, spec.labels, tol, read_voxels), cases))
        unlabeled_results = dict(zip(unlabeled, pool.map(lambda p: check_image(p, read_voxels), unlabeled)))
    for img, label_problems in case_results:
        report.problems += img.problems + label_problems
    report.problems += source_problems
    for path in unlabeled:
        report.problems += unlabeled_results[path].problems
    for src, paths in groups.items():
        readable = [p for p in paths if p not in unlabeled_results or not unlabeled_results[p].problems]
        if paths and not readable:
            report.problems.append(Problem(src, f"unlabeled source has no readable image (none of its {len(paths)} "
                                                "image file(s) could be read)"))
    checks = [img for img, _ in case_results] + list(unlabeled_results.values())
    report.warnings += _spacing_warnings(checks)
    report.warnings += _intensity_warnings(checks, spec.modality, [c.image for c in spec.labeled])
    report.warnings += _list_warnings(spec)
    return report
