"""Supervised baseline: the same two students trained on labeled patches only (Dice + CE), ensembled at test time.

By default the losses are unweighted. `class_weights` (dhc, dhc-bgfloor) gives the students DHC's weights as DHC and
MICD use them, W_diff for student A and W_dist for student B, with DistDW counting student B's predictions on the
labeled patches (the only ones this method sees) instead of its pseudo-labels of unlabeled ones: the control that
says how much of a semi-supervised method's gain is its class weighting rather than its unlabeled data.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch

from micd.methods.base import ClassWeightedMethod


class Supervised(ClassWeightedMethod):
    name = "supervised"
    uses_unlabeled = False
    branch_inits = ("kaiming", "xavier")
    own_defaults = {"class_weights": "none"}

    def step(self, x_l, y_l, x_u: Optional[torch.Tensor], beta: float, generator) -> Dict[str, torch.Tensor]:
        za, _ = self.runners["student_a"](x_l)
        zb, _ = self.runners["student_b"](x_l)
        w_a, w_b = self.weighting.update(za, y_l, zb)
        sup_a, sup_b = self.dice_ce(za, y_l, w_a), self.dice_ce(zb, y_l, w_b)
        return {"sup_a": sup_a, "sup_b": sup_b, "total": sup_a + sup_b}
