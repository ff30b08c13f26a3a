"""Volumes written off Slicer's main thread.

A storage node writes on the thread that calls it, and MRML may only be touched from the main thread; a 512x512x200
CT takes about 0.2 s to write that way, longer than a Qt callback may take. So the export is split in two:
`VolumeSnapshot.take(node)` on the main thread costs no copy (it keeps a shallow copy of the node's image data and
the voxel-to-RAS matrix; Slicer's filters replace a node's image data rather than edit it, so the snapshot keeps
the voxels of the moment; a script that edits the array in place while the file is written would be seen half
way), and `write_nrrd` writes the voxels
from any thread as a raw NRRD in the layout Slicer's own writer uses (LPS space, the first axis fastest), with numpy
and the standard library only: Python releases the interpreter lock while the file is written, so Qt keeps running."""

import numpy as np

NRRD_TYPES = {np.dtype(t): name for t, name in (
    (np.int8, "signed char"), (np.uint8, "unsigned char"), (np.int16, "short"), (np.uint16, "unsigned short"),
    (np.int32, "int"), (np.uint32, "unsigned int"), (np.int64, "long long"), (np.uint64, "unsigned long long"),
    (np.float32, "float"), (np.float64, "double"))}


class VolumeSnapshot:
    """A scalar volume's voxels (k, j, i) and its IJK-to-RAS matrix (4x4)."""

    def __init__(self, voxels, ijk_to_ras, keep_alive=None):
        self.voxels = voxels
        self.ijk_to_ras = np.asarray(ijk_to_ras, dtype=float)
        self._keep_alive = keep_alive  # the VTK image data the voxels are a view of

    @classmethod
    def take(cls, node):
        """On the main thread: the node's current voxels (no copy) and geometry."""
        import vtk
        from vtk.util.numpy_support import vtk_to_numpy

        source = node.GetImageData()
        if source is None or source.GetPointData().GetScalars() is None:
            raise ValueError(f"{node.GetName()} has no voxels")
        if source.GetNumberOfScalarComponents() != 1:
            raise ValueError(f"{node.GetName()} is not a scalar volume ({source.GetNumberOfScalarComponents()} "
                             "components per voxel)")
        from .sceneio import ijk_to_ras

        image = vtk.vtkImageData()
        image.ShallowCopy(source)  # shares the voxel array; a later SetAndObserveImageData leaves it to us
        dims = image.GetDimensions()
        voxels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(tuple(reversed(dims)))
        nrrd_type(voxels)  # an unsupported type is refused here, on the caller's thread, not by the writer
        return cls(voxels, ijk_to_ras(node), keep_alive=image)


def _vector(values):
    return "(" + ",".join(repr(float(v)) for v in values) + ")"


def nrrd_type(voxels):
    """NRRD's name of the voxels' type; ValueError for what a scalar 3D NRRD cannot hold."""
    dtype = np.dtype(voxels.dtype).newbyteorder("=")
    if dtype not in NRRD_TYPES or voxels.ndim != 3:
        raise ValueError(f"cannot write {voxels.dtype} voxels of {voxels.ndim} dimensions as a scalar NRRD")
    return NRRD_TYPES[dtype]


def nrrd_header(voxels, ijk_to_ras):
    """The header of a raw, little-endian NRRD of `voxels` (k, j, i) placed by `ijk_to_ras` (4x4, RAS)."""
    kind = nrrd_type(voxels)
    lps = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(ijk_to_ras, dtype=float)[:3]  # RAS -> LPS, rows x, y, z
    directions = " ".join(_vector(lps[:, axis]) for axis in range(3))
    sizes = " ".join(str(n) for n in reversed(voxels.shape))
    return ("NRRD0004\n"
            f"type: {kind}\ndimension: 3\nspace: left-posterior-superior\nsizes: {sizes}\n"
            f"space directions: {directions}\nkinds: domain domain domain\nendian: little\nencoding: raw\n"
            f"space origin: {_vector(lps[:, 3])}\n\n")


def write_nrrd(voxels, ijk_to_ras, path):
    """Write `voxels` (k, j, i) as a raw NRRD at `path`; safe to call from a worker thread. Returns `path`."""
    header = nrrd_header(voxels, ijk_to_ras).encode("ascii")  # before the file is made: a refusal leaves none
    data = np.ascontiguousarray(voxels, dtype=np.dtype(voxels.dtype).newbyteorder("<"))
    with open(path, "wb") as f:
        f.write(header)
        f.write(memoryview(data).cast("B"))  # no copy; the interpreter lock is released during the write
    return path


def write_snapshot(snapshot, path):
    return write_nrrd(snapshot.voxels, snapshot.ijk_to_ras, path)
