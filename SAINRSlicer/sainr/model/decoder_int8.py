"""int8 twin of :class:`MLPDecoder` (:mod:`.quantized`): the hidden layers in int8.

The first layer stays fp32: its input (attended features) is heavy-tailed, 8-bit codes there
cost PSNR on held-out volumes (docs/benchmark.md), and it holds a small share of the
decoder's arithmetic. Its weights are divided by the scale of its output codes, so it computes them
directly (ReLU and rounding are one clamp); from there every hidden activation stays uint8
and only the scalar output returns to fp32.
"""

from __future__ import annotations

import torch
from torch import nn

from .decoder import MLPDecoder, split_shared
from .quantized import FULL_BYTE, QLinear, Range


class Int8MLP(nn.Module):
    """:class:`MLPDecoder` whose hidden layers run in int8, calibrated by
    :func:`decoder_ranges`."""

    #: The float module this one stands in for (the benchmark times it as that stage).
    lowers = MLPDecoder

    def __init__(self, float_decoder: MLPDecoder, ranges: list[Range]) -> None:
        super().__init__()
        first, *rest = float_decoder.linears()
        codes = ranges[0]  # ReLU output: zero point 0
        self.top = codes.top
        self.weight = first.weight.detach().float() / codes.scale
        self.bias = first.bias.detach().float() / codes.scale + 0.5
        self.layers = [QLinear(lin, r) for lin, r in zip(rest, ranges, strict=True)]
        self.outputs: list[Range | None] = list(ranges[1:]) + [None]

    def forward(self, z: torch.Tensor, shared: torch.Tensor | None = None) -> torch.Tensor:
        """As :meth:`MLPDecoder.forward`."""
        h = self._first_codes(z, shared)
        for layer, out in zip(self.layers, self.outputs):
            h = layer(h, out)
        return h.squeeze(-1)

    def _first_codes(self, z: torch.Tensor, shared: torch.Tensor | None) -> torch.Tensor:
        """uint8 codes of the first layer's ReLU output (see :meth:`MLPDecoder.first_layer`
        for ``shared``)."""
        if shared is None:
            return _codes(nn.functional.linear(z, self.weight, self.bias), self.top)
        w_rows, biases = split_shared(self.weight, self.bias, shared)
        codes = torch.empty((len(z), len(self.bias)), dtype=torch.uint8)
        for group, rows, bias in zip(codes.chunk(len(shared)), z.chunk(len(shared)), biases):
            _codes(nn.functional.linear(rows, w_rows, bias), self.top, out=group)
        return codes


def _codes(x: torch.Tensor, top: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 codes 0 … ``top`` (into ``out`` if given) of ``x`` already in code units, rounding
    offset included: clamp, then truncate through int16, which PyTorch's CPU kernels convert several
    times faster than float to uint8 directly (the narrowing from int16 is cheap). Meant for the
    decoder's chunks; :func:`.quantized.quantize` narrows volume-sized tensors straight into
    a reused buffer, where an int16 temporary would cost more in page faults than it saves."""
    wide = x.clamp_(0, top).to(torch.int16)
    return wide.to(torch.uint8) if out is None else out.copy_(wide)


def decoder_ranges(decoder: MLPDecoder, z: torch.Tensor, top: int = FULL_BYTE) -> list[Range]:
    """Ranges of the int8 inputs of the decoder (every hidden ReLU output), from the float
    model on its input rows ``z`` (:meth:`SAINR.decoder_inputs`), in codes 0 … ``top``."""
    h = decoder.first_layer(z)
    ranges = []
    for layer in decoder.linears()[1:]:
        ranges.append(Range.of(h, top))
        h = torch.relu(layer(h))
    return ranges
