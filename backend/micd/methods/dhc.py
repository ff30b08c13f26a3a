"""DHC (Wang & Li, MICCAI 2023): heterogeneous co-training where branch A's supervised and cross-pseudo losses are
weighted by DiffDW and branch B's by DistDW. MICD extends this method."""

from __future__ import annotations

from typing import Dict

import torch

from micd.methods.base import ClassWeightedMethod


class DHC(ClassWeightedMethod):
    name = "dhc"
    branch_inits = ("kaiming", "kaiming")  # DHC: the branches differ by their class weighting, not their init
    own_defaults = {"class_weights": "dhc", "pseudo_labels": "train_pass", "bn_passes": "joint"}  # DHC's code

    def class_weights(self, za_l, y_l, zb_u):
        """(W_diff for branch A, W_dist for branch B): DistDW from branch B's pseudo-labels of the unlabeled patches."""
        return self.weighting.update(za_l, y_l, zb_u)

    def step(self, x_l, y_l, x_u, beta, generator) -> Dict[str, torch.Tensor]:
        x = torch.cat([x_l, x_u])
        n_l = x_l.shape[0]
        za, _ = self.labeled_first_forward("student_a", x, n_l)
        zb, _ = self.labeled_first_forward("student_b", x, n_l)
        pa, pb = self.pseudo_logits("student_a", x, za), self.pseudo_logits("student_b", x, zb)
        w_diff, w_dist = self.class_weights(za[:n_l], y_l, pb[n_l:])
        sup = self.dice_ce(za[:n_l], y_l, w_diff) + self.dice_ce(zb[:n_l], y_l, w_dist)
        cps = self.ce(za, self.pseudo_labels(pb), w_diff) + self.ce(zb, self.pseudo_labels(pa), w_dist)
        return {"sup": sup, "cps": cps, "total": sup + beta * cps}
