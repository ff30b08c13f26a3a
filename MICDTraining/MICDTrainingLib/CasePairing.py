"""Finding labeled cases: (volume, segmentation) pairs in the scene, image/label file pairs in a folder, and how
many readable images an unlabeled folder holds."""

import gzip
import os
import re

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
SEG_SUFFIX = ".seg.nrrd"
LABEL_WORDS = ("segmentation", "seg", "labels", "label", "labelmap", "mask", "gt")


def name_key(name):
    """Comparison key for case names: lower case, separators dropped, trailing label words removed."""
    text = re.sub(r"[\s_\-.]+", " ", str(name).lower()).strip()
    words = text.split()
    while len(words) > 1 and words[-1] in LABEL_WORDS:
        words.pop()
    return "".join(words)


def strip_image_suffix(filename):
    low = filename.lower()
    for suffix in (SEG_SUFFIX,) + tuple(sorted(IMAGE_SUFFIXES, key=len, reverse=True)):
        if low.endswith(suffix):
            return filename[: -len(suffix)]
    return filename


# --- scene -------------------------------------------------------------------------------------------------------
def _nodes(scene, class_name):
    return [scene.GetNthNodeByClass(i, class_name) for i in range(scene.GetNumberOfNodesByClass(class_name))]


def scalar_volumes(scene):
    """Scalar (not labelmap) volume nodes."""
    return [n for n in _nodes(scene, "vtkMRMLScalarVolumeNode") if not n.IsA("vtkMRMLLabelMapVolumeNode")]


def segmentations(scene):
    return _nodes(scene, "vtkMRMLSegmentationNode")


def reference_volume(segmentation_node):
    """The volume a segmentation was drawn on, when Slicer recorded it."""
    node = segmentation_node.GetNodeReference(segmentation_node.GetReferenceImageGeometryReferenceRole())
    return node if node is not None and node.IsA("vtkMRMLScalarVolumeNode") else None


def _same_folder_volume(scene, segmentation_node, volumes):
    sh = scene.GetSubjectHierarchyNode()
    seg_item = sh.GetItemByDataNode(segmentation_node)
    if not seg_item:
        return None
    parent = sh.GetItemParent(seg_item)
    if parent == sh.GetSceneItemID():
        return None
    siblings = [v for v in volumes if sh.GetItemParent(sh.GetItemByDataNode(v) or 0) == parent]
    return siblings[0] if len(siblings) == 1 else None


def pair_scene_cases(scene, exclude=()):
    """Pair every segmentation with its volume: the recorded reference volume, else a volume with the same name
    (ignoring words like 'segmentation', 'label'), else the only volume in the same subject-hierarchy folder/study.

    Returns (pairs, unpaired segmentation names). Segmentations in `exclude` are skipped."""
    volumes = scalar_volumes(scene)
    by_key = {}
    for v in volumes:
        by_key.setdefault(name_key(v.GetName()), []).append(v)
    pairs, unpaired = [], []
    for seg in segmentations(scene):
        if seg in exclude or seg.GetAttribute("MICD.Result"):
            continue
        volume = reference_volume(seg)
        if volume is None and len(by_key.get(name_key(seg.GetName()), [])) == 1:
            volume = by_key[name_key(seg.GetName())][0]
        if volume is None:
            volume = _same_folder_volume(scene, seg, volumes)
        if volume is None:
            unpaired.append(seg.GetName())
        else:
            pairs.append((volume, seg))
    return pairs, unpaired


# --- files -------------------------------------------------------------------------------------------------------
def _images_in(folder):
    if not os.path.isdir(folder):
        return []
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith("."))


def pair_folder_cases(folder):
    """Image/label file pairs in a folder: imagesTr+labelsTr or images+labels sub-folders with the same file names,
    or one folder with 'X.nii.gz' beside 'X_seg.nii.gz', 'X_label.nrrd', 'X.seg.nrrd', ... Returns (pairs, unpaired)."""
    for images_dir, labels_dir in (("imagesTr", "labelsTr"), ("images", "labels")):
        ip, lp = os.path.join(folder, images_dir), os.path.join(folder, labels_dir)
        if os.path.isdir(ip) and os.path.isdir(lp):
            labels = {name_key(strip_image_suffix(f)): f for f in _images_in(lp)}
            pairs, unpaired = [], []
            for f in _images_in(ip):
                key = name_key(re.sub(r"_0000$", "", strip_image_suffix(f)))  # nnU-Net channel suffix
                if key in labels:
                    pairs.append((os.path.join(ip, f), os.path.join(lp, labels[key])))
                else:
                    unpaired.append(f)
            return pairs, unpaired
    files = _images_in(folder)
    images = [f for f in files if not f.lower().endswith(SEG_SUFFIX) and name_key(strip_image_suffix(f)) ==
              re.sub(r"[\s_\-.]+", "", strip_image_suffix(f).lower())]
    labels = {name_key(strip_image_suffix(f)): f for f in files if f not in images}
    pairs, unpaired = [], []
    for f in images:
        key = name_key(strip_image_suffix(f))
        if key in labels:
            pairs.append((os.path.join(folder, f), os.path.join(folder, labels[key])))
        else:
            unpaired.append(f)
    return pairs, unpaired


