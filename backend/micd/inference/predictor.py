"""One image in, its label map (and uncertainty map) out, on the input's exact grid; no files involved.

The input may be oblique, anisotropic and offset: it is brought onto the network grid (canonical orientation,
training spacing, training normalisation), segmented there, and the labels are resampled back with nearest neighbour
in physical space onto the input's size, spacing, origin and direction. The uncertainty map goes back with linear
interpolation. Labels are computed on the network grid, so no full-resolution per-class volume ever exists.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import SimpleITK as sitk
import torch

from micd.data.preprocess import preprocess_image, restore_geometry
from micd.inference.branches import branch_names
from micd.inference.ensemble import EnsembleProbabilities
from micd.inference.memory import cpu_budget, gpu_budget, plan_accumulation
from micd.inference.progress import CountingPredictor, count_windows
from micd.inference.sliding import segment_grid
from micd.model_package import ModelPackage
from micd.training.devices import resolve_device


@dataclass
class PredictOptions:
    branches: str = "students"
    tta: bool = False
    device: str = "auto"
    uncertainty: bool = False
    overlap: float = 0.25  # as in validation during training, so predict reproduces the validation Dice
    sw_batch_size: Optional[int] = None  # default: 2 on CPU, 4 on GPU
    max_buffer_gib: Optional[float] = None  # CPU budget for the probability buffer (default: see memory.py)


@dataclass
class Prediction:
    labels: sitk.Image
    uncertainty: Optional[sitk.Image]
    info: dict = field(default_factory=dict)


def predict_image(image: sitk.Image, package: ModelPackage, options: Optional[PredictOptions] = None,
                  log: Optional[Callable[[dict], None]] = None,
                  progress: Optional[Callable[[dict], None]] = None) -> Prediction:
    """Segment `image` with `package`; `log` receives the chosen plan as a dict before the windows run, `progress`
    {windows_done, windows_total, fraction, elapsed_s, eta_s} while they run (micd/inference/progress.py)."""
    opts = options or PredictOptions()
    t0 = time.time()
    device = resolve_device(opts.device)
    names = branch_names(package, opts.branches)
    nets = [package.networks[n].to(device).eval() for n in names]
    n_classes = package.network_config.out_channels
    roi = package.patch_size
    sw_batch = opts.sw_batch_size or (4 if device.type == "cuda" else 2)

    array, ref = preprocess_image(image, package.plan)
    grid = (ref.GetOrigin(), ref.GetSpacing(), ref.GetDirection())
    del ref  # keep the geometry only; the resampled float image is no longer needed
    gpu_bytes = (gpu_budget(device, roi, n_classes, package.network_config.filters, sw_batch)
                 if device.type == "cuda" else None)
    plan = plan_accumulation(array.shape, n_classes, roi, device, cpu_budget(opts.max_buffer_gib), gpu_bytes,
                              opts.overlap)
    amp = torch.float16 if device.type == "cuda" else None
    windows = count_windows(array.shape, roi, plan, opts.overlap)
    info = {"branches": names, "tta": bool(opts.tta), "device": str(device), "grid_shape": list(array.shape),
            "input_size": list(image.GetSize()), "roi": roi, "overlap": opts.overlap, "sw_batch_size": sw_batch,
            "classes": n_classes, "plan": plan.to_dict(), "windows": windows,
            "precision": "fp16" if amp else "fp32",
            "precision_reason": "fp16 autocast: the default on CUDA" if amp else
            "fp32: micd predict runs the networks in full precision on the CPU"}
    if log:
        log(info)
    predictor = EnsembleProbabilities(nets, opts.tta, plan.torch_dtype, amp)
    counter = CountingPredictor(predictor, windows, progress) if progress else None
    labels, entropy = segment_grid(array, counter or predictor, roi, plan, n_classes, opts.uncertainty, opts.overlap,
                                   sw_batch)
    if counter:
        counter.finish()
    del array

    out = restore_geometry(_on_grid(labels, grid), image)
    unc = None
    if entropy is not None:
        unc = sitk.Resample(_on_grid(entropy, grid), image, sitk.Transform(), sitk.sitkLinear, 0.0,
                            sitk.sitkFloat32)
    info["seconds"] = round(time.time() - t0, 2)
    info["labels_found"] = [int(v) for v in np.flatnonzero(np.bincount(labels.ravel())) if v]
    return Prediction(out, unc, info)


def _on_grid(arr: np.ndarray, grid) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetOrigin(grid[0])
    img.SetSpacing(grid[1])
    img.SetDirection(grid[2])
    return img
