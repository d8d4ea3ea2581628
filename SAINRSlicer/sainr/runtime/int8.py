"""int8 inference for CPUs without bf16 hardware (AVX2 and AVX-512 laptops, older servers).

The encoder's 3 x 3 x 3 convolutions and the MLP decoder are nearly all of the arithmetic.
On such CPUs oneDNN runs them 3-5x faster in int8 (VNNI / AVX2 u8 x s8 dot products) than in
fp32. This module swaps the two for int8 twins built from the float model:

- weights: symmetric int8, one scale per output channel;
- activations: uint8 with per-tensor scales measured on the volume being processed (the
  float model runs on a small crop of it for the encoder, on a sample of each tile's
  queries for the decoder; every range is then widened by ``MARGIN``), so no range is
  guessed and nothing is stored with the weights;
- a ReLU needs no op: an output quantised with zero point 0 saturates negatives to 0;
- the residual stream, the attention and every output stay fp32.

Only plain ``uint8``/``int8`` tensors and the oneDNN kernels ``torch.ops.onednn.qconv_*`` /
``qlinear_*`` are used (the deprecated quantised tensor dtypes are not). Where those kernels
are missing (builds without oneDNN, e.g. some ARM wheels) :func:`int8_available` is False and
``precision=auto`` stays fp32.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..geometry import SliceGrid
from ..model import SAINR, FeatureMap, Queries
from ..model.decoder import MLPDecoder, split_shared
from ..model.edsr import EDSR3d, head_conv

#: Calibrated ranges are widened by this factor: values outside them are clipped, and a
#: wider range costs resolution (the held-out PSNR at this margin: docs/benchmark.md).
MARGIN = 1.25
#: In-plane side of the encoder's calibration crop (all slices): a few percent of a knee's
#: encoder work.
CALIBRATION_SIDE = 40
#: Queries per tile that calibrate the decoder (a few percent of a tile's decoding).
CALIBRATION_QUERIES = 8192

_LAST = torch.channels_last_3d


@dataclass(frozen=True)
class Range:
    """Observed [lo, hi] of an activation and the uint8 affine map that covers it."""

    lo: float
    hi: float

    @classmethod
    def of(cls, x: torch.Tensor) -> Range:
        lo, hi = torch.aminmax(x.detach().float())
        return cls(min(float(lo), 0.0) * MARGIN, max(float(hi), 1e-6) * MARGIN)

    @property
    def scale(self) -> float:
        return (self.hi - self.lo) / 255.0

    @property
    def zero_point(self) -> int:
        return int(round(-self.lo / self.scale))


def quantize(
    x: torch.Tensor,
    r: Range,
    scratch: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """uint8 codes round(x / scale) + zero point of ``x`` under ``r``, saturating: one
    multiply-add pass, a clamp and the narrowing copy. ``scratch`` (float, shaped like
    ``x``) and ``out`` (uint8) are buffers to reuse: a fresh volume-sized buffer per call
    costs more in page faults than the arithmetic."""
    offset = torch.tensor(r.zero_point + 0.5, dtype=x.dtype)
    scratch = torch.add(offset, x, alpha=1.0 / r.scale, out=scratch).clamp_(0, 255)
    return scratch.to(torch.uint8) if out is None else out.copy_(scratch)


def _int8_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8 weight and its scales."""
    w = weight.detach().float()
    scale = w.abs().flatten(1).amax(1).clamp_min(1e-12) / 127.0
    shape = (-1,) + (1,) * (w.dim() - 1)
    return torch.round(w / scale.view(shape)).clamp_(-127, 127).to(torch.int8), scale


class QConv3d(nn.Module):
    """3 x 3 x 3 convolution, stride 1, padding 1, on uint8 input of a fixed range."""

    def __init__(self, conv: nn.Conv3d, x_range: Range) -> None:
        super().__init__()
        weight, self.w_scale = _int8_weight(conv.weight)
        self.w_zero = torch.zeros_like(self.w_scale, dtype=torch.long)
        self.bias = conv.bias.detach().float().clone()
        self.x_range = x_range
        self.geometry = ([1, 1, 1], [1, 1, 1], [1, 1, 1], 1)
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


