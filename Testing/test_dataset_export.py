"""Scene -> training files: geometry, label values by segment name, and the problems the checks report."""

import json

import numpy as np
import pytest
import slicer
import vtk

from MICDTrainingLib.DatasetExport import check_cases, export_dataset, take_export
from scene_helpers import clinical_size_case, load_case, load_volume


def _ijk_to_ras(node):
    m = slicer.vtkMatrix4x4() if hasattr(slicer, "vtkMatrix4x4") else __import__("vtk").vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def _swapped_case(scene, tmp_path, image, label):
    """A case whose segments were created in the other order (posterior has label value 1 in its own labelmap)."""
    original = load_volume(label, "swap source", labelmap=True)
    array = slicer.util.arrayFromVolume(original)
    swapped = np.where(array == 1, 2, np.where(array == 2, 1, 0)).astype(array.dtype)
    slicer.util.updateVolumeFromArray(original, swapped)
    path = tmp_path / "swapped.nrrd"
    storage = original.CreateDefaultStorageNode()
    storage.SetFileName(str(path))
    assert storage.WriteData(original)
    scene.RemoveNode(original)
    return load_case(scene, image, path, names={1: "posterior", 2: "anterior"}, name="swapped")


def test_export_keeps_geometry_and_gives_each_name_one_value(scene, tmp_path, hippocampus_cases):
    (img_a, lab_a), (img_b, lab_b) = hippocampus_cases[:2]
    case_a = load_case(scene, img_a, lab_a, colors={1: (1.0, 0.0, 0.0)})
    case_b = _swapped_case(scene, tmp_path, img_b, lab_b)
    report = check_cases([case_a, case_b])
    assert report.ok, report.text()
    assert report.labels == {1: "anterior", 2: "posterior"}
    assert report.colors[1] == (1.0, 0.0, 0.0)

    exported = export_dataset([case_a, case_b], [str(tmp_path)], tmp_path / "out", report=report)
    dataset = json.loads((tmp_path / "out" / "dataset.json").read_text(encoding="utf-8"))
    assert dataset["labels"] == {"1": "anterior", "2": "posterior"}
    assert dataset["unlabeled"] == [str(tmp_path)]
    assert len(dataset["labeled"]) == 2 and exported.cases[1]["source"] == "swapped / swapped segmentation"
    for entry, (image, label) in zip(dataset["labeled"], [(img_a, lab_a), (img_b, lab_b)]):
        written_image = load_volume(tmp_path / "out" / entry["image"], "written image")
        written_label = load_volume(tmp_path / "out" / entry["label"], "written label", labelmap=True)
        original_image = load_volume(image, "original image")
        original_label = load_volume(label, "original label", labelmap=True)
        assert np.allclose(_ijk_to_ras(written_image), _ijk_to_ras(original_image), atol=1e-4)
        assert np.allclose(_ijk_to_ras(written_label), _ijk_to_ras(original_image), atol=1e-4)
        assert np.array_equal(slicer.util.arrayFromVolume(written_image), slicer.util.arrayFromVolume(original_image))
        # the swapped case's labels come out with the same values as the original file: names decide values
        assert np.array_equal(slicer.util.arrayFromVolume(written_label), slicer.util.arrayFromVolume(original_label))


def test_inconsistent_names_are_listed(scene, hippocampus_cases):
    (img_a, lab_a), (img_b, lab_b), (img_c, lab_c) = hippocampus_cases[:3]
    a = load_case(scene, img_a, lab_a)
    b = load_case(scene, img_b, lab_b, names={1: "Anterior", 2: "posterior"})
    c = load_case(scene, img_c, lab_c, names={1: "head", 2: "posterior"})
    report = check_cases([a, b, c])
    assert not report.ok
    text = report.text()
    assert "named differently" in text and "'Anterior'" in text and "'anterior'" in text
    assert "Segment 'head' is missing in" in text and "hippocampus_001" in text
    with pytest.raises(ValueError, match="cannot be used"):
        export_dataset([a, b, c], [], "/nonexistent/never-written")


