"""Scene -> training files. Checks labeled (volume, segmentation) pairs, gives each segment name one label value
across all cases, writes image + labelmap files in the volume's geometry, and the dataset file `micd train` reads."""

import json
import os
import re

import numpy as np
import slicer
import vtk

from MICDCommon import sceneio, volumefile


def segment_key(name):
    """How segment names are compared across cases (as the backend does): case-insensitive, ' ', '_', '-' alike."""
    return re.sub(r"[\s_\-]+", " ", str(name).strip().lower())


ROLES = ("volume", "segmentation")


class LabeledCase:
    """One labeled case from the scene. A node deleted from the scene is forgotten (`forget`: its memory can go
    back) and only its name is kept (`deleted`), so the case can still be named in the table and in messages."""

    def __init__(self, volume, segmentation):
        self.volume = volume
        self.segmentation = segmentation
        self.deleted = {}  # role ("volume"/"segmentation") -> the name of the node deleted from the scene

    def node_name(self, role):
        node = getattr(self, role)
        if node is not None:
            return node.GetName()
        return self.deleted.get(role) or f"(no {role})"

    @property
    def title(self):
        return f"{self.node_name('volume')} / {self.node_name('segmentation')}"

    def uses(self, node):
        return node is not None and (self.volume is node or self.segmentation is node)

    def forget(self, node):
        """`node` is being deleted from the scene: drop it, keep its name. Returns the roles it had here."""
        roles = [role for role in ROLES if getattr(self, role) is node]
        for role in roles:
            self.deleted[role] = node.GetName()
            setattr(self, role, None)
        return roles

    def missing(self):
        """The roles whose node is no longer in the scene: deleted (seen or not by a panel) or the scene closed."""
        return [role for role in ROLES if role in self.deleted or (getattr(self, role) is not None and
                                                                  getattr(self, role).GetScene() is None)]

    def missing_problem(self):
        """A sentence naming the case and the node(s) no longer in the scene, or None."""
        missing = self.missing()
        if not missing:
            return None
        nodes = " and ".join(f"the {role} '{self.node_name(role)}'" for role in missing)
        return (f"{self.title}: {nodes} {'were' if len(missing) > 1 else 'was'} deleted from the scene; remove this "
                "case, or load the data again and add the case anew.")

    def segments(self):
        """[(segment id, name)] in the segmentation's order."""
        seg = self.segmentation.GetSegmentation()
        ids = [seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())]
        return [(i, seg.GetSegment(i).GetName()) for i in ids]


class FileCase:
    """One labeled case already on disk (image file + label file); passed through to the dataset file."""

    def __init__(self, image, label):
        self.image = os.path.abspath(image)
        self.label = os.path.abspath(label)

    @property
    def title(self):
        return os.path.basename(self.image)


class DatasetReport:
    """Result of the checks: label values by name, blocking errors and warnings (each a sentence)."""

    def __init__(self):
        self.labels = {}  # value -> name
        self.errors = []
        self.warnings = []
        self.colors = {}  # value -> (r, g, b) from the first case that has the segment

    @property
    def ok(self):
        return not self.errors

    def text(self):
        lines = [f"Error: {e}" for e in self.errors] + [f"Warning: {w}" for w in self.warnings]
        return "\n".join(lines) if lines else "All checks passed."


def as_cases(labeled):
    """Accept LabeledCase/FileCase objects or (volume node, segmentation node) / (image path, label path) tuples."""
    cases = []
    for item in labeled:
        if isinstance(item, (LabeledCase, FileCase)):
            cases.append(item)
        elif isinstance(item[0], str):
            cases.append(FileCase(*item))
        else:
            cases.append(LabeledCase(*item))
    return cases


