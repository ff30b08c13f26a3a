"""The VNet student of DHC/MICD, changed to also return its four decoder stage outputs (for CFC, Eq. 4).

Layout follows DHC's `models/vnet.py`: five encoder stages with strided-conv downsampling, four decoder stages with
transposed-conv upsampling and additive skips, BatchNorm + ReLU, Dropout3d on the bottleneck and on the last decoder
features. MONAI's VNet has fixed widths and does not expose decoder features, hence this small module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import List, Tuple

import torch
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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "NetworkConfig":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)

    @property
    def divisor(self) -> int:
        """Every spatial size fed to the network must be a multiple of this (four 2x downsamplings)."""
        return 16


def _norm(kind: str, ch: int) -> nn.Module:
    if kind == "batchnorm":
        return nn.BatchNorm3d(ch)
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
    def __init__(self, cin: int, cout: int, norm: str):
        super().__init__(nn.Conv3d(cin, cout, 2, stride=2), _norm(norm, cout), nn.ReLU(inplace=True))


class _Up(nn.Sequential):
    def __init__(self, cin: int, cout: int, norm: str):
        super().__init__(nn.ConvTranspose3d(cin, cout, 2, stride=2), _norm(norm, cout), nn.ReLU(inplace=True))


class VNet(nn.Module):
    """VNet returning `(logits, [d1, d2, d3, d4])`; d1 is the coarsest decoder stage, d4 the full-resolution one."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.config = config
        f, n = config.filters, config.normalization
        self.enc1 = _ConvStage(1, config.in_channels, f, n)
        self.down1 = _Down(f, 2 * f, n)
        self.enc2 = _ConvStage(2, 2 * f, 2 * f, n)
        self.down2 = _Down(2 * f, 4 * f, n)
        self.enc3 = _ConvStage(3, 4 * f, 4 * f, n)
        self.down3 = _Down(4 * f, 8 * f, n)
        self.enc4 = _ConvStage(3, 8 * f, 8 * f, n)
        self.down4 = _Down(8 * f, 16 * f, n)
        self.enc5 = _ConvStage(3, 16 * f, 16 * f, n)
        self.up5 = _Up(16 * f, 8 * f, n)
        self.dec6 = _ConvStage(3, 8 * f, 8 * f, n)
        self.up6 = _Up(8 * f, 4 * f, n)
        self.dec7 = _ConvStage(3, 4 * f, 4 * f, n)
        self.up7 = _Up(4 * f, 2 * f, n)
        self.dec8 = _ConvStage(2, 2 * f, 2 * f, n)
        self.up8 = _Up(2 * f, f, n)
        self.dec9 = _ConvStage(1, f, f, n)
        self.dropout = nn.Dropout3d(config.dropout) if config.dropout > 0 else nn.Identity()
        self.head = nn.Conv3d(f, config.out_channels, 1)

    def forward(self, x: torch.Tensor, turnoff_drop: bool = False) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        drop = (lambda t: t) if turnoff_drop else self.dropout
        x1 = self.enc1(x)
        x2 = self.enc2(self.down1(x1))
        x3 = self.enc3(self.down2(x2))
        x4 = self.enc4(self.down3(x3))
        x5 = drop(self.enc5(self.down4(x4)))
        d1 = self.dec6(self.up5(x5) + x4)
        d2 = self.dec7(self.up6(d1) + x3)
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