def test_geometry_mismatches_are_reported(scene, hippocampus_cases):
    (img_a, lab_a), (img_b, lab_b) = hippocampus_cases[:2]
    volume, segmentation = load_case(scene, img_a, lab_a)
    other_volume = load_volume(img_b, "far away")
    origin = list(other_volume.GetOrigin())
    other_volume.SetOrigin(origin[0] + 500, origin[1], origin[2])
    report = check_cases([(other_volume, segmentation)])
    assert any("does not overlap" in e for e in report.errors), report.text()

    shifted = load_volume(img_a, "shifted")
    shifted.SetOrigin(*[o + 10 for o in volume.GetOrigin()])
    report = check_cases([(shifted, segmentation)])
    assert any("extend outside the volume" in e for e in report.errors), report.text()

    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    segmentation.SetAndObserveTransformNodeID(transform.GetID())
    report = check_cases([(volume, segmentation)])
    assert any("different transforms" in e for e in report.errors), report.text()


def test_no_cases_and_empty_segmentation(scene, hippocampus_cases):
    assert "at least one labeled case" in check_cases([]).text()
    volume = load_volume(hippocampus_cases[0][0], "v")
    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    assert "has no segments" in check_cases([(volume, empty)]).text()


def test_a_corrected_unlabeled_case_leaves_the_unlabeled_set(scene, tmp_path, hippocampus_cases):
    """The annotate-next loop: a volume loaded from the unlabeled folder and then labeled is exported with its
    origin, and the trainer's dataset (the backend's own reader) no longer counts that file as unlabeled."""
    import os

    from micd.data.dataset import load_dataset_spec

    (img_a, lab_a), (img_b, _) = hippocampus_cases[:2]
    unlabeled = tmp_path / "unlabeled"
    unlabeled.mkdir()
    for image in (img_a, img_b):
        os.symlink(image, unlabeled / os.path.basename(image))
    corrected = load_case(scene, unlabeled / os.path.basename(img_a), lab_a)  # loaded from the unlabeled folder
    export_dataset([corrected], [str(unlabeled)], tmp_path / "out")
    dataset = json.loads((tmp_path / "out" / "dataset.json").read_text(encoding="utf-8"))
    assert dataset["labeled"][0]["origin"] == str(unlabeled / os.path.basename(img_a))
    spec = load_dataset_spec(str(tmp_path / "out" / "dataset.json"))
    assert [os.path.basename(p) for p in spec.unlabeled] == [os.path.basename(img_b)]
    assert any("also labeled" in n for n in spec.notes)


@pytest.mark.timing
def test_a_clinical_size_case_leaves_the_main_thread_at_once(scene, tmp_path):
    """Train's export of a 512 x 512 x 200 CT: the main thread's half (checks done, `take_export`: the volume
    shared, not copied, the segments' labelmap copied once) takes milliseconds; the files (about 0.4 s here: it
    was 4.5 s on the main thread with gzip and a resampling per segment, then 0.6 s) are written by `write`, which
    touches no MRML node and runs in a worker thread. Measured: take, then write in a thread while the main
    thread keeps processing Qt events."""
    import threading
    import time

    case, ct, labels = clinical_size_case(scene, tmp_path)
    report = check_cases([case])
    assert report.ok, report.text()
    t0 = time.perf_counter()
    pending = take_export([case], [], str(tmp_path / "dataset"), report=report)
    take_s = time.perf_counter() - t0
    result = {}
    writer = threading.Thread(target=lambda: result.update(exported=pending.write()))
    t0 = time.perf_counter()
    writer.start()
    slowest, turns = 0.0, 0
    while writer.is_alive():
        t1 = time.perf_counter()
        slicer.app.processEvents()
        time.sleep(0.005)  # what an idle Qt event loop does between timer ticks
        slowest, turns = max(slowest, time.perf_counter() - t1), turns + 1
    write_s = time.perf_counter() - t0
    print(f"512x512x200 case: take {take_s * 1000:.0f} ms on the main thread, write {write_s:.2f} s in a worker "
          f"({turns} event-loop turns meanwhile, the slowest {slowest * 1000:.0f} ms)")
    assert take_s < 0.1
    assert turns > 5 and slowest < 0.1  # the main thread stayed free while the files were written
    written = result["exported"].cases[0]
    image = slicer.util.arrayFromVolume(load_volume(tmp_path / "dataset" / written["image"], "image"))
    label = slicer.util.arrayFromVolume(load_volume(tmp_path / "dataset" / written["label"], "label",
                                                    labelmap=True))
    assert np.array_equal(image, ct) and np.array_equal(label, labels)


