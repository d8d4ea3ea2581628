"""int8 twin of :class:`EDSR3d` (:mod:`.quantized`): the body convolutions in int8, the head
(one input channel) and every residual sum in fp32.

The body's 3D convolutions are nearly all of the encoder's arithmetic; on CPUs without bf16
hardware oneDNN runs them several times faster in int8 (VNNI / AVX2 u8 x s8 dot products).
"""

from __future__ import annotations

import torch
from torch import nn

from .edsr import EDSR3d, head_conv
from .quantized import FULL_BYTE, QConv3d, Range, quantize

_LAST = torch.channels_last_3d


class Int8EDSR(nn.Module):
    """:class:`EDSR3d` with int8 body convolutions, calibrated by :func:`encoder_ranges`."""

    #: The float module this one stands in for (the benchmark times it as that stage).
    lowers = EDSR3d

    def __init__(self, float_encoder: EDSR3d, ranges: dict[str, Range]) -> None:
        super().__init__()
        self.head = float_encoder.head
        self.blocks = [
            (
                QConv3d(first, ranges[f"in{k}"]),
                ranges[f"mid{k}"],
                QConv3d(second, ranges[f"mid{k}"]),
            )
            for k, (first, second) in enumerate(b.convs() for b in float_encoder.residual_blocks())
        ]
        self.tail = QConv3d(float_encoder.tail, ranges["tail"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features of ``x``; each residual sum is written into the convolution's output
        and the quantiser reuses two buffers, so a block allocates only what oneDNN returns."""
        head = head_conv(self.head, x).contiguous(memory_format=_LAST)
        scratch, codes = torch.empty_like(head), torch.empty_like(head, dtype=torch.uint8)
        h = head
        for first, mid, second in self.blocks:
            h = second(first(quantize(h, first.x_range, scratch, codes), mid)).add_(h)
        return self.tail(quantize(h, self.tail.x_range, scratch, codes)).add_(head)


def encoder_ranges(encoder: EDSR3d, x: torch.Tensor, top: int = FULL_BYTE) -> dict[str, Range]:
    """Ranges of every int8 input of the encoder on input ``x``, from the float model: each
    block's input (``in{k}``) and its hidden ReLU output (``mid{k}``), and the tail's input;
    codes 0 … ``top`` (:data:`.quantized.FULL_BYTE`)."""
    ranges: dict[str, Range] = {}
    h = head_conv(encoder.head, x)
    for k, block in enumerate(encoder.residual_blocks()):
        first, second = block.convs()
        ranges[f"in{k}"] = Range.of(h, top)
        mid = torch.relu(first(h))
        ranges[f"mid{k}"] = Range.of(mid, top)
        h = h + second(mid)
    ranges["tail"] = Range.of(h, top)
    return ranges