class Int8EDSR(nn.Module):
    """:class:`EDSR3d` with int8 body convolutions; head (one input channel) and the residual
    sums in fp32."""

    def __init__(self, float_encoder: EDSR3d, ranges: dict[str, Range]) -> None:
        super().__init__()
        self.head = float_encoder.head
        self.receptive_radius = float_encoder.receptive_radius
        blocks, last = list(float_encoder.body)[:-1], float_encoder.body[-1]
        self.pairs = [
            (
                QConv3d(b.body[0], ranges[f"in{k}"]),
                ranges[f"mid{k}"],
                QConv3d(b.body[2], ranges[f"mid{k}"]),
            )
            for k, b in enumerate(blocks)
        ]
        self.last = QConv3d(last, ranges["last"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features of ``x``; each residual sum is written into the convolution's output
        and the quantiser reuses two buffers, so a block allocates only what oneDNN returns."""
        head = head_conv(self.head, x).contiguous(memory_format=_LAST)
        scratch, codes = torch.empty_like(head), torch.empty_like(head, dtype=torch.uint8)
        h = head
        for first, mid, second in self.pairs:
            h = second(first(quantize(h, first.x_range, scratch, codes), mid)).add_(h)
        return self.last(quantize(h, self.last.x_range, scratch, codes)).add_(head)


def encoder_ranges(encoder: EDSR3d, x: torch.Tensor) -> dict[str, Range]:
    """Ranges of every int8 input of the encoder on input ``x``, from the float model."""
    ranges: dict[str, Range] = {}
    head = head_conv(encoder.head, x)
    h = head
    for k, block in enumerate(list(encoder.body)[:-1]):
        ranges[f"in{k}"] = Range.of(h)
        mid = torch.relu(block.body[0](h))
        ranges[f"mid{k}"] = Range.of(mid)
        h = h + block.body[2](mid)
    ranges["last"] = Range.of(h)
    return ranges


class QLinear(nn.Module):
    """Linear layer on uint8 input codes of a fixed range."""

    def __init__(self, linear: nn.Linear, x_range: Range) -> None:
        super().__init__()
        int8_weight, self.w_scale = _int8_weight(linear.weight)
        self.w_zero = torch.zeros_like(self.w_scale, dtype=torch.long)
        self.weight = torch.ops.onednn.qlinear_prepack(int8_weight, None)
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


class Int8MLP(nn.Module):
    """:class:`MLPDecoder` whose hidden layers run in int8.

    The first layer stays fp32: its input (attended features) is heavy-tailed, and 8-bit
    codes there cost 0.1 dB on held-out volumes, while it holds under a tenth of the
    decoder's arithmetic. Its weights are divided by the scale of its output codes, so it
    computes them directly (ReLU and rounding are one clamp); from there every hidden
    activation stays uint8 and only the scalar output returns to fp32."""

    def __init__(self, float_decoder: MLPDecoder, ranges: list[Range]) -> None:
        super().__init__()
        linears = [m for m in float_decoder.net if isinstance(m, nn.Linear)]
        codes = ranges[0]  # ReLU output: zero point 0
        self.weight = linears[0].weight.detach().float() / codes.scale
        self.bias = linears[0].bias.detach().float() / codes.scale + 0.5
        self.layers = [QLinear(lin, r) for lin, r in zip(linears[1:], ranges, strict=True)]
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
            return _codes(nn.functional.linear(z, self.weight, self.bias))
        w_rows, biases = split_shared(self.weight, self.bias, shared)
        codes = torch.empty((len(z), len(self.bias)), dtype=torch.uint8)
        for group, rows, bias in zip(codes.chunk(len(shared)), z.chunk(len(shared)), biases):
            _codes(nn.functional.linear(rows, w_rows, bias), out=group)
        return codes


def _codes(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 codes (into ``out`` if given) of ``x`` already in code units, rounding offset
    included: clamp, then truncate through int16, which PyTorch's CPU kernels convert about
    4x faster than float to uint8 directly (the narrowing from int16 is cheap). Meant for the
    decoder's chunks; :func:`quantize` narrows volume-sized tensors straight into a reused
    buffer, where an int16 temporary would cost more in page faults than it saves."""
    wide = x.clamp_(0, 255).to(torch.int16)
    return wide.to(torch.uint8) if out is None else out.copy_(wide)


def decoder_ranges(
    decoder: MLPDecoder, z: torch.Tensor, shared: torch.Tensor | None
) -> list[Range]:
    """Ranges of the int8 inputs of the decoder (every hidden ReLU output), from the float
    model on inputs ``z`` (and ``shared``)."""
    linears = [m for m in decoder.net if isinstance(m, nn.Linear)]
    h = decoder.first_layer(z, shared)
    ranges = []
    for lin in linears[1:]:
        ranges.append(Range.of(h))
        h = torch.relu(lin(h))
    return ranges


@functools.lru_cache(maxsize=1)
def int8_available() -> bool:
    """Whether this torch build runs the oneDNN int8 kernels used here (a tiny probe)."""
    try:
        conv = nn.Conv3d(2, 2, 3, padding=1)
        qconv = QConv3d(conv, Range(-1.0, 1.0))
        x = torch.zeros(1, 2, 3, 4, 4).contiguous(memory_format=_LAST)
        qconv(quantize(x, qconv.x_range))
        r = Range(0.0, 1.0)
        QLinear(nn.Linear(4, 2), r)(torch.zeros(3, 4, dtype=torch.uint8), r)
    except (RuntimeError, AttributeError, NotImplementedError):
        return False
    return True


def calibration_window(n_h: int, n_w: int) -> tuple[slice, slice]:
    """The central CALIBRATION_SIDE^2 in-plane window (clipped to the plane)."""
    side_h, side_w = min(n_h, CALIBRATION_SIDE), min(n_w, CALIBRATION_SIDE)
    y0, x0 = (n_h - side_h) // 2, (n_w - side_w) // 2
    return slice(y0, y0 + side_h), slice(x0, x0 + side_w)


@torch.inference_mode()
def int8_encoder(model: SAINR, volume: np.ndarray) -> Int8EDSR:
    """The model's encoder in int8, calibrated on the central crop
    (:func:`calibration_window`) of normalised ``volume`` (S, H, W)."""
    ys, xs = calibration_window(*volume.shape[1:])
    lr = torch.from_numpy(np.ascontiguousarray(volume[:, ys, xs]))[None, None]
    return Int8EDSR(
        model.encoder, encoder_ranges(model.encoder, lr.contiguous(memory_format=_LAST))
    )


def calibration_queries(grid: SliceGrid, ys: slice, xs: slice, n: int) -> Queries:
    """``n`` thin-slice queries at random (seeded) over the region (ys, xs) of a tile."""
    gen = torch.Generator().manual_seed(0)
    j = torch.randint(0, grid.n_hr, (n,), generator=gen)
    return Queries(
        b=torch.zeros(n, dtype=torch.long),
        s=torch.as_tensor(grid.lower)[j],
        y=torch.randint(ys.start, ys.stop, (n,), generator=gen),
        x=torch.randint(xs.start, xs.stop, (n,), generator=gen),
        t=torch.as_tensor(grid.frac, dtype=torch.float32)[j],
    )


@torch.inference_mode()
def int8_decoder(model: SAINR, fm: FeatureMap, queries: Queries) -> Int8MLP:
    """The model's decoder in int8, calibrated on ``queries`` of an encoded tile ``fm``
    (the float model answers them; its decoder inputs give the ranges). Hidden activations
    vary across a volume far more than the encoder's, so each tile gets its own ranges."""
    captured: list[tuple] = []
    hook = model.decoder.register_forward_pre_hook(lambda _m, args: captured.append(args))
    try:
        model.eval().query(fm, queries)
    finally:
        hook.remove()
    z = captured[0][0]
    return Int8MLP(model.decoder, decoder_ranges(model.decoder, z, None))


def with_modules(model: SAINR, **modules: nn.Module) -> SAINR:
    """A shallow copy of ``model`` with some submodules replaced (the original unchanged)."""
    twin = copy.copy(model)
    twin._modules = dict(model._modules, **modules)
    return twin
