"""Fused twin of :class:`EDSR3d` for CPU inference in fp32 or bf16 (oneDNN post-ops).

Each convolution is one oneDNN call with what follows it folded in: the ReLU after a block's
first convolution, the skip sum after its second and after the tail. Under autocast every
convolution casts its weights on each call and every ReLU and skip sum is one more pass over
a volume-sized tensor; here the weights are cast once and those passes disappear. The values
are the float module's (in bf16 a sum is rounded once instead of twice).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .edsr import EDSR3d

_LAST = torch.channels_last_3d


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
        weight = conv.weight.detach().to(dtype).contiguous(memory_format=_LAST)
        return cls(
            weight, bias, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups
        )

    def __call__(
        self, x: torch.Tensor, relu: bool = False, skip: torch.Tensor | None = None
    ) -> torch.Tensor:
        """conv(x), then ReLU (``relu``) or ``+ skip`` (a tensor shaped like the output)."""
        geometry = (self.padding, self.stride, self.dilation, self.groups)
        ops = torch.ops.mkldnn
        if skip is None:
            unary = "relu" if relu else "none"
            return ops._convolution_pointwise(x, self.weight, self.bias, *geometry, unary, [], "")
        return ops._convolution_pointwise.binary(
            x, skip, self.weight, self.bias, *geometry, "add", 1.0, None, [], None
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
        head = self.head(x.to(self.dtype).contiguous(memory_format=_LAST))
        h = head
        for first, second in self.blocks:
            h = second(first(h, relu=True), skip=h)
        return self.tail(h, skip=head)
