"""Fused twin of :class:`EDSR3d` for CPU inference in fp32 or bf16 (oneDNN post-ops).

Each convolution is one oneDNN call with what follows it folded in: the ReLU after a block's
first convolution, the skip sum after its second and after the tail. Under autocast every
convolution casts its weights on each call and every ReLU and skip sum is one more pass over
a volume-sized tensor; here the weights are cast once and those passes disappear. The skip
sums are written into the tensor they add to, so three volume-sized feature tensors are live
at a time (the head's output, the residual stream, a block's inner activation) instead of
four, and the tiler can encode larger tiles (less halo to repeat). The values are the float
module's (in bf16 a sum is rounded once instead of twice).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .edsr import EDSR3d


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    """5-D ``t`` stored channels-last. ``Tensor.contiguous(memory_format=...)`` leaves a
    one-channel tensor (the input, the head's weight) as it is, since both layouts describe
    it, yet oneDNN lays the output out by their strides: without this the head's output, and
    every tensor after it, would keep the default layout on some calls and not on others."""
    n, c, d, h, w = t.shape
    strides = (c * d * h * w, 1, h * w * c, w * c, c)
    if t.stride() == strides:
        return t
    return torch.empty_strided(t.shape, strides, dtype=t.dtype, device=t.device).copy_(t)


@dataclass(frozen=True)
class FusedConv:
    """One 3D convolution's weights in the run's dtype and layout, and its geometry."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    padding: list[int]
    stride: list[int]
    dilation: list[int]
    groups: int

    @classmethod
    def of(cls, conv: nn.Conv3d, dtype: torch.dtype) -> FusedConv:
        bias = None if conv.bias is None else conv.bias.detach().to(dtype)
        weight = _channels_last(conv.weight.detach().to(dtype))
        return cls(
            weight, bias, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups
        )

    def _geometry(self) -> tuple[list[int], list[int], list[int], int]:
        """Padding, stride, dilation and groups, in oneDNN's argument order."""
        return self.padding, self.stride, self.dilation, self.groups

    def __call__(self, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
        """conv(x), then ReLU (``relu``), in a new tensor."""
        unary = "relu" if relu else "none"
        return torch.ops.mkldnn._convolution_pointwise(
            x, self.weight, self.bias, *self._geometry(), unary, [], ""
        )

    def add_into(self, skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``skip += conv(x)`` in place (``skip`` shaped and laid out like the output);
        returns ``skip``."""
        return torch.ops.mkldnn._convolution_pointwise_.binary(
            skip, x, self.weight, self.bias, *self._geometry(), "add", 1.0, None, [], None
        )


class FusedEDSR(nn.Module):
    """:class:`EDSR3d` with fused convolutions in ``dtype`` (float32 or bfloat16); takes an
    fp32 channels-last input and returns features in ``dtype``."""

    #: The float module this one stands in for (the benchmark times it as that stage).
    lowers = EDSR3d

    def __init__(self, float_encoder: EDSR3d, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype
        self.head = FusedConv.of(float_encoder.head, dtype)
        self.blocks = [
            (FusedConv.of(first, dtype), FusedConv.of(second, dtype))
            for first, second in (b.convs() for b in float_encoder.residual_blocks())
        ]
        self.tail = FusedConv.of(float_encoder.tail, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        head = self.head(_channels_last(x.to(self.dtype)))
        h = head.clone()  # the residual stream; the head waits for the long skip
        for first, second in self.blocks:
            second.add_into(h, first(h, relu=True))
        return self.tail.add_into(head, h)
