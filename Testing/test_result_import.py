"""Result import: a predicted label file becomes a segmentation node with the model's names and colours, the
input's geometry and study; replacing an earlier result; the 41-label CT example."""

import json

import numpy as np
import slicer
import vtk

from conftest import CT_EXAMPLE
from MICDCommon import ModelRegistry
from MICDCommon.contract import MODEL_JSON, WEIGHTS_FILE
from MICDSegmentationLib.Logic import SegmentationLogic
from scene_helpers import load_volume, make_study
from model_folders import BRANCHES, model_meta, safetensors_bytes


def make_model_folder(folder, labels, colors):
    """A model folder as `micd train` writes it, that the registry's checks accept (model_folders.py)."""
    folder.mkdir(parents=True)
    meta = {"name": folder.name, "labels": {str(k): v for k, v in labels.items()},
            "colors": {str(k): list(v) for k, v in colors.items()},
            "provenance": {"created": "2026-11-24T10:00:00+0000", "counts": {"labeled": 3, "unlabeled": 10}},
            "metrics": {"best_mean_dice": 0.8}, "method": "micd"}
    meta.update({k: v for k, v in model_meta(folder.name, labels).items() if k not in meta})
    (folder / MODEL_JSON).write_text(json.dumps(meta))
    (folder / WEIGHTS_FILE).write_bytes(safetensors_bytes({f"{b}.head.weight": 6 for b in BRANCHES}))
    return folder


def _segments_by_name(node):
    seg = node.GetSegmentation()
    return {seg.GetNthSegment(i).GetName(): seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())}


def _reference_geometry(node):
    name = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    return node.GetSegmentation().GetConversionParameter(name)


def _volume_geometry_string(volume):
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(volume.GetImageData().GetDimensions())
    m = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(m)
    image.SetImageToWorldMatrix(m)
    return slicer.vtkSegmentationConverter.SerializeImageGeometry(image)


def test_ct_example_41_labels(scene, tmp_path):
    names = {int(k): v for k, v in json.loads((CT_EXAMPLE / "dataset.json").read_text(encoding="utf-8"))["labels"].items()
             if int(k) != 0}
    assert len(names) == 41
    rng = np.random.default_rng(1)
    colors = {v: tuple(float(c) for c in rng.uniform(0.1, 1.0, 3)) for v in names}
    registry = ModelRegistry(tmp_path / "models")
    model = registry.add_folder(str(make_model_folder(tmp_path / "ct-model", names, colors)), "CT organs")

    study = make_study(scene)
    ct = load_volume(CT_EXAMPLE / "ct.nii.gz", "ct")
    scene.GetSubjectHierarchyNode().CreateItem(study, ct)
    logic = SegmentationLogic(registry=registry)
    node = logic.import_result(str(CT_EXAMPLE / "labels.nii.gz"), ct, "CT organs")

    assert node.GetName() == "ct segmentation"
    segments = _segments_by_name(node)
    assert set(segments) == set(names.values())
    assert _reference_geometry(node) == _volume_geometry_string(ct)
    sh = scene.GetSubjectHierarchyNode()
    assert sh.GetItemParent(sh.GetItemByDataNode(node)) == study
    reference = slicer.util.arrayFromVolume(load_volume(CT_EXAMPLE / "labels.nii.gz", "ref", labelmap=True))
    for value, name in names.items():
        segment = node.GetSegmentation().GetSegment(segments[name])
        assert np.allclose(segment.GetColor(), colors[value], atol=1e-6)
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(node, segments[name], ct)
        assert mask.shape == reference.shape
        assert int(mask.sum()) == int((reference == value).sum()), name


def test_replace_asks_and_missing_labels_become_empty_segments(scene, tmp_path, hippocampus_cases):
    image, label = hippocampus_cases[0]
    labels = {1: "anterior", 2: "posterior", 3: "tail (not predicted)"}
    registry = ModelRegistry(tmp_path / "models")
    registry.add_folder(str(make_model_folder(tmp_path / "m", labels, {1: (1, 0, 0), 2: (0, 0, 1)})), "Hippo")
    volume = load_volume(image, "hippo")
    logic = SegmentationLogic(registry=registry)

    first = logic.import_result(str(label), volume, "Hippo")
    assert list(_segments_by_name(first)) == ["anterior", "posterior", "tail (not predicted)"]
    assert first.GetSegmentation().GetSegment(_segments_by_name(first)["anterior"]).GetColor() == (1.0, 0.0, 0.0)
    assert logic.previous_result(volume) is first

    again = logic.import_result(str(label), volume, "Hippo", replace=True)
    assert again is first and len(_segments_by_name(again)) == 3
    other = logic.import_result(str(label), volume, "Hippo", replace=False)
    assert other is not first and other.GetName().startswith("hippo segmentation")
    assert scene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode") == 0  # temporary nodes removed


