"""``SmallSR``: a CPU-sized SR network for the quick start and the quality benchmark (registered as ``small_sr``).

Bicubic upsampling plus a learned residual (a few 3×3 convolutions and a pixel shuffle): it trains
in seconds on a laptop CPU, which the published backbones do not.

>>> import torch
>>> SmallSR()(torch.rand(1, 3, 16, 16)).shape
torch.Size([1, 3, 32, 32])
>>> SmallSR(scale=3)(torch.rand(1, 3, 16, 16)).shape
torch.Size([1, 3, 48, 48])
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class SmallSR(nn.Module):
    """×``scale`` SR: bicubic upsampling plus a learned residual of ``depth`` convolutions of ``width`` channels."""

    def __init__(self, width: int = 32, depth: int = 4, scale: int = 2):
        super().__init__()
        self.scale = scale
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1)]
        for _ in range(depth):
            layers += [nn.ReLU(), nn.Conv2d(width, width, 3, padding=1)]
        layers += [nn.ReLU(), nn.Conv2d(width, scale * scale * 3, 3, padding=1), nn.PixelShuffle(scale)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False) + self.body(x)
