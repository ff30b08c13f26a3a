"""Re-estimating the BatchNorm running statistics of the trained networks before they are validated or exported
("precise BN": Wu & Johnson, Rethinking "Batch" in BatchNorm, 2021).

Training normalises each batch with its own statistics; the running averages kept for test time are a momentum
average over batches that mixed labeled (foreground-oversampled) and unlabeled patches, plus the extra no-grad passes
some methods make, under weights that kept changing. With 2 labeled cases this gap was measured to be most of the
late collapse of the hard-pseudo-label peers (DHC's last weights: 0.29 validation Dice with the stored statistics,
0.54 with statistics re-estimated from unlabeled patches). Here the statistics are the plain average over `batches`
batches of uniformly drawn patches of the unlabeled images (test-like: no oversampling, no masks, no noise), dropout
off, no gradients; the weights do not change.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import nn

from micd.data.sampling import PatchSampler


@torch.no_grad()
def recalibrate(networks: Iterable[nn.Module], cases: list, patch, batches: int, batch_size: int,
                rng: np.random.Generator, device: torch.device) -> int:
    """Replace the running statistics of every BatchNorm layer of `networks` by their average over `batches`
    batches of `batch_size` uniform patches of `cases` (images only); returns the number of layers re-estimated."""
    nets = [n for n in networks if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in n.modules())]
    if not nets or batches <= 0:
        return 0
    images = [c.without_label() for c in cases]
    sampler = PatchSampler(images, tuple(patch), rng, foreground_fraction=0.0)
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
            x, _ = sampler.sample(batch_size)
            x = torch.from_numpy(x).to(device)
            for net in nets:
                net(x, turnoff_drop=True)
    finally:
        for m, momentum in layers:
            m.momentum = momentum
        for net, mode in zip(nets, modes):
            net.train(mode)
    return len(layers)
