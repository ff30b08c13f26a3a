"""Supervised baseline: the same two students trained on labeled patches only (Dice + CE), ensembled at test time."""

from __future__ import annotations

from typing import Dict, Optional

import torch

from micd.methods.base import Method


class Supervised(Method):
    name = "supervised"
    uses_unlabeled = False
    branch_inits = ("kaiming", "xavier")

    def step(self, x_l, y_l, x_u: Optional[torch.Tensor], beta: float, generator) -> Dict[str, torch.Tensor]:
        za, _ = self.runners["student_a"](x_l)
        zb, _ = self.runners["student_b"](x_l)
        sup_a, sup_b = self.dice_ce(za, y_l), self.dice_ce(zb, y_l)
        return {"sup_a": sup_a, "sup_b": sup_b, "total": sup_a + sup_b}
