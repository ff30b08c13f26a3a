"""Where and how to accumulate the blended class probabilities, so that big volumes fit in RAM and GPU memory.

MONAI's `sliding_window_inference` keeps one full-size buffer of C class channels (+ a weight map) on `device` while
windows run on `sw_device`. For a 512 x 512 x 400 grid and 42 classes that is 17 GB in float32, so we pick, in order:

1. the whole grid, float32, on the compute device; 2. the whole grid, float16, there; 3. (GPU only) the same two on
the CPU; 4. slabs: the grid is cut along one axis into slabs, each padded by a margin of a quarter window for
context (axis and thickness chosen to need the fewest windows in all); each slab is blended by MONAI in float16 and
reduced to labels at once, so only one slab's probabilities exist at a time. Inside a slab the blending is the same
as in a single pass; only window placement near a seam differs (rare voxels at class boundaries).

The budgets are `budget_bytes`. CPU: what is left for the buffer when the whole process is to stay within
CPU_PEAK_TARGET (and half the available RAM), after what it needs besides the buffer (`fixed_bytes`: libraries, the
input and its float32 copy on the network grid, the label maps, one batch of windows); `--max-buffer-gb` sets it
instead. GPU: 70% of free memory minus the network's working memory.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional, Sequence, Tuple

import torch

from micd.sysmem import available_ram as _available_ram

GIB = 1024 ** 3


@dataclass
class AccumulationPlan:
    compute_device: str  # where the networks run (MONAI sw_device)
    buffer_device: str  # where the probability buffer lives (MONAI device)
    dtype: str  # "float32" | "float16"
    slab_axis: int  # array axis (z=0, y=1, x=2) along which slabs are cut
    slab_length: int  # voxels kept per slab along slab_axis (== the extent when there is one pass)
    margin: int  # extra context voxels on each side of a slab
    n_slabs: int
    buffer_bytes: int  # estimated peak bytes of one pass's buffer
    budget_bytes: int
    reason: str

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.float16 if self.dtype == "float16" else torch.float32

    def to_dict(self) -> dict:
        d = asdict(self)
        d["buffer_gib"] = round(self.buffer_bytes / GIB, 3)
        d["budget_gib"] = round(self.budget_bytes / GIB, 3)
        return d


def bytes_per_voxel(n_classes: int, itemsize: int) -> int:
    """Buffer (C channels + weight map + input copy) plus the reduction's temporaries (argmax int64, entropy f32)."""
    return (n_classes + 2) * itemsize + 16


CPU_PEAK_TARGET = 3.5 * GIB  # a CPU prediction stays within 4 GB of RAM by default, as Auto3DSeg's CPU models do
LIBRARIES_BYTES = 600 * 1024 ** 2  # torch, MONAI, SimpleITK and the interpreter, resident (measured: about 0.5 GB)
MIN_BUFFER_BYTES = 256 * 1024 ** 2


def default_sw_batches(device: torch.device) -> Tuple[int, ...]:
    """Window batches to try, best first: 4 on a GPU; on the CPU 2 (two windows keep both cores of a small machine
    busier than one), then 1 when a batch of 2 leaves too little of the memory target for the buffer."""
    return (4,) if device.type == "cuda" else (2, 1)


def window_bytes(roi: Sequence[int], channels: int, sw_batch: int, filters: int = 16) -> int:
    """One batch of windows on the CPU: float32 logits (softmax in place), their float16 copy and MONAI's weighted
    float16 temporary, and the network's activations (about 6 maps of `filters` channels at full resolution)."""
    return sw_batch * math.prod(roi) * (channels * (4 + 2 + 2) + 6 * filters * 4)


def fixed_bytes(image, array, roi: Sequence[int], channels: int, sw_batch: int, filters: int = 16) -> int:
    """What a CPU prediction holds beside the probability buffer: libraries, the input image, its float32 copy and
    the label map on the network grid, one batch of windows. (The label map on the input grid is made after the
    buffer is freed; the slab's input copy is counted in `bytes_per_voxel`.)"""
    return (LIBRARIES_BYTES + int(image.GetNumberOfPixels()) * image.GetSizeOfPixelComponent()
            + int(array.size) * (4 + 1) + window_bytes(roi, channels, sw_batch, filters))


