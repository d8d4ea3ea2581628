"""int8 inference for CPUs without AMX (AVX2 and AVX-512 laptops, AMD Zen 4, older servers).

The encoder's body convolutions and the MLP decoder are nearly all of the arithmetic; on such
CPUs oneDNN runs them several times faster in int8 (VNNI / AVX2 u8 x s8 dot products) than in
fp32. The model runs with int8 twins of the two standing in (:mod:`sainr.model.edsr_int8`,
:mod:`sainr.model.decoder_int8`), calibrated on the volume being processed: the float encoder
runs once on a central crop of it, the float model answers a sample of each tile's queries.
The residual stream, the attention and every output stay fp32; the float model is unchanged.

Where this torch build lacks the oneDNN kernels (builds without oneDNN, e.g. some ARM wheels)
:meth:`Int8Backend.available` is False and ``precision=auto`` stays fp32 (bf16 with AVX-512 BF16).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ...model import SAINR, FeatureMap, QueryOutput, SliceQueries
from ...model.decoder_int8 import Int8MLP, decoder_ranges
from ...model.edsr_int8 import Int8EDSR, encoder_ranges
from ...model.quantized import FULL_BYTE, SEVEN_BITS, QConv3d, QLinear, Range, quantize
from ..device import cpu_features
from .base import Tile, TileDecoder

#: In-plane side of the encoder's calibration crop (all slices): a few percent of a knee's
#: encoder work.
CALIBRATION_SIDE = 40
#: Queries per tile that calibrate the decoder (a few percent of a tile's decoding).
CALIBRATION_QUERIES = 8192

_LAST = torch.channels_last_3d


def activation_top(features: dict[str, object]) -> int:
    """The largest activation code on a CPU with these :func:`~..device.cpu_features`: the
    full byte with VNNI, 7 bits without it (:data:`~...model.quantized.SEVEN_BITS`; the
    validation PSNR of both: docs/benchmark.md, "AMD Zen 3")."""
    return FULL_BYTE if features.get("vnni") else SEVEN_BITS


def calibration_window(n_h: int, n_w: int) -> tuple[slice, slice]:
    """The central CALIBRATION_SIDE^2 in-plane window (clipped to the plane)."""
    side_h, side_w = min(n_h, CALIBRATION_SIDE), min(n_w, CALIBRATION_SIDE)
    y0, x0 = (n_h - side_h) // 2, (n_w - side_w) // 2
    return slice(y0, y0 + side_h), slice(x0, x0 + side_w)


def int8_encoder(model: SAINR, volume: np.ndarray, top: int = FULL_BYTE) -> Int8EDSR:
    """The model's encoder in int8 with activation codes 0 … ``top``, calibrated on the
    central crop (:func:`calibration_window`) of normalised ``volume`` (S, H, W)."""
    ys, xs = calibration_window(*volume.shape[1:])
    lr = torch.from_numpy(np.ascontiguousarray(volume[:, ys, xs]))[None, None]
    return Int8EDSR(
        model.encoder, encoder_ranges(model.encoder, lr.contiguous(memory_format=_LAST), top)
    )


@dataclass(frozen=True)
class Int8Runner:
    """The model with its calibrated int8 encoder; decoders are calibrated per tile."""

    model: SAINR
    encoder: Int8EDSR
    #: Largest activation code (:func:`activation_top`), the decoders' as the encoder's.
    top: int = FULL_BYTE
    #: As :attr:`.base.Runner.encoder_floats`: the int8 twin keeps fp32 and uint8 copies.
    encoder_floats: float = 5.0

    def encode(self, lr: torch.Tensor, acquisition: torch.Tensor) -> FeatureMap:
        """As :meth:`.base.Runner.encode`, with the int8 encoder."""
        lr = lr.contiguous(memory_format=_LAST)
        return self.model.encode(lr, acquisition, encoder=self.encoder)

    def decoder(self, fm: FeatureMap, tile: Tile) -> TileDecoder:
        """As :meth:`.base.Runner.decoder`, with an int8 decoder calibrated on a sample of the
        tile's queries: hidden activations vary across a volume far more than the encoder's,
        so each tile gets its own ranges."""
        inputs = self.model.decoder_inputs(fm, tile.random_queries(CALIBRATION_QUERIES))
        mlp = Int8MLP(self.model.decoder, decoder_ranges(self.model.decoder, inputs, self.top))

        def decode(queries: SliceQueries) -> QueryOutput:
            return self.model.query_slices(fm, queries, decoder=mlp)

        return decode


class Int8Backend:
    """int8 encoder body and decoder hidden layers on the oneDNN kernels."""

    def available(self) -> bool:
        """Whether this torch build runs the oneDNN int8 kernels used here."""
        return _kernels_run()

    def prepare(self, model: SAINR, volume: np.ndarray, device: torch.device) -> Int8Runner:
        """As :meth:`.base.Backend.prepare`: calibrates the int8 encoder on ``volume``. The
        float encoder's weights take the int8 kernels' channels-last layout (values unchanged):
        the calibration and the fp32 head the twin shares run in it."""
        model.encoder.to(memory_format=_LAST)
        top = activation_top(cpu_features())
        return Int8Runner(model, int8_encoder(model, volume, top), top=top)


@functools.lru_cache(maxsize=1)
def _kernels_run() -> bool:
    """A tiny probe of the int8 convolution and linear kernels."""
    try:
        qconv = QConv3d(nn.Conv3d(2, 2, 3, padding=1), Range(-1.0, 1.0))
        x = torch.zeros(1, 2, 3, 4, 4).contiguous(memory_format=_LAST)
        qconv(quantize(x, qconv.x_range))
        r = Range(0.0, 1.0)
        QLinear(nn.Linear(4, 2), r)(torch.zeros(3, 4, dtype=torch.uint8), r)
    except (RuntimeError, AttributeError, NotImplementedError):
        return False
    return True


def backend(precision: str) -> Int8Backend:
    """The int8 backend (:mod:`sainr.runtime.backends` registry)."""
    return Int8Backend()