def no_pairs_reason(folder, unpaired):
    """Why a folder gave no image/label pairs, and how the files should be laid out, for the user."""
    if not os.path.isdir(folder):
        return f"{folder} is not a folder."
    layout = ("Put the labels in labelsTr/ beside imagesTr/ (or labels/ beside images/) with the same file names, "
              "or name each label after its image: X.nii.gz with X_seg.nii.gz, X_label.nrrd or X.seg.nrrd.")
    if not unpaired:
        return (f"{folder} holds no image files (NIfTI .nii/.nii.gz, NRRD .nrrd/.nhdr, MetaImage .mha/.mhd). "
                + layout)
    shown = ", ".join(unpaired[:5]) + (", ..." if len(unpaired) > 5 else "")
    return f"{folder}: {len(unpaired)} image(s) but no label file for any of them ({shown}). " + layout


def _looks_readable(path):
    """Cheap check of a file's signature (NIfTI, NRRD, MetaImage); no full read."""
    low = path.lower()
    try:
        if low.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                head = f.read(352)
        else:
            with open(path, "rb") as f:
                head = f.read(352)
    except (OSError, EOFError):
        return False
    if low.endswith((".nii", ".nii.gz")):
        return len(head) >= 348 and (head[344:348] in (b"n+1\0", b"ni1\0") or head[4:8] == b"n+2\0")
    if low.endswith((".nrrd", ".nhdr")):
        return head.startswith(b"NRRD")
    return b"ObjectType" in head or b"NDims" in head


def _is_dicom_folder(folder):
    try:
        names = os.listdir(folder)
    except OSError:
        return False
    for name in names[:50]:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            try:
                with open(path, "rb") as f:
                    if f.read(132)[128:132] == b"DICM":
                        return True
            except OSError:
                continue
    return False


class FolderSummary:
    """How many images in an unlabeled folder look readable, and which do not."""

    def __init__(self, folder, readable, unreadable):
        self.folder = folder
        self.readable = readable
        self.unreadable = unreadable

    @property
    def count(self):
        return len(self.readable)

    def text(self):
        if not os.path.isdir(self.folder):
            return f"{self.folder}: not a folder"
        text = f"{self.count} readable image(s)"
        if self.unreadable:
            text += f", {len(self.unreadable)} unreadable ({', '.join(os.path.basename(p) for p in self.unreadable[:3])}"
            text += ", ...)" if len(self.unreadable) > 3 else ")"
        return text


def summarize_unlabeled_folder(folder):
    """Count the images the backend will read from a folder (NIfTI/NRRD/MHA files and DICOM series sub-folders)."""
    readable, unreadable = [], []
    if os.path.isdir(folder):
        if _is_dicom_folder(folder):
            return FolderSummary(folder, [folder], [])
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if name.startswith("."):  # macOS "._x.nii.gz" forks and hidden files: the backend skips them too
                continue
            if os.path.isdir(path):
                if _is_dicom_folder(path):
                    readable.append(path)
            elif name.lower().endswith(IMAGE_SUFFIXES) and not name.lower().endswith(SEG_SUFFIX):
                (readable if _looks_readable(path) else unreadable).append(path)
    return FolderSummary(folder, readable, unreadable)


def _seg_nrrd_names(path):
    """{label value: name} from a .seg.nrrd header (Segment<N>_Name / Segment<N>_LabelValue keys)."""
    names, values = {}, {}
    with open(path, "rb") as f:
        for raw in f:
            line = raw.decode("latin-1").rstrip("\n")
            if not line.strip():
                break
            match = re.match(r"Segment(\d+)_(Name|LabelValue):=(.*)", line)
            if match:
                (names if match.group(2) == "Name" else values)[match.group(1)] = match.group(3)
    return {int(values.get(i, int(i) + 1)): n for i, n in names.items()}


class LabelNamesError(ValueError):
    """A folder's dataset.json exists but its label names cannot be read; the message says which file and why."""


def folder_labels(folder, pairs=()):
    """{value: name} for the label files of a folder: its dataset.json "labels" (MSD style, background skipped),
    else the segment names of its first .seg.nrrd label file; {} when unknown.

    A dataset.json that is there but unreadable raises LabelNamesError: silently falling back to numbered names
    would train a model whose segments are not called what the user wrote."""
    import json

    meta = os.path.join(folder, "dataset.json")
    if os.path.isfile(meta):
        try:
            with open(meta, encoding="utf-8") as f:
                labels = json.load(f).get("labels") or {}
            found = {}
            for key, val in labels.items():  # MSD: {"1": "name"}; nnU-Net v2: {"name": 1}
                if str(key).isdigit():
                    found[int(key)] = str(val)
                elif str(val).isdigit():
                    found[int(val)] = str(key)
            return {v: n for v, n in found.items() if v != 0}
        except (OSError, ValueError, AttributeError) as e:
            reason = (e.strerror or str(e)) if isinstance(e, OSError) else \
                "its \"labels\" must be an object such as {\"0\": \"background\", \"1\": \"liver\"}" \
                if isinstance(e, AttributeError) else f"not valid JSON ({e})"
            raise LabelNamesError(f"{meta}: the label names cannot be read: {reason}. Fix the file, or remove it to "
                                  "take the names from .seg.nrrd labels or number them.") from None
    for _image, label in pairs:
        if label.lower().endswith(SEG_SUFFIX):
            return _seg_nrrd_names(label)
    return {}
