"""Re-estimating the BatchNorm running statistics of the trained networks before they are validated or exported
("precise BN": Wu & Johnson, Rethinking "Batch" in BatchNorm, 2021).

The semi-supervised peers normalise every training batch over labeled (foreground-oversampled) and unlabeled patches
together, so their running statistics describe that mix, not a test image. Measured post hoc at 2 labeled cases
(benchmarks/bn_posthoc.py, validation Dice): DHC's last weights score 0.29 with the statistics they were trained
with, 0.31 re-estimated from batches composed as in training (so the running averages do not lag), and 0.59
re-estimated from uniform patches of the unlabeled images; the supervised baseline, trained on labeled patches only,
loses with them (0.66 -> 0.53). Hence an option, off by default: `--bn-recalibrate N` re-estimates the statistics
as the plain average over N batches of uniform unlabeled patches, dropout off, no gradients; the weights do not
change.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import numpy as np
import torch
from torch import nn

from micd.data.sampling import PatchSampler


@torch.no_grad()
def recalibrate(networks: Iterable[nn.Module], batches: int, draw: Callable[[], np.ndarray],
                device: torch.device) -> int:
    """Replace the running statistics of every BatchNorm layer of `networks` by their average over `batches`
    batches from `draw()` (an (n, 1, D, H, W) float32 array each); returns the number of layers re-estimated."""
    nets = [n for n in networks if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in n.modules())]
    if not nets or batches <= 0:
        return 0
    layers, modes = [], []
    for net in nets:
        modes.append(net.training)
        net.train()
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                layers.append((m, m.momentum))
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the batches below
    try:
        for _ in range(batches):
            x = torch.from_numpy(draw()).to(device)
            for net in nets:
                net(x, turnoff_drop=True)
    finally:
        for m, momentum in layers:
            m.momentum = momentum
        for net, mode in zip(nets, modes):
            net.train(mode)
    return len(layers)


def training_like_batches(labeled: list, unlabeled: Optional[list], patch, n_labeled: int, n_unlabeled: int,
                          foreground_fraction: float, rng: np.random.Generator) -> Callable[[], np.ndarray]:
    """Batches composed as the training batches were: `n_labeled` labeled patches (foreground-oversampled as in
    training) and, for methods that use them, `n_unlabeled` unlabeled ones."""
    lab = PatchSampler(labeled, tuple(patch), rng, foreground_fraction=foreground_fraction)
    unl = PatchSampler(unlabeled, tuple(patch), rng) if unlabeled else None

    def draw() -> np.ndarray:
        x = lab.sample(n_labeled)[0]
        return np.concatenate([x, unl.sample(n_unlabeled)[0]]) if unl is not None else x
    return draw


def uniform_batches(cases: list, patch, batch_size: int, rng: np.random.Generator) -> Callable[[], np.ndarray]:
    """Batches of uniformly drawn patches of `cases`, as images (no foreground oversampling)."""
    sampler = PatchSampler([c.without_label() for c in cases], tuple(patch), rng, foreground_fraction=0.0)
    return lambda: sampler.sample(batch_size)[0]
