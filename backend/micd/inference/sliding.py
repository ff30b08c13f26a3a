"""Gaussian-blended sliding-window inference (MONAI) over a preprocessed grid, slab by slab as the plan says.

Each slab (with its context margin) goes through one `sliding_window_inference` call with ROI = the training patch;
its kept part is reduced to labels (and entropy) at once, so one slab's probabilities exist at a time.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from micd.inference.memory import AccumulationPlan
from micd.inference.reduce import label_dtype, reduce_probabilities


@torch.no_grad()
def segment_grid(array: np.ndarray, predictor: Callable[[torch.Tensor], torch.Tensor], roi: Sequence[int],
                 plan: AccumulationPlan, n_classes: int, want_entropy: bool = False, overlap: float = 0.25,
                 sw_batch_size: int = 2, reduce: Optional[Callable] = None) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """array (z, y, x) float32 on the network grid -> (labels, entropy or None), same shape.

    `reduce(probs (C, ...)) -> (labels, entropy or None)` replaces `reduce_probabilities` for each slab's kept part
    (`micd suggest` reduces two students' stacked probabilities to labels and disagreement statistics)."""
    shape = array.shape
    # Windows past the border are padded with the image minimum, as training patches are (cache.pad_value).
    pad_value = float(array.min()) if array.size else 0.0
    labels = np.zeros(shape, label_dtype(n_classes))
    entropy = np.zeros(shape, np.float32) if want_entropy else None
    ax, keep, margin = plan.slab_axis, plan.slab_length, plan.margin
    for lo in range(0, shape[ax], keep):
        hi = min(shape[ax], lo + keep)
        a, b = max(0, lo - margin), min(shape[ax], hi + margin)
        src = [slice(None)] * 3
        src[ax] = slice(a, b)
        x = torch.from_numpy(np.ascontiguousarray(array[tuple(src)])).to(plan.torch_dtype)[None, None]
        probs = sliding_window_inference(x, tuple(int(r) for r in roi), sw_batch_size, predictor, overlap=overlap,
                                         mode="gaussian", sw_device=plan.compute_device, device=plan.buffer_device,
                                         cval=pad_value)
        del x
        probs = torch.as_tensor(probs)[0]
        inner = [slice(None)] * 4
        inner[ax + 1] = slice(lo - a, hi - a)
        kept = probs[tuple(inner)]
        lab, ent = reduce(kept) if reduce is not None else reduce_probabilities(kept, want_entropy)
        del probs, kept
        dst = [slice(None)] * 3
        dst[ax] = slice(lo, hi)
        labels[tuple(dst)] = lab
        if entropy is not None:
            entropy[tuple(dst)] = ent
    return labels, entropy
