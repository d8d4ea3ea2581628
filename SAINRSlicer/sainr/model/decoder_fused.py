"""Fused twin of :class:`MLPDecoder` for CPU inference in fp32 or bf16 (oneDNN post-ops).

Each linear layer and the ReLU after it are one oneDNN call with weights cast once, and the
rows go through the whole MLP in blocks whose hidden activations fit a core's cache: a
query chunk's activations (tens of thousands of rows x the hidden width) do not, and every
separate layer, ReLU and cast then streams them through memory again. The first layer's
share of a thin slice's conditions is folded into its bias in fp32, as
:meth:`MLPDecoder.first_layer` does.
"""

from __future__ import annotations

import torch
from torch import nn

from .decoder import MLPDecoder, split_shared

#: Hidden activations of one block of rows (bytes): about a core's L2 cache.
BLOCK_BYTES = 2 * 2**20


class FusedMLP(nn.Module):
    """:class:`MLPDecoder` with fused layers in ``dtype`` (float32 or bfloat16); takes fp32
    rows and returns fp32 values."""

    #: The float module this one stands in for (the benchmark times it as that stage).
    lowers = MLPDecoder

    def __init__(self, float_decoder: MLPDecoder, dtype: torch.dtype) -> None:
        super().__init__()
        first, *rest = float_decoder.linears()
        self.dtype = dtype
        self.first_weight = first.weight.detach().float()
        self.first_bias = first.bias.detach().float()
        self.layers = [(lin.weight.detach().to(dtype), lin.bias.detach().to(dtype)) for lin in rest]
        item = torch.finfo(dtype).bits // 8
        self.block = max(BLOCK_BYTES // (float_decoder.width * item), 1)

    def forward(self, z: torch.Tensor, shared: torch.Tensor | None = None) -> torch.Tensor:
        """As :meth:`MLPDecoder.forward`."""
        out = torch.empty(len(z), dtype=torch.float32, device=z.device)
        if shared is None:
            self._group(z, self.first_weight, self.first_bias, out)
            return out
        w_rows, biases = split_shared(self.first_weight, self.first_bias, shared.float())
        for rows, bias, values in zip(z.chunk(len(shared)), biases, out.chunk(len(shared))):
            self._group(rows, w_rows, bias, values)
        return out

    def _group(
        self, z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, out: torch.Tensor
    ) -> None:
        """Values of rows ``z`` whose first layer is (``weight``, ``bias``), into ``out``."""
        first = weight.to(self.dtype).contiguous(), bias.to(self.dtype)
        for start in range(0, len(z), self.block):
            rows = z[start : start + self.block].to(self.dtype)
            out[start : start + len(rows)] = self._mlp(rows, first).squeeze(-1)

    def _mlp(self, rows: torch.Tensor, first: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The MLP on one block of rows: ReLU after every layer but the last."""
        linear = torch.ops.mkldnn._linear_pointwise
        h = linear(rows, *first, "relu", [], "")
        for weight, bias in self.layers[:-1]:
            h = linear(h, weight, bias, "relu", [], "")
        return linear(h, *self.layers[-1], "none", [], "")
