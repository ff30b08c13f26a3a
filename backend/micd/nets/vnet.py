"""The VNet student of DHC/MICD, changed to also return its four decoder stage outputs (for CFC, Eq. 4).

Layout follows DHC's `models/vnet.py`: five encoder stages with strided-conv downsampling, four decoder stages with
transposed-conv upsampling and additive skips, BatchNorm + ReLU, Dropout3d on the bottleneck and on the last decoder
features. MONAI's VNet has fixed widths and does not expose decoder features, hence this small module.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class NetworkConfig:
    """Everything needed to rebuild a student; stored verbatim in `model.json`."""

    in_channels: int = 1
    out_channels: int = 2
    filters: int = 16
    normalization: str = "batchnorm"  # batchnorm | instancenorm | none
    dropout: float = 0.5
    architecture: str = "vnet"
    # Per downsampling stage (4), the stride along (z, y, x); None: 2 along every axis. Thick-slice data keeps a
    # stride of 1 along the slice axis in the first stages (micd.data.planning.plan_strides), as nnU-Net pools.
    strides: Optional[List[List[int]]] = None

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["strides"] is None:
            del d["strides"]  # model folders and checkpoints of isotropic networks stay as they were
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "NetworkConfig":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)

    def stage_strides(self) -> List[Tuple[int, int, int]]:
        return [tuple(int(v) for v in s) for s in self.strides] if self.strides else [(2, 2, 2)] * 4

    @property
    def divisors(self) -> Tuple[int, int, int]:
        """Every spatial size fed to the network must be a multiple of these along (z, y, x)."""
        out = [1, 1, 1]
        for s in self.stage_strides():
            out = [o * int(v) for o, v in zip(out, s)]
        return tuple(out)  # type: ignore[return-value]

    @property
    def divisor(self) -> int:
        """The largest of `divisors` (16 for four 2x downsamplings along every axis)."""
        return max(self.divisors)


class SplitBatchNorm3d(nn.BatchNorm3d):
    """BatchNorm3d that, while `split` is set, normalises the first `split` samples and the rest of the batch with
    their own batch statistics and updates the running statistics from the first group only.

    MICD feeds clean and masked inputs through a student in one forward (one DDP forward per backward); mixing
    them in one BatchNorm batch would blend masked statistics into the normalisation and into the running
    statistics used at test time and by the teachers. Same parameters and buffers as BatchNorm3d.

    Under autocast it normalises in float32: bf16 BatchNorm backward on the CPU gave non-finite weight gradients in
    about one step of three at the bottleneck (2x3x2 voxels at a 32x48x32 patch; measured on an AMD EPYC with
    AVX512-BF16), as the fp32 list of CUDA autocast does for batch_norm.
    """

    split: Optional[int] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 and torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return self._normalise(x.float())
        return self._normalise(x)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        n = self.split
        if n is None or not self.training or not 0 < n < x.shape[0]:
            return super().forward(x)
        tail = F.batch_norm(x[n:], None, None, self.weight, self.bias, True, 0.0, self.eps)
        return torch.cat([super().forward(x[:n]), tail])


@contextmanager
def split_normalization(module: nn.Module, n_first: int) -> Iterator[None]:
    """Within the block, every SplitBatchNorm3d of `module` normalises samples [:n_first] and [n_first:] apart."""
    layers = [m for m in module.modules() if isinstance(m, SplitBatchNorm3d)]
    for m in layers:
        m.split = n_first
    try:
        yield
    finally:
        for m in layers:
            m.split = None


def _norm(kind: str, ch: int) -> nn.Module:
    if kind == "batchnorm":
        return SplitBatchNorm3d(ch)
    if kind == "instancenorm":
        return nn.InstanceNorm3d(ch, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown normalization {kind!r}")


class _ConvStage(nn.Sequential):
    def __init__(self, n_convs: int, cin: int, cout: int, norm: str):
        layers: List[nn.Module] = []
        for i in range(n_convs):
            layers += [nn.Conv3d(cin if i == 0 else cout, cout, 3, padding=1), _norm(norm, cout), nn.ReLU(inplace=True)]
        super().__init__(*layers)


class _Down(nn.Sequential):
    def __init__(self, cin: int, cout: int, norm: str, stride=(2, 2, 2)):
        super().__init__(nn.Conv3d(cin, cout, tuple(stride), stride=tuple(stride)), _norm(norm, cout),
                         nn.ReLU(inplace=True))


class _Up(nn.Sequential):
    def __init__(self, cin: int, cout: int, norm: str, stride=(2, 2, 2)):
        super().__init__(nn.ConvTranspose3d(cin, cout, tuple(stride), stride=tuple(stride)), _norm(norm, cout),
                         nn.ReLU(inplace=True))


SMALL_VOXELS = 64  # stages whose input has at most this many voxels run in float32 under autocast


def _stage(stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run a stage; under autocast, in float32 when its input is tiny (the bottleneck, and deeper stages of small
    patches).

    On a CPU with AVX512-BF16 (AMD EPYC, torch 2.13 / oneDNN) the bf16 backward-weight kernels of 3x3x3
    convolutions on a few voxels (2x3x2 at the bottleneck of a 32x48x32 patch) returned NaN or garbage in blocks
    of the gradient in a third of the steps, nondeterministically. Those stages hold a 1/4096th of the voxels, so
    float32 there costs almost nothing.
    """
    if x[0, 0].numel() > SMALL_VOXELS or not torch.is_autocast_enabled(x.device.type):
        return stage(x)
    with torch.autocast(x.device.type, enabled=False):
        return stage(x.float())


