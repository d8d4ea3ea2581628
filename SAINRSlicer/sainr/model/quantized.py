"""int8 building blocks for lowered twins of float modules (:mod:`.edsr_int8`,
:mod:`.decoder_int8`).

- weights: symmetric int8, one scale per output channel;
- activations: uint8 codes under a per-tensor :class:`Range` measured by running the float
  module on real inputs (widened by ``MARGIN``), so no range is guessed and nothing is stored
  with the weights;
- a ReLU needs no op: an output quantised with zero point 0 saturates negatives to 0.

Only plain ``uint8``/``int8`` tensors and the oneDNN kernels ``torch.ops.onednn.qconv_*`` /
``qlinear_*`` are used (the deprecated quantised tensor dtypes are not).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

#: The largest uint8 code of an activation: the full byte.
FULL_BYTE = 255
#: The largest code on CPUs without VNNI, where oneDNN adds pairs of u8 x s8 products in
#: saturating 16-bit sums that 8-bit codes can overflow (2 x 255 x 127 > 32767; 2 x 127 x 127
#: is not).
SEVEN_BITS = 127
#: Calibrated ranges are widened by this factor: values outside them are clipped, and a
#: wider range costs resolution (the held-out PSNR at this margin: docs/benchmark.md).
MARGIN = 1.25


@dataclass(frozen=True)
class Range:
    """Observed [lo, hi] of an activation and the uint8 affine map that covers it with the
    codes 0 … ``top``."""

    lo: float
    hi: float
    top: int = FULL_BYTE

    @classmethod
    def of(cls, x: torch.Tensor, top: int = FULL_BYTE) -> Range:
        """The range of ``x`` (always holding 0), widened by ``MARGIN``, in codes 0 … ``top``."""
        lo, hi = torch.aminmax(x.detach().float())
        return cls(min(float(lo), 0.0) * MARGIN, max(float(hi), 1e-6) * MARGIN, top)

    @property
    def scale(self) -> float:
        return (self.hi - self.lo) / self.top

    @property
    def zero_point(self) -> int:
        return int(round(-self.lo / self.scale))


def quantize(
    x: torch.Tensor,
    r: Range,
    scratch: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """uint8 codes round(x / scale) + zero point of ``x`` under ``r``, saturating at 0 and
    ``r.top``: one multiply-add pass, a clamp and the narrowing copy. ``scratch`` (float,
    shaped like ``x``) and ``out`` (uint8) are buffers to reuse: a fresh volume-sized buffer
    per call costs more in page faults than the arithmetic."""
    offset = torch.tensor(r.zero_point + 0.5, dtype=x.dtype)
    scratch = torch.add(offset, x, alpha=1.0 / r.scale, out=scratch).clamp_(0, r.top)
    return scratch.to(torch.uint8) if out is None else out.copy_(scratch)


def int8_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8 weight and its scales."""
    w = weight.detach().float()
    scale = w.abs().flatten(1).amax(1).clamp_min(1e-12) / 127.0
    shape = (-1,) + (1,) * (w.dim() - 1)
    return torch.round(w / scale.view(shape)).clamp_(-127, 127).to(torch.int8), scale


class QConv3d(nn.Module):
    """A float ``nn.Conv3d`` (its kernel, stride, padding, dilation and groups) on uint8
    input codes of a fixed range."""

    def __init__(self, conv: nn.Conv3d, x_range: Range) -> None:
        super().__init__()
        weight, self.w_scale = int8_weight(conv.weight)
        self.w_zero = torch.zeros_like(self.w_scale, dtype=torch.long)
        self.bias = conv.bias.detach().float().clone()
        self.x_range = x_range
        self.geometry = (list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups)
        r = x_range
        self.weight = torch.ops.onednn.qconv_prepack(
            weight, self.w_scale, r.scale, r.zero_point, *self.geometry
        )

    def forward(self, qx: torch.Tensor, out: Range | None = None) -> torch.Tensor:
        """fp32 output, or uint8 under ``out`` (ReLU included when ``out.lo`` is 0)."""
        r = self.x_range
        scale, zero, dtype = (1.0, 0, torch.float32) if out is None else (out.scale, out.zero_point, None)  # fmt: skip
        return torch.ops.onednn.qconv_pointwise(
            qx, r.scale, r.zero_point, self.weight, self.w_scale, self.w_zero, self.bias,
            *self.geometry, scale, zero, dtype, "none", [], "",
        )  # fmt: skip


class QLinear(nn.Module):
    """Linear layer on uint8 input codes of a fixed range."""

    def __init__(self, linear: nn.Linear, x_range: Range) -> None:
        super().__init__()
        weight, self.w_scale = int8_weight(linear.weight)
        self.w_zero = torch.zeros_like(self.w_scale, dtype=torch.long)
        self.weight = torch.ops.onednn.qlinear_prepack(weight, None)
        self.bias = linear.bias.detach().float().clone()
        self.x_range = x_range

    def forward(self, qx: torch.Tensor, out: Range | None = None) -> torch.Tensor:
        """ReLU output as uint8 codes under ``out``, or (``out`` None) fp32 output."""
        r = self.x_range
        if out is None:
            scale, dtype, post = 1.0, torch.float32, "none"
        else:
            scale, dtype, post = out.scale, None, "relu"
        return torch.ops.onednn.qlinear_pointwise(
            qx, r.scale, r.zero_point, self.weight, self.w_scale, self.w_zero, self.bias,
            scale, 0, dtype, post, [], "",
        )  # fmt: skip
