"""Supervised baseline: the same two students trained on labeled patches only (Dice + CE), ensembled at test time.

By default the losses are unweighted. `class_weights` (dhc, dhc-bgfloor) gives the students DHC's weights as DHC and
MICD use them, W_diff for student A and W_dist for student B, with DistDW counting student B's predictions on the
labeled patches (the only ones this method sees) instead of its pseudo-labels of unlabeled ones: the control that
says how much of a semi-supervised method's gain is its class weighting rather than its unlabeled data.
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch

from micd.methods.base import Method
from micd.methods.class_weights import BranchWeights


class Supervised(Method):
    name = "supervised"
    uses_unlabeled = False
    branch_inits = ("kaiming", "xavier")
    own_defaults = {"class_weights": "none"}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.weighting = BranchWeights(self.num_classes, self.option("class_weights"), self.cfg.diffdw_accumulate,
                                       self.cfg.distdw_momentum)

    @property
    def weighted(self) -> bool:
        return self.weighting.mode != "none"

    def prepare(self, wrap, reduce=None, shard=(0, 1)):
        super().prepare(wrap, reduce, shard)
        self.weighting.set_reduce(self.reduce)

    def init_from_label_counts(self, counts: np.ndarray) -> None:
        self.weighting.distdw.init_from_counts(counts)

    def step(self, x_l, y_l, x_u: Optional[torch.Tensor], beta: float, generator) -> Dict[str, torch.Tensor]:
        za, _ = self.runners["student_a"](x_l)
        zb, _ = self.runners["student_b"](x_l)
        w_a, w_b = self.weighting.update(za, y_l, zb)
        sup_a, sup_b = self.dice_ce(za, y_l, w_a), self.dice_ce(zb, y_l, w_b)
        return {"sup_a": sup_a, "sup_b": sup_b, "total": sup_a + sup_b}

    def extra_state(self) -> dict:
        return {**super().extra_state(), **(self.weighting.state_dict() if self.weighted else {})}

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        if self.weighted and "diffdw" in state:
            self.weighting.load_state_dict(state)

    @property
    def current_weights(self) -> Optional[Dict[str, list]]:
        return self.weighting.current if self.weighted else None