def test_a_failed_replace_keeps_the_earlier_result_and_its_corrections(scene, tmp_path, hippocampus_cases):
    """Slicer's label map import reports failure by returning False; the earlier result, which may hold the user's
    corrections, must then keep all its segments, and a new result node must not be left behind empty."""
    from unittest import mock

    from MICDCommon import resultimport

    image, label = hippocampus_cases[0]
    registry = ModelRegistry(tmp_path / "models")
    registry.add_folder(str(make_model_folder(tmp_path / "m", {1: "anterior", 2: "posterior"}, {})), "Hippo")
    volume = load_volume(image, "hippo")
    logic = SegmentationLogic(registry=registry)
    first = logic.import_result(str(label), volume, "Hippo")
    first.GetSegmentation().AddEmptySegment("", "my correction", (0.0, 1.0, 0.0))
    before = list(_segments_by_name(first))
    nodes = scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")

    class FailingImport:  # the real call's failure value; everything else is real MRML
        @staticmethod
        def ImportLabelmapToSegmentationNode(labelmap, node):
            return False

    with mock.patch.object(resultimport.slicer, "vtkSlicerSegmentationsModuleLogic", FailingImport):
        for replace in (True, False):
            try:
                logic.import_result(str(label), volume, "Hippo", replace=replace)
            except RuntimeError as e:
                assert "could not import" in str(e)
            else:
                raise AssertionError("a failed import was not reported")
    assert list(_segments_by_name(first)) == before == ["anterior", "posterior", "my correction"]
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == nodes
    assert scene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode") == 0


def _world_bounds_of_labels(volume, labels_array, transform):
    """World bounds of the labelled voxels: voxel corners through the volume's IJK->RAS, then its transform."""
    k, j, i = np.nonzero(labels_array)
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(ijk_to_ras)
    to_world = vtk.vtkMatrix4x4()
    transform.GetMatrixTransformToWorld(to_world)
    matrix = np.array([[to_world.GetElement(r, c) for c in range(4)] for r in range(4)]) @ \
        np.array([[ijk_to_ras.GetElement(r, c) for c in range(4)] for r in range(4)])
    corners = [(x, y, z) for x in (i.min() - 0.5, i.max() + 0.5) for y in (j.min() - 0.5, j.max() + 0.5)
               for z in (k.min() - 0.5, k.max() + 0.5)]
    world = np.array([matrix @ np.array([*c, 1.0]) for c in corners])[:, :3]
    return world.min(axis=0), world.max(axis=0)


def test_result_lands_in_place_under_a_transformed_volume(scene, tmp_path, hippocampus_cases):
    image, label = hippocampus_cases[0]
    registry = ModelRegistry(tmp_path / "models")
    registry.add_folder(str(make_model_folder(tmp_path / "m", {1: "anterior", 2: "posterior"}, {})), "Hippo")
    volume = load_volume(image, "hippo")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
    matrix = vtk.vtkMatrix4x4()
    rotation = vtk.vtkTransform()
    rotation.RotateZ(30)
    rotation.Translate(40.0, -25.0, 12.0)
    matrix.DeepCopy(rotation.GetMatrix())
    transform.SetMatrixTransformToParent(matrix)
    volume.SetAndObserveTransformNodeID(transform.GetID())

    node = SegmentationLogic(registry=registry).import_result(str(label), volume, "Hippo")
    assert node.GetTransformNodeID() == transform.GetID()
    reference = slicer.util.arrayFromVolume(load_volume(label, "ref", labelmap=True))
    expected_low, expected_high = _world_bounds_of_labels(volume, reference, transform)
    bounds = [0.0] * 6
    node.GetRASBounds(bounds)  # world coordinates: the segmentation's own transform applied
    spacing = max(volume.GetSpacing())
    assert np.allclose(bounds[0::2], expected_low, atol=spacing) and np.allclose(bounds[1::2], expected_high,
                                                                                   atol=spacing), (bounds, expected_low, expected_high)
    segments = _segments_by_name(node)
    for value, name in {1: "anterior", 2: "posterior"}.items():
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(node, segments[name], volume)
        assert int(mask.sum()) == int((reference == value).sum())
        assert int((mask.astype(bool) & (reference == value)).sum()) == int((reference == value).sum()), name
