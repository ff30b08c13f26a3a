"""The dataset a training run uses: a JSON dataset file or an MSD/nnU-Net style folder, read into a `DatasetSpec`.

Loading only checks the file's structure (and raises `DatasetError` with every structural problem at once); whether
the images and labels themselves are usable is `validate.validate_dataset`'s job, so that a user sees one report.

Label files may be Slicer `.seg.nrrd` segmentations: their segments are matched to the dataset's declared labels by
name (`load_label_for_case`), so the same remapping serves validation and the preprocessing cache.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from micd.data.io import IMAGE_SUFFIXES, SEG_SUFFIX, ImageReadError, expand_image_sources, pixel_bytes, read_label

MIN_LABELED_FOR_HOLDOUT = 4  # below this many labeled cases, none is held out for validation
MIN_TRAINING_AFTER_HOLDOUT = 3


@dataclass
class Problem:
    """One thing wrong with the dataset: the file (or dataset entry) concerned and why, in words."""

    file: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.reason}"


class DatasetError(Exception):
    """The dataset file is structurally unusable; `problems` lists every problem found."""

    def __init__(self, problems: List[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass
class Case:
    """One image and, for labeled and validation cases, its label map."""

    image: str
    label: Optional[str] = None
    origin: Optional[str] = None  # the file the image was exported from (Slicer), if it is not `image` itself

    @property
    def name(self) -> str:
        return case_name(self.image)


@dataclass
class DatasetSpec:
    """A dataset with absolute paths. `labels` maps foreground label values to names (background 0 is implicit).

    `unlabeled` holds expanded image paths; `unlabeled_sources` the files, folders or globs they came from (absolute),
    so validation can say which source yields nothing readable. `notes` are facts worth telling the user (e.g. which
    channel was used); `problems` are non-structural problems found while loading, reported by validation.
    """

    labels: Dict[int, str]
    labeled: List[Case]
    unlabeled: List[str] = field(default_factory=list)
    validation: List[Case] = field(default_factory=list)
    modality: Optional[str] = None
    source: str = ""
    notes: List[str] = field(default_factory=list)
    unlabeled_sources: List[str] = field(default_factory=list)
    problems: List[Problem] = field(default_factory=list)

    def counts(self) -> Dict[str, int]:
        return {"labeled": len(self.labeled), "unlabeled": len(self.unlabeled), "validation": len(self.validation)}


# ---------------------------------------------------------------------------------------------------------- names

def strip_image_suffix(filename: str) -> str:
    """File name without its image suffix (`.seg.nrrd`, `.nii.gz`, ...); folders (DICOM series) keep their name."""
    base = os.path.basename(os.path.normpath(filename))
    low = base.lower()
    for suffix in (SEG_SUFFIX,) + tuple(sorted(IMAGE_SUFFIXES, key=len, reverse=True)):
        if low.endswith(suffix):
            return base[: -len(suffix)]
    return base


_CHANNEL = re.compile(r"^(.*)_(\d{4})$")


def case_name(path: str) -> str:
    """Case identifier of an image or label path: the file name without suffix and nnU-Net `_0000` channel tag."""
    stem = strip_image_suffix(path)
    m = _CHANNEL.match(stem)
    return m.group(1) if m else stem


def normalize_modality(value: Any) -> Optional[str]:
    """Map a dataset's modality declaration to "CT", "MR" or the given word; MSD/nnU-Net dicts use channel 0."""
    if isinstance(value, dict):
        value = value.get("0", next(iter(value.values()), None)) if value else None
    if not isinstance(value, str) or not value.strip():
        return None
    v = value.strip().upper()
    if v == "CT" or v.startswith("CT"):
        return "CT"
    if v in ("MR", "MRI", "T1", "T1W", "T2", "T2W", "FLAIR", "ADC", "DWI", "PD", "T1GD", "T1CE") or v.startswith("MR"):
        return "MR"
    return value.strip()


def _name_key(name: str) -> str:
    """Segment/label name comparison key: case-insensitive, with spaces, `_` and `-` treated alike."""
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


# --------------------------------------------------------------------------------------------- labels in any form

