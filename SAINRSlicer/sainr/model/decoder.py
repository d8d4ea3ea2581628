"""MLP decoder: query feature -> intensity residual over the linear interpolation."""

from __future__ import annotations

import torch
from torch import nn


class MLPDecoder(nn.Module):
    """``layers`` linear layers with ReLU between them and a scalar output."""

    def __init__(self, in_dim: int, hidden: int = 256, layers: int = 5) -> None:
        super().__init__()
        dims = [in_dim] + [hidden] * (layers - 1)
        blocks: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            blocks += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        blocks.append(nn.Linear(dims[-1], 1))
        self.net = nn.Sequential(*blocks)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).squeeze(-1)
