"""Reading and writing images and label maps with SimpleITK, including DICOM series folders and Slicer `.seg.nrrd`.

A `.seg.nrrd` stores segments as label values in one or more layers; its header names each segment. Reading one
returns a plain label image and the segment names by label value, merging layers (later layers win where segments
overlap). Writing one produces a file 3D Slicer opens with the segment names and colours.
"""

from __future__ import annotations

import glob
import math
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
SEG_SUFFIX = ".seg.nrrd"


class ImageReadError(Exception):
    """A file or folder could not be read as a 3D image; the message says which and why."""


def is_image_path(path: str) -> bool:
    p = path.lower()
    return p.endswith(IMAGE_SUFFIXES) or is_dicom_folder(path)


def is_dicom_folder(path: str) -> bool:
    if not os.path.isdir(path):
        return False
    if not any(not f.lower().endswith(IMAGE_SUFFIXES) for f in os.listdir(path)):
        return False  # only NIfTI/NRRD/... files: don't let GDCM scan (and warn about) it
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(path))
    except RuntimeError:
        return False
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def read_image(path: str) -> sitk.Image:
    """Read a 3D image from a file or a DICOM series folder; raise ImageReadError with the reason otherwise."""
    if not os.path.exists(path):
        raise ImageReadError(f"{path}: file not found")
    try:
        if os.path.isdir(path):
            ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(path)
            if not ids:
                raise ImageReadError(f"{path}: folder holds no DICOM series")
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(path, ids[0]))
            img = reader.Execute()
        else:
            img = _read_file(path)
    except RuntimeError as e:
        raise ImageReadError(f"{path}: unreadable ({str(e).strip().splitlines()[-1][:200]})") from None
    if img.GetDimension() == 4 and img.GetSize()[3] == 1:
        img = img[:, :, :, 0]
    if img.GetDimension() != 3:
        raise ImageReadError(f"{path}: not a 3D image (dimension {img.GetDimension()}, size {img.GetSize()})")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise ImageReadError(f"{path}: has {img.GetNumberOfComponentsPerPixel()} components per voxel; "
                             "expected a single-channel (scalar) image")
    return img


