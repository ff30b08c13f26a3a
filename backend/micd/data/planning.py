"""Planning the training patch size from the data and the memory available, as nnU-Net plans it.

The patch starts from the median preprocessed shape rounded up to the network's divisor (16): large enough to see a
whole typical case, not much larger. It is capped at the spec's 64 x 128 x 128 when the memory is unknown; when it is
known, the patch shrinks until the estimated training memory fits, or grows past the cap towards the median shape
while it still fits. The memory estimate is deliberately rough (activations of the VNet layers autograd keeps) and
errs high; the training loop still handles a real out-of-memory error by retrying smaller.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np

# VNet layout (micd/nets/vnet.py): convolutions per encoder stage at levels 0..4 and per decoder stage at levels 0..3.
_ENC_CONVS = (1, 2, 3, 3, 3)
_DEC_CONVS = (1, 2, 3, 3)
_STUDENT_PASSES = 4  # 2 students x 2 passes (labeled + unlabeled / masked) with activations kept for backward
_TEACHER_PASSES = 2  # 2 EMA teachers, no gradient: only their outputs and decoder features are kept
_SAFETY = 1.25  # autograd gradient buffers, cuDNN workspaces, allocator fragmentation


def vnet_parameters(filters: int, in_channels: int = 1, n_classes: int = 2) -> int:
    """Approximate parameter count of the VNet student (3x3x3 convs, 2x2x2 down/up convs, 1x1x1 head)."""
    f = filters
    n = 27 * in_channels * f
    for level, convs in enumerate(_ENC_CONVS):
        c = f * 2 ** level
        n += convs * 27 * c * c - (27 * c * c if level == 0 else 0)
    for level, convs in enumerate(_DEC_CONVS):
        c = f * 2 ** level
        n += convs * 27 * c * c
    n += sum(2 * 8 * (f * 2 ** k) * (f * 2 ** (k + 1)) for k in range(4))  # down- and up-convolutions
    return n + f * n_classes


def _saved_values_per_voxel(filters: int, n_classes: int) -> float:
    """Activation values one student keeps for backward, per input voxel (each conv: its output and BN/ReLU output)."""
    total = 1.0 + filters + 2 * n_classes  # input, dropout on the last features, logits and softmax
    for level in range(5):
        c = filters * 2 ** level
        per_level = 2 * _ENC_CONVS[level]
        if level > 0:
            per_level += 2  # downsampling conv into this level
        if level < 4:
            per_level += 2 * _DEC_CONVS[level] + 2 + 1  # decoder convs, upsampling conv, skip addition
        else:
            per_level += 1  # bottleneck dropout
        total += c * per_level / 8 ** level
    return total


def estimate_training_bytes(patch: Sequence[int], filters: int, batch: int, n_classes: int,
                            bytes_per_value: int = 4) -> int:
    """Rough peak memory of one training step: 2 students x 2 passes with gradients, 2 teachers, losses, weights.

    `batch` is the number of patches per forward pass (labeled + unlabeled); each student runs twice (e.g. on the
    images and on their masked versions). `bytes_per_value` is 4 for float32, about 2 under mixed precision.
    """
    voxels = float(np.prod([int(p) for p in patch]))
    student = _saved_values_per_voxel(filters, n_classes)
    decoder_features = filters * (1 + 2 / 8 + 4 / 64 + 8 / 512)
    teacher = decoder_features + 3 * filters + 2 * n_classes  # kept outputs + transient largest layer
    losses = 8 * n_classes  # probabilities, pseudo-labels, masks and weights of the loss terms
    activations = batch * voxels * (_STUDENT_PASSES * student + _TEACHER_PASSES * teacher + losses) * bytes_per_value
    weights = vnet_parameters(filters, n_classes=n_classes) * 4 * (2 * 3 + 2)  # students: w, grad, momentum; teachers
    return int(_SAFETY * activations + weights)


def median_shape(shapes: Sequence[Sequence[int]]) -> Tuple[int, int, int]:
    """Median (z, y, x) shape of prepared volumes (e.g. `[c.shape for c in prepared_cases]`)."""
    med = np.median(np.array([list(s) for s in shapes], float), axis=0)
    return tuple(int(round(v)) for v in med)  # type: ignore[return-value]


def _fmt(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


def plan_patch_size(median_shape_zyx: Sequence[int], available_bytes: Optional[int], filters: int, batch: int,
                    divisor=16, max_patch: Sequence[int] = (64, 128, 128), n_classes: int = 3,
                    bytes_per_value: int = 4, memory_fraction: float = 0.8) -> Tuple[Tuple[int, int, int], str]:
    """Choose the patch (D, H, W) and say why in one sentence (for the `start` event).

    Each axis: the median preprocessed size rounded up to a multiple of `divisor` (at least `divisor`). Without a
    memory figure it is capped at `max_patch`; with one, it shrinks (largest axis first) until the estimate fits
    `memory_fraction` of `available_bytes`, or grows beyond `max_patch` towards the median shape while it fits.
    `divisor` is one number or one per axis (z, y, x), e.g. (4, 16, 16) for a network that keeps thick slices.
    """
    d = [int(divisor)] * 3 if isinstance(divisor, (int, np.integer)) else [int(v) for v in divisor]
    target = [max(k, int(math.ceil(m / k)) * k) for m, k in zip(median_shape_zyx, d)]
    patch = [min(t, (m // k) * k or k) for t, m, k in zip(target, max_patch, d)]
    multiple = d[0] if len(set(d)) == 1 else _fmt(d)
    why = f"median preprocessed shape {_fmt(median_shape_zyx)} rounded up to a multiple of {multiple}"
    if any(t > m for t, m in zip(target, max_patch)):
        why += f", capped at {_fmt(max_patch)}"
    if available_bytes is None:
        est = estimate_training_bytes(patch, filters, batch, n_classes, bytes_per_value)
        note = f"patch {_fmt(patch)} (z, y, x): {why}; memory unknown, estimated need {est / 2 ** 30:.2f} GiB " \
               f"for batch {batch}"
        return tuple(patch), note  # type: ignore[return-value]
    budget = memory_fraction * available_bytes
    fits = lambda p: estimate_training_bytes(p, filters, batch, n_classes, bytes_per_value) <= budget  # noqa: E731
    shrunk = grown = False
    while not fits(patch) and any(p > k for p, k in zip(patch, d)):
        axis = max((a for a in range(3) if patch[a] > d[a]), key=lambda a: patch[a])
        patch[axis] -= d[axis]
        shrunk = True
    if not shrunk:
        while True:
            room = [a for a in range(3) if patch[a] < target[a]]
            trial = None
            for a in sorted(room, key=lambda a: patch[a] / target[a]):
                candidate = list(patch)
                candidate[a] += d[a]
                if fits(candidate):
                    trial = candidate
                    break
            if trial is None:
                break
            patch, grown = trial, True
    est = estimate_training_bytes(patch, filters, batch, n_classes, bytes_per_value)
    if shrunk:
        why += f"; reduced to fit {memory_fraction:.0%} of {available_bytes / 2 ** 30:.1f} GiB"
    elif grown:
        why = (f"median preprocessed shape {_fmt(median_shape_zyx)} rounded up to a multiple of {multiple}; grown "
               f"beyond {_fmt(max_patch)} because memory allows")
    if not fits(patch):
        why += " (still above the memory budget at the smallest patch)"
    note = (f"patch {_fmt(patch)} (z, y, x): {why}; estimated need {est / 2 ** 30:.2f} GiB for batch {batch} of "
            f"{available_bytes / 2 ** 30:.1f} GiB available")
    return tuple(patch), note  # type: ignore[return-value]


def shrink_for_speed(patch: Sequence[int], speedup: float, floor: Sequence[int], divisor=16
                     ) -> Tuple[int, int, int]:
    """The largest patch with at most 1/`speedup` of `patch`'s voxels, shrinking the largest axis first in steps of
    `divisor` and no axis below `floor` (per axis, a multiple of `divisor`).

    Used with `--time-budget` on a CPU (micd/training/planner.py): the time of a training step grows about linearly
    with the patch's voxels, so a patch whose steps are too slow for enough iterations in the budget is cut to one
    that is about `speedup` times faster, then measured again. Shrinking the largest axis first keeps an anisotropic
    patch (few thick slices, large in-plane) anisotropic: the thin axis is the last to shrink.
    """
    d = [int(divisor)] * 3 if isinstance(divisor, (int, np.integer)) else [int(v) for v in divisor]
    p = [int(v) for v in patch]
    lo = [max(k, int(f) // k * k) for f, k in zip(floor, d)]
    goal = float(np.prod(p)) / max(speedup, 1.0)
    while float(np.prod(p)) > goal:
        room = [a for a in range(3) if p[a] - d[a] >= lo[a]]
        if not room:
            break
        axis = max(room, key=lambda a: (p[a], -a))
        p[axis] -= d[axis]
    return tuple(p)  # type: ignore[return-value]


def structure_extent(labels: Sequence[np.ndarray]) -> Tuple[int, int, int]:
    """Voxels (z, y, x) of the largest foreground bounding box along each axis over the labeled cases: what a patch
    must span to hold the labeled structures (0 for an axis where no case has foreground)."""
    extent = [0, 0, 0]
    for label in labels:
        for axis in range(3):
            others = tuple(a for a in range(3) if a != axis)
            present = np.flatnonzero(np.any(np.asarray(label) > 0, axis=others))
            if present.size:
                extent[axis] = max(extent[axis], int(present[-1] - present[0] + 1))
    return tuple(extent)  # type: ignore[return-value]


ANISOTROPY = 3.0  # slice spacing at least this many times the in-plane spacing: thick slices


def plan_strides(spacing_zyx: Sequence[float], stages: int = 4) -> Optional[list]:
    """Per-stage strides (z, y, x) of the VNet's downsamplings for data of this spacing, as nnU-Net pools: an axis is
    downsampled in a stage only while its (current) spacing is at most twice the finest current spacing. None for
    data that is not thick-sliced (largest spacing below ANISOTROPY x the smallest): every stage then strides 2 along
    every axis, the network the spec uses.

    10 mm slices at 1.5 mm in plane give [[1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2]]: the slice axis is kept until
    the in-plane resolution is comparable, and its divisor is 4 instead of 16.
    """
    sp = [float(v) for v in spacing_zyx]
    if max(sp) < ANISOTROPY * min(sp):
        return None
    out = []
    for _ in range(stages):
        finest = min(sp)
        stride = [2 if v <= 2.0 * finest else 1 for v in sp]
        out.append(stride)
        sp = [v * k for v, k in zip(sp, stride)]
    return out


def thick_slice_note(spacing_zyx: Sequence[float], strides: list) -> str:
    """What the `start` event says about a network planned by `plan_strides` for thick slices."""
    kept = [a for a in range(3) if strides[0][a] == 1]
    names = "/".join("zyx"[a] for a in kept)
    return (f"thick slices (spacing {' x '.join(f'{v:g}' for v in spacing_zyx)} mm, z y x): the network does not "
            f"downsample {names} while its spacing is over twice the finest (strides per stage {strides}), so patch "
            f"sizes there are multiples of {'/'.join(str(int(np.prod([s[a] for s in strides]))) for a in kept)}")