def cpu_budget(max_gib: Optional[float] = None, fixed: int = 0) -> int:
    """Bytes for the CPU probability buffer: `max_gib` when given, else what is left of CPU_PEAK_TARGET (at most
    half the available RAM) after `fixed`, and at least MIN_BUFFER_BYTES."""
    if max_gib is not None:
        return int(max_gib * GIB)
    avail = _available_ram()
    target = min(CPU_PEAK_TARGET, 0.5 * avail) if avail else CPU_PEAK_TARGET
    return int(max(MIN_BUFFER_BYTES, target - fixed))


def gpu_budget(device: torch.device, roi: Sequence[int], n_classes: int, filters: int, sw_batch: int) -> int:
    free, _ = torch.cuda.mem_get_info(device)
    window = sw_batch * math.prod(roi) * (8 * filters + 4 * n_classes) * 4  # activations + softmax/flip copies
    return max(0, int(0.7 * (free - window - 512 * 1024 ** 2)))


def n_windows(length: int, roi: int, overlap: float) -> int:
    """Windows MONAI places along one axis (scan interval = int(roi * (1 - overlap)), at least 1)."""
    if length <= roi:
        return 1
    step = max(1, int(roi * (1 - overlap)))
    return math.ceil((length - roi) / step) + 1


def plan_accumulation(shape: Sequence[int], n_classes: int, roi: Sequence[int], compute: torch.device,
                      cpu_bytes: int, gpu_bytes: Optional[int] = None, overlap: float = 0.25) -> AccumulationPlan:
    """Choose buffer device, dtype and slab size for a grid of `shape` (z, y, x) and `n_classes` channels."""
    voxels = math.prod(shape)
    places = [(str(compute), gpu_bytes if compute.type == "cuda" else cpu_bytes)]
    if compute.type == "cuda":
        places.append(("cpu", cpu_bytes))
    for dev, budget in places:
        for dtype, size in (("float32", 4), ("float16", 2)):
            need = voxels * bytes_per_voxel(n_classes, size)
            if budget is not None and need <= budget:
                return AccumulationPlan(str(compute), dev, dtype, 0, int(shape[0]), 0, 1, need, budget,
                                        f"whole grid fits in the {dev} budget as {dtype}")
    for dev, budget in places:
        best = None
        for axis in range(3):  # the axis and slab thickness that need the fewest windows in all
            cross = voxels // shape[axis]
            margin = roi[axis] // 4
            per_plane = cross * bytes_per_voxel(n_classes, 2)
            planes = min((budget or 0) // per_plane, int(shape[axis]) + 2 * margin)
            others = math.prod(n_windows(shape[a], roi[a], overlap) for a in range(3) if a != axis)
            for total in range(min(roi[axis], int(shape[axis])), planes + 1):
                keep = min(int(shape[axis]), total - 2 * margin)
                if keep < 1:
                    continue
                n = math.ceil(shape[axis] / keep)
                windows = n * n_windows(min(total, int(shape[axis])), roi[axis], overlap) * others
                if best is None or windows < best[0]:
                    best = (windows, axis, keep, margin, n, total * per_plane)
        if best:
            windows, axis, keep, margin, n, need = best
            return AccumulationPlan(str(compute), dev, "float16", axis, keep, margin, n, need, budget or 0,
                                    f"whole grid needs {voxels * bytes_per_voxel(n_classes, 2) / GIB:.2f} GiB even "
                                    f"in float16; {n} slabs of {keep}+2x{margin} planes along axis {axis} on {dev} "
                                    f"({windows} windows)")
    axis = min(range(3), key=lambda a: (voxels // shape[a]) * roi[a])
    margin = roi[axis] // 4
    keep = max(1, roi[axis] - 2 * margin)
    need = (keep + 2 * margin) * (voxels // shape[axis]) * bytes_per_voxel(n_classes, 2)
    return AccumulationPlan(str(compute), "cpu", "float16", axis, keep, margin, math.ceil(shape[axis] / keep),
                            need, cpu_bytes, "budget smaller than one window-thick slab; using the thinnest slab "
                            "(over budget)")
