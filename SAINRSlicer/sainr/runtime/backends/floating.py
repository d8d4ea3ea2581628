"""fp32, bf16 and fp16: the float model's values, with the encoder in the memory layout that
suits the precision (:mod:`sainr.runtime.precision`).

On the CPU, fp32 and bf16 run the fused twins of the encoder and the decoder
(:mod:`sainr.model.edsr_fused`, :mod:`sainr.model.decoder_fused`: oneDNN convolutions and
linear layers with their ReLU and skip sums folded in, weights cast once, the decoder in
cache-sized blocks). Elsewhere, and where this torch build lacks those kernels, the model runs
as it is under autocast.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from ...model import SAINR, FeatureMap, QueryOutput, SliceQueries
from ...model.decoder import MLPDecoder
from ...model.decoder_fused import FusedMLP
from ...model.edsr import EDSR3d
from ...model.edsr_fused import FusedEDSR
from ..precision import autocast, memory_format
from .base import ENCODER_FLOATS, Tile, TileDecoder

#: Precisions whose fused twins run on the CPU, and their dtype.
_FUSED = {"fp32": torch.float32, "bf16": torch.bfloat16}
#: :attr:`.base.Runner.encoder_floats` of the fused twins (three live tensors of the run's
#: dtype, then the fp32 feature table).
_FUSED_ENCODER_FLOATS = {"fp32": 3.5, "bf16": 2.0}


@dataclass(frozen=True)
class FloatingRunner:
    """The model at one float precision on one device; ``encoder`` and ``mlp`` are its fused
    twins where they run (None: the model's own modules under autocast)."""

    model: SAINR
    device: torch.device
    precision: str
    encoder: FusedEDSR | None = None
    mlp: FusedMLP | None = None

    @property
    def encoder_floats(self) -> float:
        """As :attr:`.base.Runner.encoder_floats`."""
        if self.encoder is None:
            return ENCODER_FLOATS
        return _FUSED_ENCODER_FLOATS[self.precision]

    def encode(self, lr: torch.Tensor, acquisition: torch.Tensor) -> FeatureMap:
        """As :meth:`.base.Runner.encode`."""
        lr = lr.contiguous(memory_format=memory_format(self.device, self.precision))
        if self.encoder is not None:
            fm = self.model.encode(lr, acquisition, encoder=self.encoder)
        else:
            with autocast(self.device, self.precision):
                fm = self.model.encode(lr, acquisition)
        fm.feat = fm.feat.float()
        return fm

    def decoder(self, fm: FeatureMap, tile: Tile) -> TileDecoder:
        """As :meth:`.base.Runner.decoder`: the fused twin, else the model's own under
        autocast."""
        if self.mlp is not None:
            mlp = self.mlp
            return lambda queries: self.model.query_slices(fm, queries, decoder=mlp)

        def decode(queries: SliceQueries) -> QueryOutput:
            with autocast(self.device, self.precision):
                return self.model.query_slices(fm, queries)

        return decode


@dataclass(frozen=True)
class FloatingBackend:
    """fp32, bf16 or fp16 (``precision``)."""

    precision: str

    def available(self) -> bool:
        """Float arithmetic runs everywhere (bf16 is emulated, slower, without hardware)."""
        return True

    def prepare(self, model: SAINR, volume: np.ndarray, device: torch.device) -> FloatingRunner:
        """As :meth:`.base.Backend.prepare`: the fused twins where they run, else the
        encoder's weights take the memory layout of the device and precision (values
        unchanged)."""
        dtype = _FUSED.get(self.precision)
        if device.type == "cpu" and dtype is not None and fused_kernels_run(dtype):
            twins = FusedEDSR(model.encoder, dtype), FusedMLP(model.decoder, dtype)
            return FloatingRunner(model, device, self.precision, *twins)
        model.encoder.to(memory_format=memory_format(device, self.precision))
        return FloatingRunner(model, device, self.precision)


@functools.cache
def fused_kernels_run(dtype: torch.dtype) -> bool:
    """Whether this torch build runs the fused oneDNN kernels in ``dtype`` (a tiny probe)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        with torch.inference_mode():
            FusedEDSR(EDSR3d(2, 1), dtype)(torch.zeros(1, 1, 3, 4, 4))
            FusedMLP(MLPDecoder(4, 8, 3), dtype)(torch.zeros(3, 3), torch.zeros(1, 1))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False
    return True


def backend(precision: str) -> FloatingBackend:
    """The backend of float ``precision`` (:mod:`sainr.runtime.backends` registry)."""
    return FloatingBackend(precision)
