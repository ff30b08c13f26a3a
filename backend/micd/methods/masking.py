"""Eq. 2: the block mask M(r, s). Cubic blocks of side s are dropped (set to 0) independently with probability r."""

from __future__ import annotations

from typing import Optional, Sequence

import torch


def block_mask(shape: Sequence[int], ratio: float, block: int, generator: Optional[torch.Generator] = None,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """A {0,1} float mask of `shape` (N, 1, D, H, W): drawn on a coarse (D/s, H/s, W/s) grid, then nearest-upsampled.

    A block is kept where v > r with v ~ U(0, 1) (MIC's rule), so a fraction r of the blocks is dropped on average.
    """
    n, c, *spatial = shape
    grid = [-(-s // block) for s in spatial]
    v = torch.rand((n, 1, *grid), generator=generator)
    keep = (v > ratio).float()
    for axis in range(2, 5):
        keep = keep.repeat_interleave(block, dim=axis)
    keep = keep[:, :, : spatial[0], : spatial[1], : spatial[2]]
    return keep.expand(n, c, *spatial).contiguous().to(device)