def _segmentation_geometry_problem(case):
    """A sentence when segmentation and volume do not share a space, or None. Reference-grid differences that only
    need resampling (segment inside the volume) are not problems."""
    vol, seg = case.volume, case.segmentation
    if vol.GetParentTransformNode() is not seg.GetParentTransformNode():
        return (f"{case.title}: the volume and the segmentation are under different transforms; harden the "
                "transforms (Data module) or move both under the same one.")
    seg_bounds = [0.0] * 6
    seg.GetRASBounds(seg_bounds)
    if seg_bounds[0] > seg_bounds[1]:  # empty segmentation: nothing to compare
        return None
    vol_bounds = sceneio.ras_bounds(vol)
    margin = max(vol.GetSpacing())
    if not sceneio.bounds_overlap(seg_bounds, vol_bounds):
        return (f"{case.title}: the segmentation does not overlap the volume at all (was it drawn on another "
                "image?). Pair it with the right volume.")
    if not sceneio.bounds_inside(seg_bounds, vol_bounds, margin):
        return (f"{case.title}: segments extend outside the volume and would be cut off; check that this "
                "segmentation belongs to this volume.")
    return None


def _reference_grid_differs(case):
    seg = case.segmentation.GetSegmentation()
    name = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    text = seg.GetConversionParameter(name)
    if not text:
        return False
    image = slicer.vtkOrientedImageData()
    slicer.vtkSegmentationConverter.DeserializeImageGeometry(text, image)
    m = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(m)
    grid = sceneio.matrix_array(m)
    dims = image.GetDimensions()
    return dims != case.volume.GetImageData().GetDimensions() or not np.allclose(grid, sceneio.ijk_to_ras(case.volume),
                                                                                  atol=1e-3)


def check_cases(labeled, require_all_segments=True, file_labels=None):
    """Check labeled cases and assign label values. Same segment name (see `segment_key`) -> same value, in order
    of first appearance. Errors: no case, missing volume/segmentation (or one deleted from the scene), empty
    segmentation, duplicate names in one case, names spelled differently across cases, a segment missing from some
    cases (it would be learned as background there), geometry that does not match. Warnings: empty segments,
    resampling.

    `file_labels` {value: name} are the label values of file cases (from their folder's dataset.json); scene
    segments with those names get the same values."""
    report = DatasetReport()
    report.labels = {int(v): str(n) for v, n in sorted((file_labels or {}).items()) if int(v) != 0}
    cases = as_cases(labeled)
    if not cases:
        report.errors.append("Add at least one labeled case (a volume with its segmentation).")
        return report
    spellings = {}  # key -> {spelling: [case titles]}
    present = {}  # key -> set of case indices
    scene_cases = [c for c in cases if isinstance(c, LabeledCase)]
    for index, case in enumerate(cases):
        if isinstance(case, FileCase):
            for path in (case.image, case.label):
                if not os.path.isfile(path):
                    report.errors.append(f"{case.title}: file not found: {path}")
            continue
        problem = case.missing_problem()
        if problem:
            report.errors.append(problem)
            continue
        if case.volume is None or case.volume.GetImageData() is None:
            report.errors.append(f"{case.title}: the volume has no image data.")
            continue
        if case.volume.GetImageData().GetNumberOfScalarComponents() != 1:
            report.errors.append(f"{case.title}: the volume has several components per voxel (color or vector "
                                 "image); use a single-channel volume.")
        if case.segmentation is None or case.segmentation.GetSegmentation().GetNumberOfSegments() == 0:
            report.errors.append(f"{case.title}: the segmentation has no segments.")
            continue
        names_here = {}
        for segment_id, name in case.segments():
            key = segment_key(name)
            if key in names_here:
                report.errors.append(f"{case.title}: two segments are named '{name}'; rename or merge one of them.")
            names_here[key] = name
            spellings.setdefault(key, {}).setdefault(name, []).append(case.title)
            present.setdefault(key, set()).add(index)
            value = next((v for v, n in report.labels.items() if segment_key(n) == key), None)
            if value is None:
                value = max(report.labels, default=0) + 1
                report.labels[value] = name
            if value not in report.colors:  # also for values given by label files or a model
                color = case.segmentation.GetSegmentation().GetSegment(segment_id).GetColor()
                report.colors[value] = tuple(float(c) for c in color)
            if _segment_is_empty(case.segmentation, segment_id):
                report.warnings.append(f"{case.title}: segment '{name}' is empty.")
        problem = _segmentation_geometry_problem(case)
        if problem:
            report.errors.append(problem)
        elif _reference_grid_differs(case):
            report.warnings.append(f"{case.title}: the segmentation's grid differs from the volume's; it will be "
                                   "resampled onto the volume's voxels.")
    if any(isinstance(c, FileCase) for c in cases) and not report.labels:
        report.errors.append("The label names of the image/label files are unknown: put a dataset.json with "
                             '"labels" (e.g. {"1": "liver"}) in their folder, or use .seg.nrrd label files.')
    for key, variants in spellings.items():
        if len(variants) > 1:
            listing = "; ".join(f"'{n}' in {', '.join(titles)}" for n, titles in variants.items())
            report.errors.append(f"The same structure is named differently: {listing}. Use one spelling.")
    if require_all_segments and len(scene_cases) > 1:
        for value, name in report.labels.items():
            missing = [c.title for i, c in enumerate(cases) if isinstance(c, LabeledCase)
                       and i not in present.get(segment_key(name), set()) and c.segmentation is not None
                       and not c.missing()]
            if missing:
                report.errors.append(f"Segment '{name}' is missing in {', '.join(missing)}; there it would be learned "
                                     "as background. Add it (it may be empty if the structure is absent) or "
                                     "remove it from the other cases.")
    return report


