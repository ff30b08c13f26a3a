"""Mean Teacher (Tarvainen & Valpola 2017) for each of the two students: supervised Dice + CE plus β · MSE between the
student's softmax on a noised input and its EMA teacher's softmax on the clean input, over labeled and unlabeled."""

from __future__ import annotations

from typing import Dict

import torch
from torch import nn

from micd.methods.base import Method
from micd.methods.ema import ema_update, make_teacher
from micd.methods.losses import softmax_mse


class MeanTeacher(Method):
    name = "mean-teacher"
    branch_inits = ("kaiming", "xavier")
    own_defaults = {"bn_passes": "joint"}  # labeled and unlabeled patches in one BatchNorm batch, as its code

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.teachers = nn.ModuleDict({k.replace("student", "teacher"): make_teacher(v)
                                       for k, v in self.students.items()})

    def step(self, x_l, y_l, x_u, beta, generator) -> Dict[str, torch.Tensor]:
        x = torch.cat([x_l, x_u])
        n_l = x_l.shape[0]
        draw = lambda n: torch.randn((n, *x.shape[1:]), generator=generator)
        noise = torch.cat([self.global_draw(draw, n_l), self.global_draw(draw, x.shape[0] - n_l)])
        noise = (noise * self.cfg.mt_noise).clamp(-0.2, 0.2).to(x.device)
        out: Dict[str, torch.Tensor] = {}
        total = 0.0
        for s in ("a", "b"):
            z, _ = self.labeled_first_forward(f"student_{s}", x + noise, n_l)
            with torch.no_grad():
                t, _ = self.teachers[f"teacher_{s}"](x, turnoff_drop=True)
            out[f"sup_{s}"] = self.dice_ce(z[:n_l], y_l)
            out[f"consistency_{s}"] = softmax_mse(z, t)
            total = total + out[f"sup_{s}"] + beta * out[f"consistency_{s}"]
        out["total"] = total
        return out

    def after_step(self) -> None:
        a = self.ema_decay()
        for s in ("a", "b"):
            ema_update(self.teachers[f"teacher_{s}"], self.students[f"student_{s}"], a)
        super().after_step()

    def export_networks(self):
        return {**self.students, **self.teachers}
