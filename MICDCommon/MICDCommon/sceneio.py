"""Moving volumes between the MRML scene and files with storage nodes and the Volumes logic (no `slicer.app`, so the
same code runs in Slicer and under slicer-core)."""

import os
import re

import numpy as np
import slicer
import vtk


def safe_file_stem(name, fallback="volume"):
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name or "")).strip("._")
    return stem[:60] or fallback


def write_volume(node, path, compress=True):
    """Write a volume or labelmap node with its own storage node; raises IOError when nothing was written."""
    storage = node.CreateDefaultStorageNode()
    storage.SetFileName(path)
    storage.SetUseCompression(1 if compress else 0)
    if not storage.WriteData(node) or not os.path.isfile(path):
        raise IOError(f"could not write {node.GetName()} to {path}")
    return path


def volumes_logic():
    return slicer.modules.volumes.logic()


def load_volume(path, name, labelmap=False):
    """Load an image file as a scalar volume (or labelmap) node with the Volumes logic."""
    node = volumes_logic().AddArchetypeVolume(path, name, 1 if labelmap else 0)
    if node is None:
        raise IOError(f"could not read {path}")
    return node


def matrix_array(matrix):
    """A vtkMatrix4x4 as a 4x4 numpy array."""
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def ijk_to_ras(node):
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return matrix_array(m)


def same_grid(node_a, node_b, tolerance=1e-3):
    """Do two volume nodes have the same voxel grid (dimensions and IJK-to-RAS matrix)?"""
    a, b = node_a.GetImageData(), node_b.GetImageData()
    if a is None or b is None or a.GetDimensions() != b.GetDimensions():
        return False
    return bool(np.allclose(ijk_to_ras(node_a), ijk_to_ras(node_b), atol=tolerance))


def ras_bounds(node):
    bounds = [0.0] * 6
    node.GetRASBounds(bounds)
    return bounds


def bounds_inside(inner, outer, margin=0.0):
    return all(inner[2 * i] >= outer[2 * i] - margin and inner[2 * i + 1] <= outer[2 * i + 1] + margin
               for i in range(3))


def bounds_overlap(a, b):
    return all(a[2 * i] <= b[2 * i + 1] and b[2 * i] <= a[2 * i + 1] for i in range(3))


def subject_hierarchy_parent(scene, node):
    """The subject-hierarchy item that holds `node` (its study, typically), or the scene item."""
    sh = scene.GetSubjectHierarchyNode()
    item = sh.GetItemByDataNode(node)
    return sh.GetItemParent(item) if item else sh.GetSceneItemID()


def place_in_subject_hierarchy(scene, node, parent_item):
    sh = scene.GetSubjectHierarchyNode()
    item = sh.GetItemByDataNode(node)
    if item:
        sh.SetItemParent(item, parent_item)
    else:
        item = sh.CreateItem(parent_item, node)
    return item