def _segment_is_empty(segmentation_node, segment_id):
    try:
        array = slicer.util.arrayFromSegmentInternalBinaryLabelmap(segmentation_node, segment_id)
    except Exception:  # noqa: BLE001 - no binary labelmap representation yet
        return False
    if array is None:
        return True
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    return not np.any(array == segment.GetLabelValue())


def _label_layers_on_volume_grid(case, segments, lookup):
    """The segments as (k, j, i) slices of the volume's grid with their layers, copied from the segments' internal
    binary labelmaps when these lie on the volume's own voxel grid (same directions, spacing and voxel positions; a
    sub-extent is fine), as a segmentation made from or drawn on that volume has them: [(slices, layer, value in the
    layer, label value)]. None when any does not (then the Segmentations logic resamples). The layers are copied:
    a segment edited while the files are written stays as it was when Train was pressed."""
    volume_matrix = sceneio.ijk_to_ras(case.volume)
    if case.segmentation.GetParentTransformNode() is not None or case.volume.GetParentTransformNode() is not None:
        return None
    dims = case.volume.GetImageData().GetDimensions()
    layers, copies = [], []  # copies: (internal labelmap, its copy): segments often share one labelmap
    for index, (segment_id, _name) in enumerate(segments, 1):
        image = case.segmentation.GetBinaryLabelmapInternalRepresentation(segment_id)
        if image is None:
            return None
        matrix = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(matrix)
        if not np.allclose(sceneio.matrix_array(matrix), volume_matrix, rtol=0, atol=1e-4):
            return None
        x0, x1, y0, y1, z0, z1 = image.GetExtent()
        if x1 < x0 or y1 < y0 or z1 < z0:
            continue  # an empty segment
        if x0 < 0 or y0 < 0 or z0 < 0 or x1 >= dims[0] or y1 >= dims[1] or z1 >= dims[2]:
            return None  # reaches outside the volume: the logic crops it
        value = case.segmentation.GetSegmentation().GetSegment(segment_id).GetLabelValue()
        layer = next((copy for shared, copy in copies if shared is image), None)
        if layer is None:
            layer = np.array(slicer.util.arrayFromSegmentInternalBinaryLabelmap(case.segmentation, segment_id))
            copies.append((image, layer))
        layers.append(((slice(z0, z1 + 1), slice(y0, y1 + 1), slice(x0, x1 + 1)), layer, value, lookup[index]))
    return layers


def _labels_from_layers(shape, dtype, layers):
    """The label array (k, j, i) of `_label_layers_on_volume_grid`'s layers: numpy only, any thread."""
    out = np.zeros(shape, dtype=dtype)
    for slices, layer, value, label in layers:
        np.copyto(out[slices], label, where=layer == value)  # a later segment wins, as the logic's export does
    return out