def _read_file(path: str) -> sitk.Image:
    """Read an image file, after checking from its header alone that its voxels fit in memory."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    check_fits_in_memory(path, reader.GetSize(), reader.GetNumberOfComponents(), reader.GetPixelID())
    return reader.Execute()


def check_fits_in_memory(path: str, size: Sequence[int], components: int, pixel_id: int) -> None:
    """Refuse an image whose header declares more voxel data than the memory available: a damaged or hostile header
    can make a few bytes on disk claim billions of voxels, which reading would try to allocate."""
    from micd.sysmem import available_ram

    n_bytes = math.prod(int(v) for v in size) * max(1, int(components)) * pixel_bytes(pixel_id)
    avail = available_ram()
    if avail is not None and n_bytes > avail:
        dims = " x ".join(str(int(v)) for v in size)
        raise ImageReadError(f"{path}: the header declares {dims} voxels ({n_bytes / 2 ** 30:,.1f} GiB), more than "
                             f"the {avail / 2 ** 30:.1f} GiB of memory available; the file is damaged, or too big "
                             "for this computer")


def pixel_bytes(pixel_id: int) -> int:
    """Bytes of one voxel component of a SimpleITK pixel type."""
    try:
        return sitk.GetArrayViewFromImage(sitk.Image([1, 1], pixel_id)).itemsize
    except RuntimeError:
        return 1


@dataclass
class LabelMap:
    """A label image plus the segment names found in the file (empty for plain label images)."""

    image: sitk.Image
    names: Dict[int, str]


def read_label(path: str) -> LabelMap:
    """Read a label map; `.seg.nrrd` files are merged into one label image with names from the header."""
    if path.lower().endswith(SEG_SUFFIX):
        return _read_seg_nrrd(path)
    return LabelMap(read_image(path), {})


def _read_seg_nrrd(path: str) -> LabelMap:
    import nrrd

    if not os.path.exists(path):
        raise ImageReadError(f"{path}: file not found")
    try:
        header = nrrd.read_header(path)
        img = _read_file(path)
    except ImageReadError:
        raise
    except Exception as e:  # pynrrd raises its own types
        raise ImageReadError(f"{path}: unreadable segmentation ({e})") from None
    segments = []
    i = 0
    while f"Segment{i}_ID" in header:
        segments.append({
            "name": header.get(f"Segment{i}_Name", f"Segment_{i + 1}"),
            "value": int(header.get(f"Segment{i}_LabelValue", i + 1)),
            "layer": int(header.get(f"Segment{i}_Layer", 0)),
        })
        i += 1
    ncomp = img.GetNumberOfComponentsPerPixel()
    if img.GetDimension() == 4:  # layers stored along a 4th axis
        layers = [sitk.GetArrayFromImage(img[:, :, :, k]) for k in range(img.GetSize()[3])]
        ref = img[:, :, :, 0]
    elif ncomp > 1:
        arr = sitk.GetArrayFromImage(img)
        layers = [arr[..., k] for k in range(ncomp)]
        ref = sitk.VectorIndexSelectionCast(img, 0)
    else:
        layers = [sitk.GetArrayFromImage(img)]
        ref = img
    if not segments:  # a plain nrrd named .seg.nrrd
        return LabelMap(ref, {})
    out = np.zeros(layers[0].shape, np.uint16)
    names: Dict[int, str] = {}
    for new_value, s in enumerate(segments, start=1):
        if s["layer"] >= len(layers):
            raise ImageReadError(f"{path}: segment {s['name']!r} is in layer {s['layer']}, file has {len(layers)}")
        out[layers[s["layer"]] == s["value"]] = new_value
        names[new_value] = s["name"]
    # Keep the file's own label values when they are unique across layers (the common single-layer case).
    file_values = [s["value"] for s in segments]
    if len(layers) == 1 and len(set(file_values)) == len(file_values):
        remap = np.zeros(len(segments) + 1, np.uint16)
        for new_value, s in enumerate(segments, start=1):
            remap[new_value] = s["value"]
        out = remap[out]
        names = {s["value"]: s["name"] for s in segments}
    lbl = sitk.GetImageFromArray(out)
    lbl.CopyInformation(ref)
    return LabelMap(lbl, names)


def write_image(img: sitk.Image, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    sitk.WriteImage(img, path, useCompression=True)


def default_color(label: int) -> Tuple[float, float, float]:
    """A distinct, stable RGB colour (0..1) for a label value, used when a model declares none."""
    palette = [(0.90, 0.10, 0.10), (0.10, 0.60, 0.95), (0.95, 0.80, 0.10), (0.20, 0.75, 0.30), (0.65, 0.30, 0.85),
               (0.95, 0.50, 0.10), (0.10, 0.80, 0.80), (0.85, 0.40, 0.60), (0.55, 0.55, 0.15), (0.40, 0.40, 0.90)]
    base = palette[(label - 1) % len(palette)]
    k = (label - 1) // len(palette)
    return tuple(float(min(1.0, c * (1 - 0.18 * k) + 0.1 * k)) for c in base)  # type: ignore[return-value]


def write_seg_nrrd(labels: sitk.Image, path: str, names: Dict[int, str],
                   colors: Optional[Dict[int, Sequence[float]]] = None) -> None:
    """Write a label image as a Slicer `.seg.nrrd`: one layer, one segment per declared label value."""
    import nrrd

    arr = sitk.GetArrayFromImage(labels)  # (z, y, x)
    data = np.ascontiguousarray(np.transpose(arr, (2, 1, 0))).astype(np.uint8 if arr.max(initial=0) < 256 else np.uint16)
    d = np.array(labels.GetDirection()).reshape(3, 3)
    sp = np.array(labels.GetSpacing())
    header = {
        "type": str(data.dtype) if data.dtype != np.uint8 else "unsigned char",
        "dimension": 3,
        "space": "left-posterior-superior",
        "sizes": list(data.shape),
        "space directions": (d * sp[None, :]).T,
        "kinds": ["domain", "domain", "domain"],
        "encoding": "gzip",
        "space origin": np.array(labels.GetOrigin()),
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
    }
    extent = f"0 {data.shape[0] - 1} 0 {data.shape[1] - 1} 0 {data.shape[2] - 1}"
    for i, value in enumerate(sorted(names)):
        c = (colors or {}).get(value) or default_color(value)
        header[f"Segment{i}_ID"] = f"Segment_{value}"
        header[f"Segment{i}_Name"] = names[value]
        header[f"Segment{i}_NameAutoGenerated"] = "0"
        header[f"Segment{i}_Color"] = " ".join(f"{float(x):.6f}" for x in c[:3])
        header[f"Segment{i}_ColorAutoGenerated"] = "0"
        header[f"Segment{i}_LabelValue"] = str(value)
        header[f"Segment{i}_Layer"] = "0"
        header[f"Segment{i}_Extent"] = extent
        header[f"Segment{i}_Tags"] = "|"
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    nrrd.write(path, data, header, index_order="F")


def write_label(labels: sitk.Image, path: str, names: Optional[Dict[int, str]] = None,
                colors: Optional[Dict[int, Sequence[float]]] = None) -> None:
    """Write a label map as NIfTI/NRRD/MHA, or as `.seg.nrrd` (which needs the names)."""
    if path.lower().endswith(SEG_SUFFIX):
        write_seg_nrrd(labels, path, names or {}, colors)
    else:
        write_image(labels, path)


def expand_image_sources(sources: Sequence[str], base: str = ".") -> Tuple[List[str], List[str]]:
    """Expand files, folders (their image files and DICOM series) and globs into image paths.

    Returns (paths, problems): a problem is a source that matched nothing readable-looking.
    """
    paths: List[str] = []
    problems: List[str] = []
    for src in sources:
        s = src if os.path.isabs(src) else os.path.join(base, src)
        if any(ch in s for ch in "*?["):
            found = sorted(p for p in glob.glob(s) if is_image_path(p))
            if not found:
                problems.append(f"{src}: the pattern matches no image files")
            paths += found
        elif os.path.isdir(s):
            if is_dicom_folder(s):
                paths.append(s)
                continue
            names = [f for f in os.listdir(s) if not f.startswith(".")]  # macOS "._x.nii.gz" forks, hidden files
            found = sorted(os.path.join(s, f) for f in names
                           if f.lower().endswith(IMAGE_SUFFIXES) and not f.lower().endswith(SEG_SUFFIX))
            found += sorted(os.path.join(s, f) for f in names if is_dicom_folder(os.path.join(s, f)))
            if not found:
                problems.append(f"{src}: folder holds no image files (NIfTI, NRRD, MHA/MHD or DICOM series)")
            paths += found
        elif os.path.exists(s):
            paths.append(s)
        else:
            problems.append(f"{src}: not found")
    return paths, problems
