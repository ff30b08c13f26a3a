"""Loss pieces shared by the methods: class-weighted Dice + CE (Eq. 6), weighted CE on hard pseudo-labels (Eq. 3/5),
and distances between decoder features (Eq. 4)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


class GlobalBatch:
    """How batch-level sums become sums over the global batch in distributed training.

    With DDP, every rank's loss is averaged. Losses that are ratios of batch sums (weighted CE, batch soft Dice)
    are therefore computed from sums over all ranks: `sum_grad` all-reduces with autograd (so the gradient reaches
    every rank's share), `sum_const` all-reduces a constant. A single process uses the identity.
    """

    def __init__(self, world: int = 1):
        self.world = world

    def sum_grad(self, t: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return t
        from torch.distributed.nn.functional import all_reduce
        return all_reduce(t)

    def sum_const(self, t: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return t
        import torch.distributed as dist
        t = t.detach().clone()
        dist.all_reduce(t)
        return t


LOCAL = GlobalBatch(1)
IGNORE = -100  # target value of voxels left out of a CE (torch's default ignore_index)


def hard_pseudo_labels(logits: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """Argmax pseudo-labels (N, ...) of detached logits; voxels whose softmax maximum is below `threshold` become
    IGNORE (FixMatch-style confidence threshold; 0 keeps every voxel, as DHC)."""
    logits = logits.detach()
    if threshold <= 0:
        return logits.argmax(1)
    conf, lab = torch.softmax(logits.float(), 1).max(1)
    return torch.where(conf >= threshold, lab, torch.full_like(lab, IGNORE))


def weighted_ce(logits: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None,
                batch: GlobalBatch = LOCAL) -> torch.Tensor:
    """Cross-entropy of logits (N, C, ...) against integer targets (N, ...), with optional per-class weights.

    Like torch's weighted CE (and DHC's), the sum is normalised by the summed weights of the targets. Voxels whose
    target is IGNORE (pseudo-labels below the confidence threshold) add nothing to either sum.
    """
    w = None if weight is None else weight.float()
    target = target.long()
    if batch.world == 1:
        if bool((target == IGNORE).all()):
            return logits.float().sum() * 0.0  # every voxel ignored: torch would return nan
        return F.cross_entropy(logits.float(), target, weight=w, ignore_index=IGNORE)
    nll = F.cross_entropy(logits.float(), target, reduction="none", ignore_index=IGNORE)
    valid = target != IGNORE
    wy = valid.float() if w is None else w[target.clamp_min(0)] * valid
    # Rank loss W·Σ_local / Σ_global: the ranks' average is then the global weighted mean.
    return batch.world * (wy * nll).sum() / batch.sum_const(wy.sum()).clamp_min(1e-8)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None,
                   batch: GlobalBatch = LOCAL) -> torch.Tensor:
    """Batch soft Dice over the foreground classes (DHC: batch_dice=True, do_bg=False, smooth=1), class-weighted.

    Per class c ≥ 1: 1 − (2·Σ p·g + 1) / (Σ p + Σ g + 1), sums over the (global) batch and all voxels; the same
    value as MONAI's DiceLoss(include_background=False, batch=True, smooth_nr=smooth_dr=1), which the tests check.
    `weight` has one entry per class including background, which is dropped here.
    """
    prob = torch.softmax(logits.float(), 1)
    onehot = F.one_hot(target.long(), prob.shape[1]).movedim(-1, 1).float()
    dims = [0] + list(range(2, prob.ndim))
    inter = batch.sum_grad((prob * onehot).sum(dims))[1:]
    psum = batch.sum_grad(prob.sum(dims))[1:]
    gsum = batch.sum_const(onehot.sum(dims))[1:]
    per_class = 1.0 - (2.0 * inter + 1.0) / (psum + gsum + 1.0)
    if weight is None:
        return per_class.mean()
    # As DHC's SoftDiceLoss: each class term times its weight, then the plain mean (weights are ~C in scale, so
    # the weighted Dice is stronger than the unweighted one; normalising by the weight sum would undo that).
    return (per_class * weight[1:].float()).mean()


def dice_ce(logits: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None,
            batch: GlobalBatch = LOCAL) -> torch.Tensor:
    """L_s = L_ce + L_dice, both weighted by the same class weights (DHC's DC_and_CE_loss with w_dc = w_ce = w)."""
    return weighted_ce(logits, target, weight, batch) + soft_dice_loss(logits, target, weight, batch)


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