class VNet(nn.Module):
    """VNet returning `(logits, [d1, d2, d3, d4])`; d1 is the coarsest decoder stage, d4 the full-resolution one."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.config = config
        f, n = config.filters, config.normalization
        s1, s2, s3, s4 = config.stage_strides()
        self.enc1 = _ConvStage(1, config.in_channels, f, n)
        self.down1 = _Down(f, 2 * f, n, s1)
        self.enc2 = _ConvStage(2, 2 * f, 2 * f, n)
        self.down2 = _Down(2 * f, 4 * f, n, s2)
        self.enc3 = _ConvStage(3, 4 * f, 4 * f, n)
        self.down3 = _Down(4 * f, 8 * f, n, s3)
        self.enc4 = _ConvStage(3, 8 * f, 8 * f, n)
        self.down4 = _Down(8 * f, 16 * f, n, s4)
        self.enc5 = _ConvStage(3, 16 * f, 16 * f, n)
        self.up5 = _Up(16 * f, 8 * f, n, s4)
        self.dec6 = _ConvStage(3, 8 * f, 8 * f, n)
        self.up6 = _Up(8 * f, 4 * f, n, s3)
        self.dec7 = _ConvStage(3, 4 * f, 4 * f, n)
        self.up7 = _Up(4 * f, 2 * f, n, s2)
        self.dec8 = _ConvStage(2, 2 * f, 2 * f, n)
        self.up8 = _Up(2 * f, f, n, s1)
        self.dec9 = _ConvStage(1, f, f, n)
        self.dropout = nn.Dropout3d(config.dropout) if config.dropout > 0 else nn.Identity()
        self.head = nn.Conv3d(f, config.out_channels, 1)

    def forward(self, x: torch.Tensor, turnoff_drop: bool = False) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        drop = (lambda t: t) if turnoff_drop else self.dropout
        x1 = self.enc1(x)
        x2 = self.enc2(self.down1(x1))
        x3 = _stage(self.enc3, _stage(self.down2, x2))
        x4 = _stage(self.enc4, _stage(self.down3, x3))
        x5 = drop(_stage(self.enc5, _stage(self.down4, x4)))
        d1 = _stage(self.dec6, _stage(self.up5, x5) + x4)
        d2 = _stage(self.dec7, _stage(self.up6, d1) + x3)
        d3 = self.dec8(self.up7(d2) + x2)
        d4 = self.dec9(self.up8(d3) + x1)
        return self.head(drop(d4)), [d1, d2, d3, d4]


class LogitsOnly(nn.Module):
    """Wraps a student so that it returns logits only (what MONAI's inferers expect)."""

    def __init__(self, net: VNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, turnoff_drop=True)[0]


def init_weights(net: nn.Module, scheme: str) -> nn.Module:
    """Initialise conv weights with `kaiming` or `xavier` normal (CPS/CLD make the branches differ this way)."""
    for m in net.modules():
        if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
            if scheme == "kaiming":
                nn.init.kaiming_normal_(m.weight)
            elif scheme == "xavier":
                nn.init.xavier_normal_(m.weight)
            else:
                raise ValueError(f"unknown init {scheme!r}")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm3d, nn.InstanceNorm3d)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return net


def build_network(config: NetworkConfig, init: str = "kaiming") -> VNet:
    return init_weights(VNet(config), init)