def test_the_nrrd_writer_matches_slicers_storage_node(scene, tmp_path):
    """volumefile.write_nrrd (numpy and the standard library, any thread) against the storage node, on an oblique,
    anisotropic volume: the same voxels and the same geometry, read back by Slicer and by SimpleITK (the backend's
    reader)."""
    import SimpleITK as sitk

    from MICDCommon import volumefile

    voxels = np.random.default_rng(1).normal(size=(7, 9, 11)).astype(np.float32)
    node = slicer.util.addVolumeFromArray(voxels, name="oblique")
    node.SetSpacing(0.7, 1.3, 4.0)
    node.SetOrigin(-12.5, 30.25, 7.0)
    angle = np.deg2rad(20)
    directions = vtk.vtkMatrix4x4()
    rotation = [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    for r in range(3):
        for c in range(3):
            directions.SetElement(r, c, rotation[r][c])
    node.SetIJKToRASDirectionMatrix(directions)
    ours = volumefile.write_snapshot(volumefile.VolumeSnapshot.take(node), str(tmp_path / "ours.nrrd"))
    storage = node.CreateDefaultStorageNode()
    storage.SetFileName(str(tmp_path / "slicer.nrrd"))
    storage.SetUseCompression(0)
    assert storage.WriteData(node)
    from MICDCommon import sceneio

    a, b = load_volume(tmp_path / "ours.nrrd", "ours"), load_volume(tmp_path / "slicer.nrrd", "slicer")
    assert np.array_equal(slicer.util.arrayFromVolume(a), slicer.util.arrayFromVolume(b))
    assert np.allclose(sceneio.ijk_to_ras(a), sceneio.ijk_to_ras(b), atol=1e-9)
    assert np.allclose(sceneio.ijk_to_ras(a), sceneio.ijk_to_ras(node), atol=1e-9)
    ia, ib = sitk.ReadImage(ours), sitk.ReadImage(str(tmp_path / "slicer.nrrd"))
    assert np.array_equal(sitk.GetArrayFromImage(ia), sitk.GetArrayFromImage(ib))
    for attribute in ("GetOrigin", "GetSpacing", "GetDirection"):
        assert np.allclose(getattr(ia, attribute)(), getattr(ib, attribute)(), atol=1e-9), attribute


def test_labels_read_from_the_segments_equal_the_logics_export(scene, tmp_path, hippocampus_cases, monkeypatch):
    """Segments on the volume's own grid are read directly (no resampling pass); the label map is the one the
    Segmentations logic's export gives, value for value, for every case of this set."""
    from MICDTrainingLib import DatasetExport

    cases = [load_case(scene, image, label) for image, label in hippocampus_cases[:3]]
    report = check_cases(cases)
    read = export_dataset(cases, [], str(tmp_path / "read"), report=report)
    called = []
    original = DatasetExport._label_layers_on_volume_grid
    monkeypatch.setattr(DatasetExport, "_label_layers_on_volume_grid", lambda *a: called.append(original(*a)) or None)
    exported = export_dataset(cases, [], str(tmp_path / "export"), report=report)
    assert len(called) == 3 and all(c is not None for c in called)  # the direct path applied to each case
    for a, b in zip(read.cases, exported.cases):
        la = slicer.util.arrayFromVolume(load_volume(tmp_path / "read" / a["label"], "a", labelmap=True))
        lb = slicer.util.arrayFromVolume(load_volume(tmp_path / "export" / b["label"], "b", labelmap=True))
        assert la.shape == lb.shape and np.array_equal(la, lb) and set(np.unique(la)) == {0, 1, 2}


def test_segments_off_the_volume_grid_go_through_the_logics_export(scene, hippocampus_cases):
    from MICDTrainingLib import DatasetExport

    case = DatasetExport.as_cases([load_case(scene, *hippocampus_cases[0])])[0]
    segments = case.segments()
    lookup = np.arange(len(segments) + 1, dtype=np.uint8)
    assert DatasetExport._label_layers_on_volume_grid(case, segments, lookup) is not None
    origin = list(case.volume.GetOrigin())
    case.volume.SetOrigin(origin[0] + 0.5, origin[1], origin[2])  # half a voxel off: the grids differ
    assert DatasetExport._label_layers_on_volume_grid(case, segments, lookup) is None
