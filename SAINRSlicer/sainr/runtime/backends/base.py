"""What the tiler (:mod:`sainr.runtime.inference`) asks of a precision's backend.

A :class:`Backend` prepares a model for one volume and returns a :class:`Runner`; the runner
encodes each tile and, per tile, gives the function that answers its thin-slice queries. How
the arithmetic is done (autocast, memory layout, lowered int8 twins calibrated on the volume)
stays inside the backend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from ...geometry import SliceGrid
from ...model import SAINR, FeatureMap, Queries, QueryOutput, SliceQueries

#: Answers whole-thin-slice queries of one encoded tile.
TileDecoder = Callable[[SliceQueries], QueryOutput]

#: :attr:`Runner.encoder_floats` of the float model's own encoder (autocast, no twin), the
#: most any backend keeps: the tiler's assumption where no backend is named.
ENCODER_FLOATS = 6.0


@dataclass(frozen=True)
class Tile:
    """One encoded tile: the volume's thin-slice grid and the tile's core rows and columns
    in the tile's own coordinates (the halo around them is context only)."""

    grid: SliceGrid
    ys: slice
    xs: slice

    def random_queries(self, n: int, seed: int = 0) -> Queries:
        """``n`` thin-slice point queries at random (seeded) over the core."""
        gen = torch.Generator().manual_seed(seed)
        j = torch.randint(0, self.grid.n_hr, (n,), generator=gen)
        return Queries(
            b=torch.zeros(n, dtype=torch.long),
            s=torch.as_tensor(self.grid.lower)[j],
            y=torch.randint(self.ys.start, self.ys.stop, (n,), generator=gen),
            x=torch.randint(self.xs.start, self.xs.stop, (n,), generator=gen),
            t=torch.as_tensor(self.grid.frac, dtype=torch.float32)[j],
        )


class Runner(Protocol):
    """A model prepared for one volume at one precision."""

    #: Peak live encoder activations per LR voxel and feature channel while a tile is
    #: encoded, in 4-byte units (measured with a margin, docs/benchmark.md): the tiler sizes
    #: tiles by it, so a leaner encoder encodes larger tiles and repeats less halo.
    encoder_floats: float

    def encode(self, lr: torch.Tensor, acquisition: torch.Tensor) -> FeatureMap:
        """Features of one tile ``lr`` (1, 1, S, h, w), normalised fp32 on the model's
        device; the feature table comes back fp32 (the attention reads it)."""
        ...

    def decoder(self, fm: FeatureMap, tile: Tile) -> TileDecoder:
        """What answers the thin-slice queries of encoded ``tile``."""
        ...


class Backend(Protocol):
    """One precision's way of running a model."""

    def available(self) -> bool:
        """Whether this PyTorch build has what the backend runs on."""
        ...

    def prepare(self, model: SAINR, volume: np.ndarray, device: torch.device) -> Runner:
        """A runner for ``model`` (eval mode, on ``device``) over normalised ``volume``
        (S, H, W); the model's values are left as they are."""
        ...
