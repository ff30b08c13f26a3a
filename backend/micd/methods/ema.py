"""Eq. 1: exponential-moving-average teachers, θ' ← α θ' + (1 − α) θ, with the usual warm-up α_t = min(1 − 1/(t+1), α).

Floating-point buffers (BatchNorm running statistics) are averaged the same way; integer buffers are copied.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_teacher(student: nn.Module) -> nn.Module:
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


def ema_alpha(step: int, alpha: float) -> float:
    """The decay used at optimizer step `step` (0-based): small early so the teacher first tracks the student."""
    return min(1.0 - 1.0 / (step + 1), alpha)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, alpha: float) -> None:
    t_params = [p for p in teacher.parameters()]
    s_params = [p.detach() for p in student.parameters()]
    torch._foreach_mul_(t_params, alpha)
    torch._foreach_add_(t_params, s_params, alpha=1.0 - alpha)
    for tb, sb in zip(teacher.buffers(), student.buffers()):
        if tb.dtype.is_floating_point:
            tb.mul_(alpha).add_(sb.detach(), alpha=1.0 - alpha)
        else:
            tb.copy_(sb)
