"""Loss pieces shared by the methods: class-weighted Dice + CE (Eq. 6), weighted CE on hard pseudo-labels (Eq. 3/5),
and distances between decoder features (Eq. 4)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss


def weighted_ce(logits: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Cross-entropy of logits (N, C, ...) against integer targets (N, ...), with optional per-class weights.

    Like torch's weighted CE, the mean is normalised by the summed weights of the targets, as DHC's CE does.
    """
    return F.cross_entropy(logits.float(), target.long(), weight=None if weight is None else weight.float())


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Batch soft Dice over the foreground classes (DHC: batch_dice=True, do_bg=False, smooth=1), class-weighted.

    MONAI's DiceLoss does the work; `weight` has one entry per class including background, which is dropped here.
    """
    fg_weight = None if weight is None else weight[1:].float()
    loss = DiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=True, smooth_nr=1.0,
                    smooth_dr=1.0, reduction="none", weight=None)
    per_class = loss(logits.float(), target.unsqueeze(1).long()).reshape(-1)  # (C-1,) with batch=True
    if fg_weight is None:
        return per_class.mean()
    return (per_class * fg_weight).sum() / fg_weight.sum().clamp_min(1e-8)


def dice_ce(logits: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """L_s = L_ce + L_dice, both weighted by the same class weights (DHC's DC_and_CE_loss with w_dc = w_ce = w)."""
    return weighted_ce(logits, target, weight) + soft_dice_loss(logits, target, weight)


def feature_distance(fa: torch.Tensor, fb: torch.Tensor, kind: str = "kl_sym") -> torch.Tensor:
    """Distance between two decoder feature maps of equal shape (N, C, ...), averaged over voxels.

    kl_sym / kl: KL divergence between channel-wise softmax distributions (symmetric or KL(a||b)); mse: on raw values.
    """
    if kind == "mse":
        return F.mse_loss(fa.float(), fb.float())
    la = F.log_softmax(fa.float(), dim=1)
    lb = F.log_softmax(fb.float(), dim=1)
    kl_ab = (la.exp() * (la - lb)).sum(1).mean()
    if kind == "kl":
        return kl_ab
    if kind == "kl_sym":
        kl_ba = (lb.exp() * (lb - la)).sum(1).mean()
        return 0.5 * (kl_ab + kl_ba)
    raise ValueError(f"unknown feature distance {kind!r}")


def softmax_mse(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """Mean-teacher consistency: MSE between the two softmax maps."""
    return F.mse_loss(torch.softmax(logits_a.float(), 1), torch.softmax(logits_b.float(), 1))
