"""Random training patches from prepared (memory-mapped) cases, with foreground oversampling and flips.

Only the patch is read from the memory-mapped arrays, so sampling costs a few small reads, not a volume load.
Every random choice is drawn from the one numpy Generator given, in a fixed order, so a seed makes the patch stream
repeatable and saving/restoring `rng.bit_generator.state` resumes it exactly. Cropping and padding are plain numpy:
MONAI's SpatialPad/RandSpatialCrop would first load whole volumes into tensors, which defeats the memory map.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

from micd.data.cache import PreparedCase


def crop_bounds(center_or_none: Optional[np.ndarray], shape: Sequence[int], patch: Sequence[int],
                rng: np.random.Generator) -> np.ndarray:
    """Start corner (z, y, x) of a patch; may be negative on axes where the volume is smaller than the patch.

    Centred on the given voxel (clamped inside the volume, so that voxel is always in the patch), or uniformly
    random. Axes smaller than the patch start at -(padding before), so the volume sits centred in the padded patch.
    """
    shape_a, patch_a = np.asarray(shape), np.asarray(patch)
    room = shape_a - patch_a
    if center_or_none is None:
        start = np.array([rng.integers(0, r + 1) if r > 0 else 0 for r in room])
    else:
        start = np.clip(np.asarray(center_or_none) - patch_a // 2, 0, np.maximum(room, 0))
    return np.where(room < 0, room // 2, start)  # room // 2 == -ceil(deficit / 2)


def extract_patch(volume: np.ndarray, start: np.ndarray, patch: Sequence[int], pad_value: float) -> np.ndarray:
    """Copy volume[start:start+patch] into a new array, filling the parts outside the volume with pad_value."""
    out = np.full(tuple(patch), pad_value, dtype=volume.dtype)
    src, dst = [], []
    for s, p, n in zip(start, patch, volume.shape):
        lo, hi = max(s, 0), min(s + p, n)
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[tuple(dst)] = volume[tuple(src)]
    return out


TRAIN_FLIP_AXES: Tuple[int, ...] = (1, 2)  # (z, y, x) axes mirrored in training (DHC: y and x); TTA uses the same


class PatchSampler:
    """Draws batches of patches: x float32 (n, 1, D, H, W) and y int64 (n, D, H, W), or y None for unlabeled cases.

    With probability `foreground_fraction` (labeled cases with foreground only) the patch is centred on a random
    foreground voxel of a random present class (nnU-Net's oversampling); otherwise it is a uniform random crop.
    Each axis in `flip_axes` (of z, y, x; DHC flips y and x) is flipped with probability 0.5, image and label alike.
    """

    def __init__(self, cases: List[PreparedCase], patch_size: Tuple[int, int, int], rng: np.random.Generator,
                 foreground_fraction: float = 0.33, flip_axes: Sequence[int] = TRAIN_FLIP_AXES, augment=None):
        if not cases:
            raise ValueError("PatchSampler needs at least one case")
        labeled = {c.label is not None for c in cases}
        if len(labeled) > 1:
            raise ValueError("PatchSampler cases must be all labeled or all unlabeled; use one sampler for each")
        if len(patch_size) != 3 or min(patch_size) < 1:
            raise ValueError(f"patch_size must be three positive sizes (D, H, W), got {patch_size}")
        if not 0.0 <= foreground_fraction <= 1.0:
            raise ValueError(f"foreground_fraction must be in [0, 1], got {foreground_fraction}")
        if any(a not in (0, 1, 2) for a in flip_axes):
            raise ValueError(f"flip_axes are axes of (z, y, x): 0, 1 or 2; got {flip_axes}")
        self.cases = cases
        self.patch_size = tuple(int(p) for p in patch_size)
        self.rng = rng
        self.foreground_fraction = float(foreground_fraction)
        self.flip_axes = tuple(flip_axes)
        self.augment = augment  # after the flips: (image, label or None) -> the same, e.g. augment.make_augmentation
        self.labeled = labeled.pop()

    def _center(self, case: PreparedCase) -> Optional[np.ndarray]:
        """A random foreground voxel of a random present class, or None for a uniform crop."""
        if not self.labeled or self.rng.random() >= self.foreground_fraction:
            return None
        classes = case.classes
        if not classes:
            return None
        coords = case.fg_coords[classes[int(self.rng.integers(len(classes)))]]
        return coords[int(self.rng.integers(len(coords)))]

    def sample_one(self, case: PreparedCase) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """One (image patch, label patch or None) from the given case."""
        start = crop_bounds(self._center(case), case.shape, self.patch_size, self.rng)
        x = extract_patch(case.image, start, self.patch_size, case.pad_value)
        y = extract_patch(case.label, start, self.patch_size, 0) if case.label is not None else None
        for axis in self.flip_axes:
            if self.rng.random() < 0.5:
                x = np.flip(x, axis)
                y = np.flip(y, axis) if y is not None else None
        if self.augment is not None:
            x, y = self.augment(np.ascontiguousarray(x), None if y is None else np.ascontiguousarray(y))
        return x, y

    def sample(self, n: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """A batch of n patches from cases chosen uniformly at random (with replacement)."""
        xs, ys = [], []
        for _ in range(n):
            x, y = self.sample_one(self.cases[int(self.rng.integers(len(self.cases)))])
            xs.append(x)
            ys.append(y)
        x_batch = np.stack(xs)[:, None].astype(np.float32, copy=False)
        y_batch = np.stack(ys).astype(np.int64) if self.labeled else None
        return x_batch, y_batch
