"""Building test scenes from real data files."""

import os

import slicer

HIPPOCAMPUS_NAMES = {1: "anterior", 2: "posterior"}


def load_volume(path, name, labelmap=False):
    node = slicer.modules.volumes.logic().AddArchetypeVolume(str(path), name, 1 if labelmap else 0)
    assert node is not None, path
    return node


def load_case(scene, image, label, names=None, colors=None, name=None, study_item=None):
    """A volume + a segmentation with one named segment per label value (as a user would have them)."""
    names = names or HIPPOCAMPUS_NAMES
    name = name or os.path.basename(str(image)).split(".")[0]
    volume = load_volume(image, name)
    labelmap = load_volume(label, name + " labels", labelmap=True)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name + " segmentation")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    scene.RemoveNode(labelmap)
    seg = segmentation.GetSegmentation()
    for i in range(seg.GetNumberOfSegments()):
        segment = seg.GetNthSegment(i)
        value = segment.GetLabelValue()
        segment.SetName(names[value])
        if colors and value in colors:
            segment.SetColor(*colors[value])
    if study_item:
        sh = scene.GetSubjectHierarchyNode()
        for node in (volume, segmentation):
            item = sh.GetItemByDataNode(node)
            if item:
                sh.SetItemParent(item, study_item)
            else:
                sh.CreateItem(study_item, node)
    return volume, segmentation


def make_study(scene, patient="Patient 1", study="Study 1"):
    sh = scene.GetSubjectHierarchyNode()
    patient_item = sh.CreateSubjectItem(sh.GetSceneItemID(), patient)
    return sh.CreateStudyItem(patient_item, study)
