"""A predicted label file -> a segmentation node: one segment per model label with the model's names and colours,
reference geometry = the input volume, the input's transform, and a place under the input's study. Shared by the
segment panel and the training panel's "Suggest next cases" (a suggested volume's prediction, to correct)."""

import slicer

from . import sceneio

RESULT_ATTRIBUTE = "MICD.Result"
SOURCE_ATTRIBUTE = "MICD.SourceVolume"
MODEL_ATTRIBUTE = "MICD.Model"

FALLBACK_COLORS = [(0.9, 0.1, 0.1), (0.1, 0.6, 0.95), (0.2, 0.8, 0.2), (0.95, 0.8, 0.1), (0.7, 0.3, 0.9),
                   (1.0, 0.5, 0.0), (0.0, 0.8, 0.8), (0.9, 0.4, 0.6)]


def label_color(value, colors):
    return tuple(colors[value]) if value in colors else FALLBACK_COLORS[(value - 1) % len(FALLBACK_COLORS)]


def result_name(volume):
    return f"{volume.GetName()} segmentation"


def find_previous_result(volume, model_path=None):
    """The segmentation MICD made earlier for this volume (by the model at `model_path`, when given), or None."""
    scene = volume.GetScene()
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLSegmentationNode")
        if node.GetAttribute(RESULT_ATTRIBUTE) and node.GetAttribute(SOURCE_ATTRIBUTE) == volume.GetID() and (
                model_path is None or node.GetAttribute(MODEL_ATTRIBUTE) == model_path):
            return node
    return None


def _name_table(scene, labels, colors):
    """A colour table whose entries carry the label names, so the import names segments right from the start."""
    table = slicer.vtkMRMLColorTableNode()
    table.SetTypeToUser()
    table.SetNumberOfColors(max(labels, default=0) + 1)
    table.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
    for value, name in labels.items():
        table.SetColor(value, name, *label_color(value, colors), 1.0)
    table.SetName("MICD label names")
    table.SetHideFromEditors(True)
    scene.AddNode(table)
    return table


def import_label_file(label_path, volume, labels, colors=None, node_name=None, target=None, model_path=None,
                      include_empty=True):
    """Import `label_path` (a label map in the volume's geometry) as a segmentation node and return it.

    labels {value: name}; colors {value: (r, g, b) in 0..1}; target: an existing node whose segments are replaced.
    Labels the model knows but the prediction does not contain become empty segments (`include_empty`). When the
    import fails, the target keeps its earlier segments (it may hold the user's corrections) and a new node is
    removed again."""
    scene = volume.GetScene()
    colors = dict(colors or {})
    labelmap = sceneio.load_volume(label_path, "MICD prediction", labelmap=True)
    table = _name_table(scene, labels, colors)
    node, earlier = None, None
    try:
        if labelmap.GetDisplayNode() is not None:
            labelmap.GetDisplayNode().SetAndObserveColorNodeID(table.GetID())
        node = target or scene.AddNewNodeByClass("vtkMRMLSegmentationNode", node_name or result_name(volume))
        segmentation = node.GetSegmentation()
        if target is not None:
            earlier = slicer.vtkSegmentation()
            earlier.DeepCopy(segmentation)
        segmentation.RemoveAllSegments()
        if node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
        node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        # The label map is in the volume's voxel grid: both go under the volume's transform before the import, which
        # maps the label map from its own frame into the segmentation's (only the segmentation would shift it).
        labelmap.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
        node.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, node):
            raise RuntimeError(f"Slicer could not import the label map {label_path}")
        found = set()
        for i in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetNthSegment(i)
            value = int(segment.GetLabelValue())
            found.add(value)
            segment.SetName(labels.get(value, f"label {value}"))
            segment.SetColor(*label_color(value, colors))
        if include_empty:
            for value, name in labels.items():
                if value not in found:
                    segmentation.AddEmptySegment("", name, label_color(value, colors))
        node.SetAttribute(RESULT_ATTRIBUTE, "1")
        node.SetAttribute(SOURCE_ATTRIBUTE, volume.GetID())
        if model_path:
            node.SetAttribute(MODEL_ATTRIBUTE, model_path)
        sceneio.place_in_subject_hierarchy(scene, node, sceneio.subject_hierarchy_parent(scene, volume))
        return node
    except Exception:
        if earlier is not None:
            node.GetSegmentation().DeepCopy(earlier)
        elif node is not None:
            scene.RemoveNode(node)
        raise
    finally:
        scene.RemoveNode(labelmap)
        scene.RemoveNode(table)


def import_uncertainty(path, volume, name=None):
    """Load an uncertainty map as a scalar volume beside the input (same transform and study)."""
    scene = volume.GetScene()
    node = sceneio.load_volume(path, name or f"{volume.GetName()} uncertainty")
    node.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
    node.SetAttribute(SOURCE_ATTRIBUTE, volume.GetID())
    sceneio.place_in_subject_hierarchy(scene, node, sceneio.subject_hierarchy_parent(scene, volume))
    return node