def parse_labels(obj: Any, where: str) -> Tuple[Dict[int, str], List[Problem]]:
    """Parse `{"1": "liver"}` (MSD / our format) or `{"liver": 1}` (nnU-Net v2); drop background 0."""
    problems: List[Problem] = []
    if not isinstance(obj, dict) or not obj:
        return {}, [Problem(where, '"labels" must be a non-empty object like {"1": "liver"}')]
    labels: Dict[int, str] = {}
    inverted = all(isinstance(v, int) and not isinstance(v, bool) for v in obj.values()) and not all(
        _is_int_text(k) for k in obj)
    for k, v in obj.items():
        value, name = (v, k) if inverted else (k, v)
        if not _is_int_text(value) or int(value) < 0:
            problems.append(Problem(where, f'label value {value!r} is not a non-negative integer'))
            continue
        if not isinstance(name, str) or not name.strip():
            problems.append(Problem(where, f'label {value!r} needs a name (a non-empty string), got {name!r}'))
            continue
        if int(value) != 0:
            labels[int(value)] = name.strip()
    if not problems and not labels:
        problems.append(Problem(where, '"labels" declares no foreground label (only background 0)'))
    dup = {n for n in labels.values() if list(map(_name_key, labels.values())).count(_name_key(n)) > 1}
    if dup:
        problems.append(Problem(where, f"label names must be unique, repeated: {sorted(dup)}"))
    return dict(sorted(labels.items())), problems


def _is_int_text(x: Any) -> bool:
    if isinstance(x, bool):
        return False
    if isinstance(x, int):
        return True
    return isinstance(x, str) and re.fullmatch(r"\s*\d+\s*", x) is not None


# ------------------------------------------------------------------------------------------------ loading a spec

def load_dataset_spec(path: str) -> DatasetSpec:
    """Read a dataset JSON file or an MSD/nnU-Net folder (imagesTr/, labelsTr/, dataset.json) into a DatasetSpec."""
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(path):
        return _load_task_folder(path)
    if not os.path.exists(path):
        raise DatasetError([Problem(path, "dataset file not found")])
    obj = _read_json(path)
    return _spec_from_json(obj, path)


