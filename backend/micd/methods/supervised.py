"""Supervised baseline: the same two students trained on labeled patches only (Dice + CE), ensembled at test time.

By default the students take MICD's class weights (`class_weights` dhc-bgfloor: DHC's W_diff for student A and W_dist
for student B, background floored), with DistDW counting student B's predictions on the labeled patches (the only
ones this method sees) instead of its pseudo-labels of unlabeled ones. Measured at 2 and 5 labeled hippocampus cases
(benchmarks/results/avx2-fp32/), unweighted supervised training often learns one of the two labels only for hundreds
of iterations, or to the end of the run; the weighted form picks better weights on validation at both counts. `none`
is plain supervised training (unweighted Dice + CE), the baseline of the semi-supervised literature and of the
benchmark's supervised row.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch

from micd.methods.base import ClassWeightedMethod


class Supervised(ClassWeightedMethod):
    name = "supervised"
    uses_unlabeled = False
    branch_inits = ("kaiming", "xavier")
    own_defaults = {"class_weights": "dhc-bgfloor"}

    @property
    def has_supervised_step(self) -> bool:
        return False  # its step is already one: a warm-up changes nothing

    def step(self, x_l, y_l, x_u: Optional[torch.Tensor], beta: float, generator) -> Dict[str, torch.Tensor]:
        sup_a, sup_b = self.supervised_losses(x_l, y_l)
        return {"sup_a": sup_a, "sup_b": sup_b, "total": sup_a + sup_b}
