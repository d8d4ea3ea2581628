"""3D EDSR encoder without upsampling: LR volume -> C-channel features on the same grid."""

from __future__ import annotations

import torch
from torch import nn


class ResBlock3d(nn.Module):
    """conv-ReLU-conv with an identity skip; no normalisation (EDSR)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv3d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class EDSR3d(nn.Module):
    """Head conv, ``blocks`` residual blocks, body conv, long skip from the head.

    Run once per volume; the output has the input's spatial shape.
    """

    def __init__(self, channels: int = 64, blocks: int = 8) -> None:
        super().__init__()
        self.head = nn.Conv3d(1, channels, 3, padding=1)
        self.body = nn.Sequential(
            *[ResBlock3d(channels) for _ in range(blocks)],
            nn.Conv3d(channels, channels, 3, padding=1),
        )
        self.receptive_radius = 2 * blocks + 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        head = self.head(x)
        return head + self.body(head)
