"""Validation during training: sliding-window inference of the student ensemble on preprocessed validation cases,
Dice per foreground class averaged over cases (a class absent from both prediction and reference in a case is left
out of that case's average)."""

from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch import nn


class EnsembleLogits(nn.Module):
    """Mean of the networks' softmax probabilities: what `micd predict --amp off` blends (inference/ensemble.py, which
    sits above training and so is not imported here)."""

    def __init__(self, nets: Sequence[nn.Module]):
        super().__init__()
        self.nets = nn.ModuleList(nets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.softmax(n(x, turnoff_drop=True)[0].float(), 1) for n in self.nets]).mean(0)


def dice_per_class(pred: np.ndarray, ref: np.ndarray, labels: Sequence[int]) -> Dict[int, float]:
    out = {}
    for c in labels:
        p, r = pred == c, ref == c
        denom = int(p.sum()) + int(r.sum())
        if denom == 0:
            continue
        out[c] = 2.0 * int(np.logical_and(p, r).sum()) / denom
    return out


@torch.no_grad()
def validate(nets: Sequence[nn.Module], cases: List, labels: Dict[int, str], patch: Sequence[int],
             device: torch.device) -> Dict[str, object]:
    """Return {"dice": {name: value}, "mean_dice": value} over `cases` (PreparedCase with image and label).

    `labels` names the foreground **output channels** ({channel: name}, `LabelChannels.names`), not label values:
    the cached label maps hold channel indices, as the networks' argmax does."""
    was_training = [n.training for n in nets]
    for n in nets:
        n.eval()
    model = EnsembleLogits(nets)
    per_class: Dict[int, List[float]] = {c: [] for c in labels}
    try:
        for case in cases:
            x = torch.from_numpy(np.array(case.image, np.float32))[None, None].to(device)
            # Windows past the border are padded with the image minimum, as training patches are (case.pad_value).
            prob = sliding_window_inference(x, tuple(patch), 4, model, overlap=0.25, mode="gaussian",
                                            cval=float(case.pad_value))
            pred = prob.argmax(1)[0].cpu().numpy()
            for c, d in dice_per_class(pred, np.asarray(case.label), list(labels)).items():
                per_class[c].append(d)
    finally:
        for n, t in zip(nets, was_training):
            n.train(t)
    dice = {labels[c]: float(np.mean(v)) for c, v in per_class.items() if v}
    mean = float(np.mean(list(dice.values()))) if dice else 0.0
    return {"dice": dice, "mean_dice": mean}