def _labels_resampled(case, ids, lookup):
    """The label array (k, j, i) from the Segmentations logic's export onto the volume's grid (main thread only:
    it resamples through MRML; about 1.5 s for 512x512x200)."""
    scene = case.volume.GetScene()
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "MICD export labels")
    try:
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                case.segmentation, ids, node, case.volume):
            raise IOError(f"could not export the segments of {case.segmentation.GetName()}")
        return lookup[slicer.util.arrayFromVolume(node)]  # 1..n: the position of each segment in `ids`
    finally:
        scene.RemoveNode(node)


class SceneCaseFiles:
    """One scene case as its two files will be written: taken on the main thread (`take`: no copy of the volume,
    the segments' layers copied), written from any thread (`write`: numpy and the standard library)."""

    def __init__(self, stem, title, origin, image, label_shape, label_dtype, layers=None, labels=None):
        self.stem, self.title, self.origin = stem, title, origin
        self.image = image  # volumefile.VolumeSnapshot
        self.label_shape, self.label_dtype = label_shape, label_dtype
        self.layers = layers  # segments read on the volume's grid, or
        self.labels = labels  # the label array the logic's export resampled

    @classmethod
    def take(cls, case, labels, stem):
        """Each segment with the value `labels` {value: name} gives its name; a later segment wins where two
        overlap. Segments not on the volume's grid are resampled here, in one call for all of them (per segment it
        took 0.76 s each on a 512x512x200 grid), then renumbered through a lookup table."""
        segments = case.segments()
        lookup = np.zeros(len(segments) + 1, dtype=np.uint8 if max(labels, default=0) < 256 else np.uint16)
        value_of = {segment_key(n): v for v, n in labels.items()}
        ids = vtk.vtkStringArray()
        for index, (segment_id, name) in enumerate(segments, 1):
            ids.InsertNextValue(segment_id)
            lookup[index] = value_of[segment_key(name)]
        image = volumefile.VolumeSnapshot.take(case.volume)
        layers = _label_layers_on_volume_grid(case, segments, lookup)
        resampled = _labels_resampled(case, ids, lookup) if layers is None else None
        return cls(stem, case.title, _loaded_from(case.volume), image, image.voxels.shape, lookup.dtype,
                   layers=layers, labels=resampled)

    def label_array(self):
        if self.labels is not None:
            return self.labels
        return _labels_from_layers(self.label_shape, self.label_dtype, self.layers)

    def write(self, images_dir, labels_dir):
        """Both files, uncompressed: gzip would take 2.4 s for a 512x512x200 CT, and the files are the run's own
        copy, read once into the preprocessing cache. Returns (image path, label path)."""
        image_path = volumefile.write_snapshot(self.image, os.path.join(images_dir, self.stem + ".nrrd"))
        label_path = volumefile.write_nrrd(self.label_array(), self.image.ijk_to_ras,
                                           os.path.join(labels_dir, self.stem + ".nrrd"))
        return image_path, label_path


class ExportedDataset:
    """Where the export went: the dataset file and the case files."""

    def __init__(self, dataset_file, labels, cases):
        self.dataset_file = dataset_file
        self.labels = labels
        self.cases = cases  # [{"image": path, "label": path, "source": title}]


def _loaded_from(volume):
    """The file a volume node was loaded from (its storage node's), or None."""
    storage = volume.GetStorageNode()
    name = storage.GetFileName() if storage is not None else None
    return os.path.abspath(name) if name and os.path.isfile(name) else None


def image_files(cases):
    """The image files of labeled cases: a file case's image, a scene case's volume by the file it was loaded from."""
    files = {case.image for case in cases if isinstance(case, FileCase)}
    loaded = {_loaded_from(case.volume) for case in cases if isinstance(case, LabeledCase) and case.volume is not None}
    return files | (loaded - {None})


class ExportCancelled(Exception):
    """The export was cancelled before every file was written."""


