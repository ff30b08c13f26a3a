"""Patch augmentation beyond flips, from MONAI's transforms (`--augment nnunet`), for every method.

nnU-Net owes much of its strength with few labels to its data augmentation; our patches get only flips by default
(`--augment flips`, the peers' and the spec's setting). `nnunet` adds what nnU-Net v2 applies by default, with its
probabilities and ranges: rotation and scaling (image and label alike, the label by nearest neighbour), Gaussian noise,
Gaussian blur, brightness (multiplicative), contrast, simulated low resolution and gamma. nnU-Net v2 leaves elastic
deformation off by default, and so does this.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

AUGMENTATIONS = ("flips", "nnunet")


class NnUNetLikeAugmentation:
    """Applies the `nnunet` transforms to one (image, label) patch pair; randomness from the sampler's generator, so a
    seed reproduces a run."""

    def __init__(self, rng: np.random.Generator):
        from monai.transforms import (Compose, RandAdjustContrastd, RandAffined, RandGaussianNoised,
                                      RandGaussianSmoothd, RandScaleIntensityd, RandSimulateLowResolutiond)

        keys, image = ("image", "label"), {"keys": "image", "allow_missing_keys": True}
        self.transforms = Compose([  # an unlabeled patch has no "label": the spatial transform moves the image alone
            RandAffined(keys=keys, prob=0.2, rotate_range=(np.pi / 6,) * 3, scale_range=(0.3,) * 3,
                        mode=("bilinear", "nearest"), padding_mode="border", allow_missing_keys=True),
            RandGaussianNoised(prob=0.1, std=0.1, **image),
            RandGaussianSmoothd(prob=0.2, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0), **image),
            RandScaleIntensityd(prob=0.15, factors=0.25, **image),
            RandAdjustContrastd(prob=0.3, gamma=(0.7, 1.5), **image),
            RandSimulateLowResolutiond(prob=0.25, zoom_range=(0.5, 1.0), **image),
        ])
        self._rng = rng

    def __call__(self, x: np.ndarray, y: Optional[np.ndarray]) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        data = {"image": x[None].astype(np.float32, copy=False)}
        if y is not None:
            data["label"] = y[None].astype(np.float32)
        self.transforms.set_random_state(seed=int(self._rng.integers(2 ** 31)))
        out = self.transforms(data)
        image = np.asarray(out["image"])[0]
        label = np.rint(np.asarray(out["label"])[0]).astype(y.dtype) if y is not None else None
        return image, label


def make_augmentation(name: str, rng: np.random.Generator):
    """None for `flips` (the sampler flips), else the callable for `name`."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"--augment must be one of {', '.join(AUGMENTATIONS)}, got {name!r}")
    return None if name == "flips" else NnUNetLikeAugmentation(rng)
