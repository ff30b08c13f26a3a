"""Which network output channel stands for which label value.

Channel 0 is background; channel k is the k-th foreground label value in ascending order. Label values need not be
contiguous: the shared abdominal CT names 41 structures with values up to 117, and one output per value (118
channels) would make every probability buffer, softmax and window nearly three times larger than the 42 that carry
information. The training cache stores labels as channel indices; a model folder records the map (`channels` in
model.json) and prediction turns channel indices back into the dataset's label values. When the values are already
1..n the map is the identity and nothing changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np


def dtype_for(max_value: int) -> np.dtype:
    """The smallest unsigned type for label maps whose largest value (or channel index) is `max_value`."""
    return np.dtype(np.uint8) if max_value <= 255 else np.dtype(np.uint16)


@dataclass(frozen=True)
class LabelChannels:
    """`values[k]` is the label value of output channel k; `values[0]` is 0 (background)."""

    values: Tuple[int, ...]

    def __post_init__(self) -> None:
        v = self.values
        if not v or v[0] != 0 or any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError(f"channel values must start with 0 (background) and increase: {list(v)}")

    @classmethod
    def for_labels(cls, labels: Iterable[int]) -> "LabelChannels":
        """Background, then the foreground values in ascending order."""
        return cls((0,) + tuple(sorted(int(v) for v in labels if int(v) != 0)))

    @classmethod
    def from_model(cls, channels: Optional[Sequence[int]], out_channels: int) -> "LabelChannels":
        """The map a model folder records; models written before it existed used channel k for value k."""
        return cls(tuple(int(v) for v in channels)) if channels is not None else cls(tuple(range(out_channels)))

    @property
    def count(self) -> int:
        return len(self.values)

    @property
    def identity(self) -> bool:
        return self.values == tuple(range(len(self.values)))

    def names(self, labels: Mapping[int, str]) -> Dict[int, str]:
        """Label names keyed by channel, from names keyed by value (background left out)."""
        return {k: labels[v] for k, v in enumerate(self.values) if k}

    def to_channels(self, label_map: np.ndarray) -> np.ndarray:
        """Label values -> channel indices. A value outside the map is an error (the dataset check refuses it
        earlier; here it would silently become background)."""
        if self.identity:
            return label_map
        arr = np.asarray(label_map)
        lut = np.zeros(max(int(arr.max(initial=0)), self.values[-1]) + 1, dtype_for(self.count - 1))
        known = np.zeros(lut.size, bool)
        lut[list(self.values)] = np.arange(self.count)
        known[list(self.values)] = True
        present = np.flatnonzero(np.bincount(arr.ravel(), minlength=1))
        unknown = [int(v) for v in present if not known[v]]
        if unknown:
            raise ValueError(f"label values {unknown} are not among the labels {list(self.values[1:])}")
        return lut[arr]

    def to_values(self, channel_map: np.ndarray) -> np.ndarray:
        """Channel indices (argmax of the network) -> label values."""
        if self.identity:
            return channel_map
        return np.asarray(self.values, dtype_for(self.values[-1]))[channel_map]
