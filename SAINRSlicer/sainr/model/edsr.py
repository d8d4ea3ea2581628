"""3D EDSR encoder without upsampling: LR volume -> C-channel features on the same grid."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn


def head_conv(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for the one-input-channel head conv. On the CPU PyTorch sends an fp32 3D
    convolution with one input channel to its reference loop (``slow_conv3d``); oneDNN
    computes the same values several times faster. Only fp32 inference on the CPU takes that
    route: training (autograd), autocast and other devices run ``conv`` as usual."""
    fast = (
        x.device.type == "cpu"
        and x.dtype == conv.weight.dtype == torch.float32
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
    )
    if not fast:
        return conv(x)
    return torch.mkldnn_convolution(
        x, conv.weight, conv.bias, conv.padding, conv.stride, conv.dilation, conv.groups
    )


class ResBlock3d(nn.Module):
    """conv-ReLU-conv with an identity skip; no normalisation (EDSR)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv3d(channels, channels, 3, padding=1),
        )

    def convs(self) -> tuple[nn.Conv3d, nn.Conv3d]:
        """The two convolutions, in order (a ReLU between them, the skip around both)."""
        return self.body[0], self.body[2]

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

    @property
    def channels(self) -> int:
        """Feature channels C of the output."""
        return self.head.out_channels

    def residual_blocks(self) -> Iterator[ResBlock3d]:
        """The residual blocks, in order."""
        yield from list(self.body)[:-1]

    @property
    def tail(self) -> nn.Conv3d:
        """The body's last convolution, after the residual blocks (before the long skip)."""
        return self.body[-1]

    def macs_per_voxel(self) -> int:
        """Multiply-accumulates per output voxel: every convolution's weights once (stride 1,
        same padding)."""
        return sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Conv3d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        head = head_conv(self.head, x)
        return head + self.body(head)