def _read_json(path: str) -> Any:
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError([Problem(path, f"not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}")]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError([Problem(path, f"cannot read the dataset file ({e})")]) from None


def _resolve(p: str, base: str) -> str:
    p = os.path.expanduser(p)
    return os.path.normpath(p if os.path.isabs(p) else os.path.join(base, p))


def _parse_cases(obj: Any, key: str, where: str, base: str) -> Tuple[List[Case], List[Problem]]:
    if not isinstance(obj, list):
        return [], [Problem(where, f'"{key}" must be a list of {{"image": ..., "label": ...}} objects')]
    cases, problems = [], []
    for i, entry in enumerate(obj):
        ok = isinstance(entry, dict) and all(isinstance(entry.get(k), str) and entry.get(k) for k in ("image", "label"))
        if not ok:
            problems.append(Problem(where, f'{key}[{i}] must be an object with string "image" and "label" paths, '
                                           f"got {json.dumps(entry)[:120]}"))
            continue
        origin = entry.get("origin")
        cases.append(Case(_resolve(entry["image"], base), _resolve(entry["label"], base),
                          _resolve(origin, base) if isinstance(origin, str) and origin else None))
    return cases, problems


def _spec_from_json(obj: Any, path: str) -> DatasetSpec:
    """Build a spec from our JSON format, collecting every structural problem before raising."""
    if not isinstance(obj, dict):
        raise DatasetError([Problem(path, "the dataset file must hold a JSON object with \"labels\" and \"labeled\"")])
    base = os.path.dirname(path)
    problems: List[Problem] = []
    if "labels" not in obj:
        problems.append(Problem(path, 'missing "labels" (e.g. {"1": "liver"})'))
        labels: Dict[int, str] = {}
    else:
        labels, p = parse_labels(obj["labels"], path)
        problems += p
    if "labeled" not in obj:
        problems.append(Problem(path, 'missing "labeled" (a list of {"image": ..., "label": ...})'))
        labeled: List[Case] = []
    else:
        labeled, p = _parse_cases(obj["labeled"], "labeled", path, base)
        problems += p
    validation, p = _parse_cases(obj.get("validation", []), "validation", path, base)
    problems += p
    sources = obj.get("unlabeled", [])
    if not isinstance(sources, list) or not all(isinstance(s, str) and s for s in sources):
        problems.append(Problem(path, '"unlabeled" must be a list of file, folder or glob strings'))
        sources = []
    modality = obj.get("modality")
    if modality is not None and not isinstance(modality, (str, dict)):
        problems.append(Problem(path, '"modality" must be a string such as "CT" or "MR"'))
    if problems:
        raise DatasetError(problems)
    spec = DatasetSpec(labels=labels, labeled=labeled, validation=validation, modality=normalize_modality(modality),
                       source=path, unlabeled_sources=[_resolve(s, base) for s in sources])
    _fill_unlabeled(spec)
    return spec


def _load_task_folder(folder: str) -> DatasetSpec:
    """An MSD / nnU-Net task folder: pair imagesTr and labelsTr by case name; imagesTs (if any) is unlabeled."""
    meta_path = os.path.join(folder, "dataset.json")
    problems = [Problem(os.path.join(folder, d), "missing folder") for d in ("imagesTr", "labelsTr")
                if not os.path.isdir(os.path.join(folder, d))]
    if not os.path.isfile(meta_path):
        problems.append(Problem(meta_path, "missing dataset.json (it declares the label names)"))
    if problems:
        if not os.path.isdir(os.path.join(folder, "imagesTr")) and not os.path.isfile(meta_path):
            problems = [Problem(folder, "not a dataset: expected a dataset JSON file or a folder with imagesTr/, "
                                        "labelsTr/ and dataset.json")]
        raise DatasetError(problems)
    meta = _read_json(meta_path)
    if not isinstance(meta, dict):
        raise DatasetError([Problem(meta_path, "must hold a JSON object")])
    labels, problems = parse_labels(meta.get("labels"), meta_path)
    if problems:
        raise DatasetError(problems)
    spec = DatasetSpec(labels=labels, labeled=[], source=folder,
                       modality=normalize_modality(meta.get("modality", meta.get("channel_names"))))
    images = _list_images(os.path.join(folder, "imagesTr"))
    label_files = {case_name(p): p for p in _list_images(os.path.join(folder, "labelsTr"), seg_too=True)}
    primary, extra_channels = _primary_channel(images)
    if extra_channels:
        spec.notes.append(f"{extra_channels} extra channel file(s) (_0001 ...) ignored: only channel 0 is used")
    unpaired = []
    for img in primary:
        lbl = label_files.pop(case_name(img), None)
        if lbl:
            spec.labeled.append(Case(img, lbl))
        else:
            unpaired.append(img)
    if unpaired:
        spec.unlabeled += unpaired
        spec.notes.append(f"{len(unpaired)} image(s) in imagesTr have no label in labelsTr; used as unlabeled")
    for name, lbl in sorted(label_files.items()):
        spec.problems.append(Problem(lbl, f"label has no image named {name} (or {name}_0000) in imagesTr"))
    ts = os.path.join(folder, "imagesTs")
    if os.path.isdir(ts):
        spec.unlabeled_sources.append(ts)
    _fill_unlabeled(spec)
    return spec


def _list_images(folder: str, seg_too: bool = False) -> List[str]:
    if not os.path.isdir(folder):
        return []
    out = []
    for f in sorted(os.listdir(folder)):
        low = f.lower()
        if f.startswith("."):  # macOS resource forks ("._x.nii.gz") and hidden files
            continue
        if low.endswith(IMAGE_SUFFIXES) and (seg_too or not low.endswith(SEG_SUFFIX)):
            out.append(os.path.join(folder, f))
    return out


def _primary_channel(paths: Sequence[str]) -> Tuple[List[str], int]:
    """Drop nnU-Net channel files other than _0000 when that case's _0000 file is present; return (kept, dropped)."""
    stems = {strip_image_suffix(p) for p in paths}
    kept = []
    for p in paths:
        m = _CHANNEL.match(strip_image_suffix(p))
        if m and m.group(2) != "0000" and f"{m.group(1)}_0000" in stems:
            continue
        kept.append(p)
    return kept, len(paths) - len(kept)


def expand_unlabeled(sources: Sequence[str]) -> Tuple[Dict[str, List[str]], List[Problem]]:
    """Expand each unlabeled source (file, folder or glob) on its own, so problems name their source."""
    groups: Dict[str, List[str]] = {}
    problems: List[Problem] = []
    for src in sources:
        paths, probs = expand_image_sources([src])
        paths, _ = _primary_channel(paths)
        groups[src] = [os.path.normpath(os.path.abspath(p)) for p in paths]
        problems += [Problem(src, msg.split(": ", 1)[-1]) for msg in probs]
    return groups, problems


def _fill_unlabeled(spec: DatasetSpec) -> None:
    """Expand the unlabeled sources into spec.unlabeled, without duplicates or images that are labeled cases.

    Files are compared by their real path, so a symlink and its target count as one image, and so does a labeled
    case exported from a scene with the file it was loaded from (its "origin": e.g. a suggested case, corrected).
    """
    groups, _ = expand_unlabeled(spec.unlabeled_sources)  # problems are reported by validation
    taken = {os.path.realpath(p) for c in spec.labeled + spec.validation for p in (c.image, c.origin) if p}
    candidates = [os.path.normpath(p) for p in list(spec.unlabeled) + [q for ps in groups.values() for q in ps]]
    unique: Dict[str, str] = {}
    for p in candidates:
        unique.setdefault(os.path.realpath(p), p)
    spec.unlabeled = [p for real, p in unique.items() if real not in taken]
    if len(spec.unlabeled) < len(unique):
        spec.notes.append(f"{len(unique) - len(spec.unlabeled)} unlabeled image(s) are also labeled or validation "
                          "cases; used only as those")


# ----------------------------------------------------------------------------------------------- validation split

def split_validation(spec: DatasetSpec, seed: int, max_fraction: float = 0.2,
                     max_cases: Optional[int] = None) -> Tuple[DatasetSpec, str]:
    """Hold out validation cases when the dataset names none; return the new spec and a sentence saying what was done.

    With a validation list given, nothing changes. Otherwise round(max_fraction x labeled) cases (at least 1) are held
    out, chosen reproducibly by `seed`, provided at least 3 labeled cases remain for training; below 4 labeled cases
    none is held out (validation Dice is then not computed). `max_cases` caps the held-out count (validation time).
    """
    from dataclasses import replace

    n = len(spec.labeled)
    if spec.validation:
        return spec, f"validation: {len(spec.validation)} case(s) from the dataset file"
    if n < MIN_LABELED_FOR_HOLDOUT:
        return spec, (f"validation: none held out (only {n} labeled case(s); at least {MIN_LABELED_FOR_HOLDOUT} "
                      "are needed to hold one out), so no validation Dice is computed")
    k = max(1, int(round(max_fraction * n)))
    k = min(k, n - MIN_TRAINING_AFTER_HOLDOUT, max_cases if max_cases else n)
    order = np.random.default_rng(seed).permutation(n)
    held = sorted(int(i) for i in order[:k])
    validation = [spec.labeled[i] for i in held]
    labeled = [c for i, c in enumerate(spec.labeled) if i not in set(held)]
    note = (f"validation: {k} of {n} labeled case(s) held out (seed {seed}): "
            + ", ".join(c.name for c in validation[:10]) + (" ..." if k > 10 else ""))
    return replace(spec, labeled=labeled, validation=validation, notes=spec.notes + [note]), note


# ------------------------------------------------------------------------------------------------ image headers

@dataclass
class ImageInfo:
    """What an image header says: size/spacing/origin (x, y, z, SimpleITK order), direction (9 values), voxel type."""

    size: Tuple[int, ...]
    spacing: Tuple[float, ...]
    origin: Tuple[float, ...]
    direction: Tuple[float, ...]
    dimension: int
    components: int
    pixel_type: str
    pixel_id: int = -1  # SimpleITK pixel ID value

    def not_3d_reason(self) -> Optional[str]:
        """Why this cannot be used as a 3D scalar volume, or None."""
        if self.dimension == 2 or (self.dimension == 3 and 1 in self.size):
            return f"not a 3D image: 2D (a single slice), size {self.size}"
        if self.dimension == 4 and self.size[3] > 1:
            return f"not a 3D image: 4D with {self.size[3]} volumes, size {self.size}; use one volume per file"
        if self.dimension not in (3, 4):
            return f"not a 3D image (dimension {self.dimension})"
        if self.components != 1:
            return f"has {self.components} components per voxel (vector/RGB); expected a single-channel image"
        return None

    def as_3d(self) -> "ImageInfo":
        """The 3D part of a 4D header with a single volume (what io.read_image returns for such files)."""
        if self.dimension != 4:
            return self
        d = np.array(self.direction).reshape(4, 4)[:3, :3].ravel()
        return ImageInfo(self.size[:3], self.spacing[:3], self.origin[:3], tuple(d), 3, self.components,
                         self.pixel_type, self.pixel_id)

    def canonical_spacing(self) -> Tuple[float, float, float]:
        """Spacing (x, y, z) after reorientation to the canonical (LPS-aligned) axes, as preprocessing sees it."""
        return canonical_spacing(self.spacing[:3], self.direction if self.dimension == 3 else self.as_3d().direction)


def image_info(img: sitk.Image) -> ImageInfo:
    return ImageInfo(tuple(img.GetSize()), tuple(img.GetSpacing()), tuple(img.GetOrigin()), tuple(img.GetDirection()),
                     img.GetDimension(), img.GetNumberOfComponentsPerPixel(), img.GetPixelIDTypeAsString(),
                     img.GetPixelID())


def read_image_info(path: str) -> ImageInfo:
    """Read only the header of an image file (cheap); DICOM folders are read whole. Raises ImageReadError."""
    if not os.path.exists(path):
        raise ImageReadError(f"{path}: file not found")
    if os.path.isdir(path):
        from micd.data.io import read_image
        return image_info(read_image(path))
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise ImageReadError(f"{path}: unreadable ({str(e).strip().splitlines()[-1][:200]})") from None
    return ImageInfo(tuple(reader.GetSize()), tuple(reader.GetSpacing()), tuple(reader.GetOrigin()),
                     tuple(reader.GetDirection()), reader.GetDimension(), reader.GetNumberOfComponents(),
                     sitk.GetPixelIDValueAsString(reader.GetPixelID()), reader.GetPixelID())


def nifti_truncation(path: str, info: ImageInfo, decompress: bool = True) -> Optional[str]:
    """Why a NIfTI file is truncated, or None. ITK fills the missing voxels of a cut-off NIfTI with zeros silently.

    `.nii`: the file must hold the header plus every voxel. `.nii.gz` (only with `decompress`, which costs a full
    decompression): the gzip stream must be complete and as long.
    """
    low = path.lower()
    if not low.endswith((".nii", ".nii.gz")) or os.path.isdir(path):
        return None
    if info.pixel_id < 0:
        return None
    itemsize = pixel_bytes(info.pixel_id)
    needed = 348 + int(np.prod(info.size)) * info.components * itemsize
    if low.endswith(".nii"):
        have = os.path.getsize(path)
    elif not decompress:
        return None
    else:
        import gzip
        import zlib
        have = 0
        try:
            with gzip.open(path, "rb") as f:
                while True:
                    chunk = f.read(1 << 22)
                    if not chunk:
                        break
                    have += len(chunk)
        except (EOFError, OSError, zlib.error) as e:
            return f"unreadable: truncated or corrupt compressed data ({e})"
    if have < needed:
        return f"unreadable: truncated (holds {have} bytes, the header declares at least {needed})"
    return None


def canonical_spacing(spacing: Sequence[float], direction: Sequence[float]) -> Tuple[float, float, float]:
    """Permute a spacing to the world axis each image axis runs along most (what DICOMOrient's permutation does)."""
    d = np.abs(np.array(direction, float).reshape(3, 3))  # column i = direction of image axis i
    out = [0.0, 0.0, 0.0]
    free = [0, 1, 2]
    for i in np.argsort(-d.max(axis=0)):  # most clearly aligned axes choose first
        j = max(free, key=lambda w: d[w, i])
        free.remove(j)
        out[j] = float(spacing[i])
    return out[0], out[1], out[2]


# ------------------------------------------------------------------------------------------ labels of one case

class LabelMappingError(ImageReadError):
    """A `.seg.nrrd`'s segment names do not all match the dataset's declared label names."""


def read_case_label(path: str, labels: Dict[int, str]) -> Tuple[sitk.Image, List[str]]:
    """Read a label map with values in the dataset's numbering, and the names of segments that match no label.

    Plain label files are returned as they are. For `.seg.nrrd` files each segment is matched to a declared label by
    name (case-insensitive, spaces/_/- alike) and its voxels take that label's value; unmatched segments become
    background and their names are returned so validation can report them.
    """
    lm = read_label(path)
    if not lm.names:
        return lm.image, []
    by_name = {_name_key(n): v for v, n in labels.items()}
    lut = np.zeros(max(lm.names) + 1, np.uint16)
    undeclared = []
    for file_value, name in sorted(lm.names.items()):
        target = by_name.get(_name_key(name))
        if target is None:
            undeclared.append(name)
        else:
            lut[file_value] = target
    arr = sitk.GetArrayViewFromImage(lm.image)
    out = sitk.GetImageFromArray(lut[np.clip(arr, 0, len(lut) - 1).astype(np.int64)])
    out.CopyInformation(lm.image)
    return out, undeclared


def load_label_for_case(path: str, labels: Dict[int, str]) -> sitk.Image:
    """`read_case_label` for training: a segment with an undeclared name is an error (validation reports it first)."""
    img, undeclared = read_case_label(path, labels)
    if undeclared:
        raise LabelMappingError(f"{path}: segment(s) {undeclared} match no declared label {sorted(labels.values())}")
    return img
