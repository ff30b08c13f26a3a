"""Turning blended class probabilities into a label map and an uncertainty map, one class at a time.

Uncertainty is the **normalised predictive entropy of the ensemble mean**: H(p) / ln(C), with p the Gaussian-blended
mean softmax of the voting networks (and flips, with TTA) and C the number of classes including background. It is 0
where the ensemble is certain and 1 where all classes are equally likely. Entropy of the mean covers both the
networks' own doubt and their disagreement, and needs only the one blended buffer we already have.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
import torch

from micd.data.label_channels import dtype_for


def label_dtype(n_classes: int) -> np.dtype:
    return dtype_for(n_classes - 1)


def reduce_probabilities(probs: torch.Tensor, want_entropy: bool) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """probs (C, ...) -> (argmax labels as uint8/uint16 numpy, normalised entropy float32 numpy or None)."""
    n = probs.shape[0]
    labels = torch.argmax(probs, 0).to(torch.uint8 if n <= 256 else torch.int32).cpu().numpy()
    labels = labels.astype(label_dtype(n), copy=False)
    if not want_entropy:
        return labels, None
    ent = torch.zeros(probs.shape[1:], dtype=torch.float32, device=probs.device)
    for c in range(n):  # per class: temporaries stay one channel big
        p = probs[c].float()
        ent.sub_(p * torch.log(p.clamp_min(1e-12)))
    ent.div_(math.log(n) if n > 1 else 1.0).clamp_(0.0, 1.0)
    return labels, ent.cpu().numpy()
