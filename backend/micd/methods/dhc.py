"""DHC (Wang & Li, MICCAI 2023): heterogeneous co-training where branch A's supervised and cross-pseudo losses are
weighted by DiffDW and branch B's by DistDW. MICD extends this method."""

from __future__ import annotations

from typing import Dict

import numpy as np
import torch

from micd.methods.base import Method
from micd.methods.class_weights import DiffDW, DistDW, floor_background

CLASS_WEIGHTS = ("dhc", "dhc-bgfloor", "none")


class DHC(Method):
    name = "dhc"
    branch_inits = ("kaiming", "kaiming")  # DHC: the branches differ by their class weighting, not their init
    own_defaults = {"class_weights": "dhc", "pseudo_labels": "train_pass", "bn_passes": "joint"}  # DHC's code

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.diffdw = DiffDW(self.num_classes, self.cfg.diffdw_accumulate)
        self.distdw = DistDW(self.num_classes, self.cfg.distdw_momentum)
        if self.option("class_weights") not in CLASS_WEIGHTS:
            raise ValueError(f"class_weights must be one of {CLASS_WEIGHTS}")

    def prepare(self, wrap, reduce=None, shard=(0, 1)):
        super().prepare(wrap, reduce, shard)
        self.diffdw.reduce = self.distdw.reduce = self.reduce

    def init_from_label_counts(self, counts: np.ndarray) -> None:
        self.distdw.init_from_counts(counts)

    def class_weights(self, za_l, y_l, zb_u):
        """Update and return (W_diff for branch A, W_dist for branch B), on the logits' device.

        The DiffDW/DistDW states always evolve as DHC's; dhc-bgfloor only changes the weights handed to the losses.
        """
        mode = self.option("class_weights")
        if mode == "none":
            return None, None
        w_diff = self.diffdw.update(za_l, y_l).to(za_l.device)
        w_dist = self.distdw.update(zb_u).to(za_l.device)
        if mode == "dhc-bgfloor":
            w_diff, w_dist = floor_background(w_diff), floor_background(w_dist)
        return w_diff, w_dist

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

    def extra_state(self) -> dict:
        return {**super().extra_state(), "diffdw": self.diffdw.state_dict(), "distdw": self.distdw.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        self.diffdw.load_state_dict(state["diffdw"])
        self.distdw.load_state_dict(state["distdw"])

    @property
    def current_weights(self) -> Dict[str, list]:
        return {"w_diff": self.diffdw.weights.tolist(), "w_dist": self.distdw.weights.tolist()}
