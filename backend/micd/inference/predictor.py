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
from micd.inference.memory import (AccumulationPlan, cpu_budget, default_sw_batches, fixed_bytes, gpu_budget,
                                   plan_accumulation)
from micd.inference.progress import CountingPredictor, count_windows, stoppable
from micd.inference.sliding import segment_grid
from micd.model_package import ModelPackage
from micd.training.devices import amp_dtype, precision_reason, resolve_device


@dataclass
class PredictOptions:
    branches: str = "students"
    tta: bool = False
    device: str = "auto"
    uncertainty: bool = False
    overlap: float = 0.25  # as in validation during training, so predict reproduces the validation Dice
    sw_batch_size: Optional[int] = None  # default: 2 on CPU, 4 on GPU
    max_buffer_gib: Optional[float] = None  # CPU budget for the probability buffer (default: see memory.py)
    amp: str = "auto"  # as `micd train --amp`: auto = fp16 on CUDA, bf16 on CPUs with AMX/AVX512-BF16, else fp32


@dataclass
class Prediction:
    labels: sitk.Image
    uncertainty: Optional[sitk.Image]
    info: dict = field(default_factory=dict)


@dataclass
class GridRun:
    """An image brought onto the network grid with everything its windows need: the networks on their device, the
    memory plan for `channels` blended channels, the window batch and count, and the plan as the `plan` event."""

    image: sitk.Image
    array: np.ndarray
    grid: tuple  # origin, spacing, direction of the network grid
    nets: list
    plan: AccumulationPlan
    amp: Optional[torch.dtype]
    sw_batch: int
    windows: int
    info: dict
    t0: float

    def segment(self, predictor: Callable, channels: int, opts: PredictOptions, want_entropy: bool = False,
                reduce: Optional[Callable] = None, progress: Optional[Callable[[dict], None]] = None,
                should_stop: Optional[Callable[[], bool]] = None):
        """Run the windows with `predictor` (x -> `channels` blended probabilities); (labels, entropy) on the grid.
        `should_stop()` is asked before each batch of windows (PredictionCancelled when it says yes)."""
        if should_stop is not None:
            predictor = stoppable(predictor, should_stop)
        counter = CountingPredictor(predictor, self.windows, progress) if progress else None
        out = segment_grid(self.array, counter or predictor, self.info["roi"], self.plan, channels, want_entropy,
                           opts.overlap, self.sw_batch, reduce=reduce)
        if counter:
            counter.finish()
        self.array = None  # the grid's intensities are no longer needed
        return out

    def on_input_grid(self, labels: np.ndarray) -> sitk.Image:
        """Labels on the network grid -> on the input's exact grid (nearest neighbour)."""
        return restore_geometry(_on_grid(labels, self.grid), self.image)


def prepare_grid(image: sitk.Image, package: ModelPackage, opts: PredictOptions, names, channels: int,
                 log: Optional[Callable[[dict], None]] = None) -> GridRun:
    """Preprocess `image` as in training and plan its windows for `channels` blended channels (C for the ensemble,
    2C for `micd suggest`'s two students side by side); `log` gets the plan before anything heavy runs."""
    t0 = time.time()
    device = resolve_device(opts.device)
    nets = [package.networks[n].to(device).eval() for n in names]
    roi = package.patch_size
    array, ref = preprocess_image(image, package.plan)
    grid = (ref.GetOrigin(), ref.GetSpacing(), ref.GetDirection())
    del ref  # keep the geometry only; the resampled image is no longer needed
    filters = package.network_config.filters
    # The window batch: as given; on a GPU 4; on the CPU 2 when the plan still fits the memory target, else 1.
    for sw_batch in ([opts.sw_batch_size] if opts.sw_batch_size else default_sw_batches(device)):
        gpu_bytes = gpu_budget(device, roi, channels, filters, sw_batch) if device.type == "cuda" else None
        cpu_bytes = cpu_budget(opts.max_buffer_gib, fixed_bytes(image, array, roi, channels, sw_batch, filters))
        plan = plan_accumulation(array.shape, channels, roi, device, cpu_bytes, gpu_bytes, opts.overlap)
        if device.type == "cuda" or plan.buffer_bytes <= plan.budget_bytes:
            break
    amp = amp_dtype(opts.amp, device)
    precision, why = precision_reason(opts.amp, device)
    windows = count_windows(array.shape, roi, plan, opts.overlap)
    info = {"branches": list(names), "tta": bool(opts.tta), "device": str(device), "grid_shape": list(array.shape),
            "input_size": list(image.GetSize()), "roi": roi, "overlap": opts.overlap, "sw_batch_size": sw_batch,
            "classes": package.network_config.out_channels, "plan": plan.to_dict(), "windows": windows,
            "precision": precision, "precision_reason": why}
    if log:
        log(info)
    return GridRun(image, array, grid, nets, plan, amp, sw_batch, windows, info, t0)


def predict_image(image: sitk.Image, package: ModelPackage, options: Optional[PredictOptions] = None,
                  log: Optional[Callable[[dict], None]] = None,
                  progress: Optional[Callable[[dict], None]] = None,
                  should_stop: Optional[Callable[[], bool]] = None) -> Prediction:
    """Segment `image` with `package`; `log` receives the chosen plan as a dict before the windows run, `progress`
    {windows_done, windows_total, fraction, elapsed_s, eta_s} while they run (micd/inference/progress.py);
    `should_stop()`, asked before each batch of windows, ends it with PredictionCancelled."""
    opts = options or PredictOptions()
    n_classes = package.network_config.out_channels
    run = prepare_grid(image, package, opts, branch_names(package, opts.branches), n_classes, log)
    predictor = EnsembleProbabilities(run.nets, opts.tta, run.plan.torch_dtype, run.amp)
    labels, entropy = run.segment(predictor, n_classes, opts, opts.uncertainty, progress=progress,
                                  should_stop=should_stop)
    labels = package.channels.to_values(labels)  # argmax channel -> the dataset's label value
    out = run.on_input_grid(labels)
    unc = None
    if entropy is not None:
        unc = sitk.Resample(_on_grid(entropy, run.grid), image, sitk.Transform(), sitk.sitkLinear, 0.0,
                            sitk.sitkFloat32)
    info = dict(run.info)
    info["seconds"] = round(time.time() - run.t0, 2)
    info["labels_found"] = [int(v) for v in np.flatnonzero(np.bincount(labels.ravel())) if v]
    return Prediction(out, unc, info)


def _on_grid(arr: np.ndarray, grid) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetOrigin(grid[0])
    img.SetSpacing(grid[1])
    img.SetDirection(grid[2])
    return img