class PendingExport:
    """What Train writes, taken from the scene on the main thread (`take_export`: the volumes shared, the segments'
    labelmaps copied, segments off the volume's grid resampled) and written from any thread (`write`), so that
    Slicer stays responsive while a large CT is written."""

    def __init__(self, out_dir, entries, labels, colors, unlabeled):
        self.out_dir = out_dir
        self.entries = entries  # per case, in order: a SceneCaseFiles, or the entry of a file case
        self.labels, self.colors, self.unlabeled = labels, colors, unlabeled

    @property
    def count(self):
        return len(self.entries)

    def write(self, progress=None, cancelled=None):
        """Write images/, labels/ and dataset.json under `out_dir`; returns ExportedDataset. `progress(k, n)`
        after each case; `cancelled()` is asked before each case and raises ExportCancelled when it says so."""
        images_dir, labels_dir = os.path.join(self.out_dir, "images"), os.path.join(self.out_dir, "labels")
        os.makedirs(images_dir, exist_ok=True)
        os.makedirs(labels_dir, exist_ok=True)
        written = []
        for index, entry in enumerate(self.entries):
            if cancelled is not None and cancelled():
                raise ExportCancelled(f"cancelled after {index} of {self.count} cases")
            if isinstance(entry, SceneCaseFiles):
                image_path, label_path = entry.write(images_dir, labels_dir)
                entry = {"image": os.path.relpath(image_path, self.out_dir),
                         "label": os.path.relpath(label_path, self.out_dir), "source": entry.title,
                         **({"origin": entry.origin} if entry.origin else {})}
            written.append(entry)
            if progress is not None:
                progress(index + 1, self.count)
        dataset = {
            "labels": {str(v): n for v, n in sorted(self.labels.items())},
            "colors": {str(v): list(c) for v, c in sorted(self.colors.items())},
            # "origin": the file a scene volume was loaded from, so the backend leaves that file out of the unlabeled
            # images (a suggested case, once corrected, is labeled and no longer unlabeled)
            "labeled": [{k: e[k] for k in ("image", "label", "origin") if k in e} for e in written],
            "unlabeled": [os.path.abspath(f) for f in self.unlabeled],
            "cases": written,  # provenance for people: which scene nodes each file came from
        }
        dataset_file = os.path.join(self.out_dir, "dataset.json")
        with open(dataset_file, "w", encoding="utf-8") as f:
            json.dump(dataset, f, indent=2)
        return ExportedDataset(dataset_file, dict(self.labels), written)


def take_export(labeled, unlabeled_folders, out_dir, report=None, colors=None):
    """The main-thread half of the export: runs the checks (or uses `report`) and raises ValueError listing the
    errors when there are any; makes no folder. Returns a PendingExport."""
    cases = as_cases(labeled)
    report = report or check_cases(cases)
    # every node is validated again: `report` may be older than a node's deletion
    errors = list(report.errors) + [p for p in (c.missing_problem() for c in cases if isinstance(c, LabeledCase))
                                    if p and p not in report.errors]
    if errors:
        raise ValueError("The labeled cases cannot be used for training:\n" + "\n".join(errors))
    entries, used = [], set()
    for index, case in enumerate(cases):
        if isinstance(case, FileCase):
            entries.append({"image": case.image, "label": case.label, "source": case.title})
            continue
        stem = f"case{index:03d}_{sceneio.safe_file_stem(case.volume.GetName())}"
        while stem in used:
            stem += "_"
        used.add(stem)
        entries.append(SceneCaseFiles.take(case, report.labels, stem))
    return PendingExport(out_dir, entries, dict(report.labels), colors or report.colors, list(unlabeled_folders))


def export_dataset(labeled, unlabeled_folders, out_dir, report=None, colors=None):
    """Write images/, labels/ and dataset.json under `out_dir` in the calling thread; returns ExportedDataset.
    Runs the checks first (or uses `report`) and raises ValueError listing the errors when there are any."""
    return take_export(labeled, unlabeled_folders, out_dir, report=report, colors=colors).write()
