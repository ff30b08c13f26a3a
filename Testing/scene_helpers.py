"""Building test scenes: a scene with the module logics Slicer would have, and cases from real data files."""

import os
import types

import numpy as np
import slicer


def new_scene():
    """A fresh slicer.mrmlScene with the Colors, Volumes, Segmentations, SubjectHierarchy and layout logics (and
    slicer.modules.<name>.logic()); returns (scene, SceneLogics to keep alive while it is used)."""
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    colors = app.GetColorLogic()
    colors.SetMRMLScene(scene)
    colors.AddDefaultColorNodes()
    app.SetModuleLogic("Colors", colors)
    logics = {"segmentations": slicer.vtkSlicerSegmentationsModuleLogic(), "volumes": slicer.vtkSlicerVolumesLogic()}
    for name, logic in logics.items():
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(app)
        app.SetModuleLogic(name.capitalize(), logic)
    sh_logic = slicer.vtkSlicerSubjectHierarchyModuleLogic()
    sh_logic.SetMRMLScene(scene)
    scene.GetSubjectHierarchyNode()
    layout_logic = slicer.vtkMRMLLayoutLogic()  # the view layout node, and the views it names
    layout_logic.SetMRMLScene(scene)
    slicer.modules = types.SimpleNamespace(**{n: types.SimpleNamespace(logic=(lambda lg=lg: lg))
                                              for n, lg in logics.items()})
    return scene, SceneLogics(app, logics, sh_logic, layout_logic)


class SceneLogics:
    """Keeps a test scene's logics alive; `release()` detaches the layout logic (clearing the scene under it
    crashes)."""

    def __init__(self, *logics):
        self.logics = logics

    def release(self):
        self.logics[-1].SetMRMLScene(None)

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


def clinical_size_case(scene, folder):
    """A 512 x 512 x 200 CT with a two-structure segmentation, written to `folder` and loaded as a user loads files:
    ((volume, segmentation), voxels, labels)."""
    rng = np.random.default_rng(0)
    ct = rng.integers(-1000, 1500, (200, 512, 512), dtype=np.int16)
    labels = np.zeros(ct.shape, np.uint8)
    labels[60:140, 150:350, 100:300] = 1
    labels[80:120, 200:260, 320:400] = 2
    image, label = folder / "ct.nrrd", folder / "ct_labels.nrrd"
    for array, path, labelmap in ((ct, image, False), (labels, label, True)):
        node = slicer.util.addVolumeFromArray(array, name=path.stem,
                                              nodeClassName="vtkMRMLLabelMapVolumeNode" if labelmap else None)
        storage = node.CreateDefaultStorageNode()
        storage.SetFileName(str(path))
        storage.SetUseCompression(0)
        assert storage.WriteData(node)
        scene.RemoveNode(node)
    return load_case(scene, image, label), ct, labels
