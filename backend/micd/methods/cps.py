"""Cross Pseudo Supervision (Chen et al. 2021): two differently initialised students (Kaiming / Xavier) supervise
each other with hard argmax pseudo-labels on the whole batch; plain Dice + CE on labeled patches."""

from __future__ import annotations

from typing import Dict

import torch

from micd.methods.base import Method


class CPS(Method):
    name = "cps"
    branch_inits = ("kaiming", "xavier")
    # CPS's code: argmax of the same training forward; labeled and unlabeled patches in one BatchNorm batch
    own_defaults = {"pseudo_labels": "train_pass", "bn_passes": "joint"}

    def step(self, x_l, y_l, x_u, beta, generator) -> Dict[str, torch.Tensor]:
        x = torch.cat([x_l, x_u])
        n_l = x_l.shape[0]
        za, _ = self.labeled_first_forward("student_a", x, n_l)
        zb, _ = self.labeled_first_forward("student_b", x, n_l)
        pa, pb = self.pseudo_logits("student_a", x, za), self.pseudo_logits("student_b", x, zb)
        sup = self.dice_ce(za[:n_l], y_l) + self.dice_ce(zb[:n_l], y_l)
        cps = self.ce(za, self.pseudo_labels(pb)) + self.ce(zb, self.pseudo_labels(pa))
        return {"sup": sup, "cps": cps, "total": sup + beta * cps}
