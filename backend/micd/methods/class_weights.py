"""DHC's debiased class weights: DistDW (distribution-aware, branch B) and DiffDW (difficulty-aware, branch A), and
`BranchWeights`, the pair that a two-branch method (DHC, MICD, supervised with weights) hands to its losses.

Both are re-estimated every iteration from the current batch and smoothed with an exponential moving average. In
distributed training the per-batch statistics (class histograms, Dice intersections/sums) are summed across ranks
through the injected `reduce` function before the weights are derived, so every rank uses the same weights.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import numpy as np
import torch

Reduce = Callable[[torch.Tensor], torch.Tensor]


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def ema(current: torch.Tensor, past: torch.Tensor, momentum: float) -> torch.Tensor:
    return momentum * past + (1.0 - momentum) * current


def distribution_weights(counts: torch.Tensor) -> torch.Tensor:
    """w_c = C · log(n_max / n_c) / max_c' log(n_max / n_c'): rarer classes weigh more, the most frequent gets 0."""
    counts = counts.double()
    p_log = torch.log((counts.max() + 1e-8) / (counts + 1e-8))
    w = p_log / p_log.max().clamp_min(1e-12)
    return (w * counts.numel()).float()


def floor_background(weights: torch.Tensor) -> torch.Tensor:
    """Raise the background weight (class 0) to the mean foreground weight.

    With weighted CE the decision between background and class c moves to p_c > 1 / (1 + w_c / w_0): DistDW's
    w_0 = 0 (and DiffDW's w_0 ≈ 0.4 against ≈ 3) makes calling background foreground free, so under cross
    supervision every foreground pseudo-label is learnt and no background one. With 1-3 foreground classes that is
    the whole task. Flooring w_0 keeps DHC's reweighting among the foreground classes and removes the bias.
    """
    if weights.numel() < 2:
        return weights
    out = weights.clone()
    out[0] = torch.maximum(out[0], out[1:].mean())
    return out


class DistDW:
    """Distribution-aware debiased weighting: weights from class frequencies of branch B's pseudo-labels."""

    def __init__(self, num_classes: int, momentum: float = 0.99, reduce: Reduce = _identity):
        self.num_classes = num_classes
        self.momentum = momentum
        self.reduce = reduce
        self.weights = torch.full((num_classes,), float(num_classes))

    def init_from_counts(self, counts: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Start from the class voxel counts of the labeled ground truth."""
        self.weights = distribution_weights(torch.as_tensor(np.asarray(counts), dtype=torch.float64))
        return self.weights

    def update(self, logits_unlabeled: torch.Tensor) -> torch.Tensor:
        pred = logits_unlabeled.detach().argmax(1)
        counts = torch.bincount(pred.reshape(-1).cpu(), minlength=self.num_classes).double()
        counts = self.reduce(counts)
        self.weights = ema(distribution_weights(counts), self.weights, self.momentum)
        return self.weights

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {"weights": self.weights.clone()}

    def load_state_dict(self, s: Dict[str, torch.Tensor]) -> None:
        self.weights = s["weights"].clone().float()


class DiffDW:
    """Difficulty-aware debiased weighting from the learning pace (Dice gains/losses) of branch A on labeled data."""

    def __init__(self, num_classes: int, accumulate_iters: int = 50, reduce: Reduce = _identity):
        self.num_classes = num_classes
        self.momentum = (accumulate_iters - 1) / accumulate_iters
        self.reduce = reduce
        self.last_dice = torch.full((num_classes,), 1e-8)
        self.learn = torch.zeros(num_classes)
        self.unlearn = torch.zeros(num_classes)
        self.dice_weight = torch.ones(num_classes)
        self.weights = torch.full((num_classes,), float(num_classes))

    def batch_dice(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Hard batch Dice per class, background included; classes absent in both count as 1."""
        pred = logits.detach().argmax(1).reshape(-1).cpu()
        tgt = target.reshape(-1).cpu().long()
        inter = torch.bincount(tgt[pred == tgt], minlength=self.num_classes).double()
        total = (torch.bincount(pred, minlength=self.num_classes) + torch.bincount(tgt, minlength=self.num_classes))
        stats = self.reduce(torch.stack([inter, total.double()]))
        return ((2 * stats[0] + 1e-8) / (stats[1] + 1e-8)).float()

    def update(self, logits_labeled: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        d = self.batch_dice(logits_labeled, target)
        delta = d - self.last_dice
        log_ratio = torch.log(d / self.last_dice)
        cur_learn = torch.where(delta > 0, delta, torch.zeros_like(delta)) * log_ratio
        cur_unlearn = torch.where(delta <= 0, delta, torch.zeros_like(delta)) * log_ratio
        self.last_dice = d
        self.learn = ema(cur_learn, self.learn, self.momentum)
        self.unlearn = ema(cur_unlearn, self.unlearn, self.momentum)
        diff = ((self.unlearn + 1e-8) / (self.learn + 1e-8)).pow(1 / 5)
        self.dice_weight = ema(1.0 - d, self.dice_weight, self.momentum)
        w = diff * self.dice_weight
        self.weights = (w / w.max().clamp_min(1e-12) * self.num_classes).float()
        return self.weights

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {k: getattr(self, k).clone() for k in ("last_dice", "learn", "unlearn", "dice_weight", "weights")}

    def load_state_dict(self, s: Dict[str, torch.Tensor]) -> None:
        for k, v in s.items():
            setattr(self, k, v.clone().float())


CLASS_WEIGHTS = ("dhc", "dhc-bgfloor", "none")


class BranchWeights:
    """The class weights of a two-branch method: W_diff (DiffDW) for branch A, W_dist (DistDW) for branch B.

    mode `dhc` hands DHC's weights to the losses, `dhc-bgfloor` the same with the background weight floored (see
    `floor_background`), `none` no weights (and no state updates). The DiffDW/DistDW states evolve as DHC's in both
    weighted modes, so switching between them in a resumed run changes only what the losses receive.
    """

    def __init__(self, num_classes: int, mode: str, diffdw_accumulate: int = 50, distdw_momentum: float = 0.99):
        if mode not in CLASS_WEIGHTS:
            raise ValueError(f"class_weights must be one of {CLASS_WEIGHTS}, got {mode!r}")
        self.mode = mode
        self.diffdw = DiffDW(num_classes, diffdw_accumulate)
        self.distdw = DistDW(num_classes, distdw_momentum)

    def set_reduce(self, reduce: Reduce) -> None:
        self.diffdw.reduce = self.distdw.reduce = reduce

    def update(self, logits_a_labeled: torch.Tensor, target: torch.Tensor,
               logits_b_distribution: torch.Tensor) -> "tuple[Optional[torch.Tensor], Optional[torch.Tensor]]":
        """Update from branch A's labeled logits and target (DiffDW) and from the logits whose argmax gives branch
        B's class distribution (DistDW); return (W_diff, W_dist) on the logits' device, or (None, None)."""
        if self.mode == "none":
            return None, None
        w_diff = self.diffdw.update(logits_a_labeled, target).to(logits_a_labeled.device)
        w_dist = self.distdw.update(logits_b_distribution).to(logits_a_labeled.device)
        if self.mode == "dhc-bgfloor":
            w_diff, w_dist = floor_background(w_diff), floor_background(w_dist)
        return w_diff, w_dist

    def state_dict(self) -> Dict[str, Dict[str, torch.Tensor]]:
        return {"diffdw": self.diffdw.state_dict(), "distdw": self.distdw.state_dict()}

    def load_state_dict(self, s: Dict[str, Dict[str, torch.Tensor]]) -> None:
        self.diffdw.load_state_dict(s["diffdw"])
        self.distdw.load_state_dict(s["distdw"])

    @property
    def current(self) -> Dict[str, list]:
        return {"w_diff": self.diffdw.weights.tolist(), "w_dist": self.distdw.weights.tolist()}
