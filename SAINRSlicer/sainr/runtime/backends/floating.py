"""fp32, bf16 and fp16: the float model as it is, under autocast for the reduced precisions
and with the encoder in the memory layout that suits them (:mod:`sainr.runtime.precision`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...model import SAINR, FeatureMap, QueryOutput, SliceQueries
from ..precision import autocast, memory_format
from .base import Tile, TileDecoder


@dataclass(frozen=True)
class FloatingRunner:
    """The model at one float precision on one device."""

    model: SAINR
    device: torch.device
    precision: str

    def encode(self, lr: torch.Tensor, acquisition: torch.Tensor) -> FeatureMap:
        """As :meth:`.base.Runner.encode`."""
        layout = memory_format(self.device, self.precision)
        with autocast(self.device, self.precision):
            fm = self.model.encode(lr.contiguous(memory_format=layout), acquisition)
        fm.feat = fm.feat.float()
        return fm

    def decoder(self, fm: FeatureMap, tile: Tile) -> TileDecoder:
        """As :meth:`.base.Runner.decoder`: the model's own, under autocast."""

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
        """As :meth:`.base.Backend.prepare`: the encoder's weights take the memory layout of
        the device and precision (values unchanged)."""
        model.encoder.to(memory_format=memory_format(device, self.precision))
        return FloatingRunner(model, device, self.precision)


def backend(precision: str) -> FloatingBackend:
    """The backend of float ``precision`` (:mod:`sainr.runtime.backends` registry)."""
    return FloatingBackend(precision)
