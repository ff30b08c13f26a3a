"""Eq. 2: the block mask M(r, s) and the masked input. Blocks are dropped independently with probability r."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch

Block = Union[int, Sequence[int]]


def block_sides(block: Block, spatial: Sequence[int]) -> Tuple[int, int, int]:
    """Block side per axis: `block` voxels on every axis, or with 0 an eighth of each patch axis (MIC's 64-px
    blocks on 512-px crops), at least 2 voxels, so blocks stay smaller than the structures on any patch shape."""
    if isinstance(block, int):
        if block > 0:
            return (block,) * 3
        return tuple(max(2, s // 8) for s in spatial)  # type: ignore[return-value]
    return tuple(int(b) for b in block)  # type: ignore[return-value]


def block_mask(shape: Sequence[int], ratio: float, block: Block, generator: Optional[torch.Generator] = None,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """A {0,1} float mask of `shape` (N, 1, D, H, W): drawn on a coarse grid of blocks, then nearest-upsampled.

    A block is kept where v > r with v ~ U(0, 1) (MIC's rule), so a fraction r of the blocks is dropped on average.
    """
    n, c, *spatial = shape
    sides = block_sides(block, spatial)
    grid = [-(-s // b) for s, b in zip(spatial, sides)]
    v = torch.rand((n, 1, *grid), generator=generator)
    keep = (v > ratio).float()
    for axis, b in zip(range(2, 5), sides):
        keep = keep.repeat_interleave(b, dim=axis)
    keep = keep[:, :, : spatial[0], : spatial[1], : spatial[2]]
    return keep.expand(n, c, *spatial).contiguous().to(device)


def apply_mask(x: torch.Tensor, mask: torch.Tensor, fill: str = "min") -> torch.Tensor:
    """x where the mask keeps, the fill value where it drops.

    zero: 0, Eq. 2 read literally; after an MR z-score that is mean tissue intensity, not "nothing".
    min: each sample's minimum, which is its background and the value patches and sliding windows are padded with.
    """
    if fill == "zero":
        return x * mask
    if fill == "min":
        lo = x.amin(dim=tuple(range(1, x.ndim)), keepdim=True)
        return torch.where(mask > 0, x, lo.expand_as(x))
    raise ValueError(f"mask_fill must be 'min' or 'zero', got {fill!r}")
