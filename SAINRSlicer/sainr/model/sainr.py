"""SA-INR: encoder once per volume, then gated local attention and an MLP per thin-slice query."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple

import torch
from torch import nn

from .decoder import MLPDecoder
from .edsr import EDSR3d
from .features import FeatureMap, Queries, SliceQueries, encode_grid
from .gating import GatingMask
from .lasa import LASA

#: Inputs of a conditioned decoder beside the feature: t, 1 / r, slice thickness / spacing.
CONDITIONS = 3


@dataclass(frozen=True)
class ModelConfig:
    """Architecture hyper-parameters (stored with every checkpoint)."""

    channels: int = 64
    blocks: int = 8
    window: int = 7
    dilation: int = 2
    hidden: int = 256
    decoder_layers: int = 5
    offset_embed: bool = True
    attn_scale: bool = True
    lasa: bool = True
    gating: bool = True
    #: the decoder is also told (t, 1/r, slice thickness / spacing), so that one model serves
    #: decimated, contiguous and gapped acquisitions and deblurs the acquired slices too
    conditioning: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class QueryOutput(NamedTuple):
    value: torch.Tensor  # (Q,) predicted intensity (normalised units)
    mask_logit: torch.Tensor  # (Q,) gating logit
    mask: torch.Tensor  # (Q,) 0/1 gating decision (straight-through in training)


class SAINR(nn.Module):
    """Spatial-attention implicit neural representation for slice-spacing reduction."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or ModelConfig()
        self.encoder = EDSR3d(cfg.channels, cfg.blocks)
        self.gate = GatingMask(cfg.channels) if cfg.lasa and cfg.gating else None
        self.lasa = (
            LASA(cfg.channels, cfg.window, cfg.dilation, cfg.offset_embed, cfg.attn_scale)
            if cfg.lasa
            else None
        )
        n_cond = CONDITIONS if cfg.conditioning else 0
        self.decoder = MLPDecoder(cfg.channels + n_cond, cfg.hidden, cfg.decoder_layers)

    @property
    def halo(self) -> int:
        """In-plane context (voxels) one output voxel depends on: encoder + attention window."""
        return self.encoder.receptive_radius + (self.lasa.reach if self.lasa else 0)

    def encode(
        self,
        lr: torch.Tensor,
        acquisition: torch.Tensor | None = None,
        encoder: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> FeatureMap:
        """Features of LR volumes (B, 1, S, H, W) with S the slice axis; run once per volume.
        ``acquisition`` (B, 2) holds 1 / factor and the relative slice thickness of each
        volume (:func:`acquisition_tensor`); a conditioned model needs it. ``encoder`` stands
        in for the model's own (same input and output), e.g. a lowered copy of it."""
        run = self.encoder if encoder is None else encoder
        return encode_grid(run(lr), lr, acquisition)

    def query(self, fm: FeatureMap, q: Queries) -> QueryOutput:
        """Intensities at thin-slice queries: MLP(attended feature) + linear interpolation."""
        z, linear, logit, mask = self._attended(fm, q)
        return QueryOutput(self.decoder(self._with_conditions(z, fm, q)) + linear, logit, mask)

    def decoder_inputs(self, fm: FeatureMap, q: Queries) -> torch.Tensor:
        """The rows (Q, decoder inputs) the decoder reads for queries ``q``: attended feature
        and, for a conditioned model, the query's conditions. What a stand-in decoder is
        calibrated on."""
        z, *_ = self._attended(fm, q)
        return self._with_conditions(z, fm, q)

    def forward(
        self, lr: torch.Tensor, q: Queries, acquisition: torch.Tensor | None = None
    ) -> QueryOutput:
        """Encode LR volumes and answer queries (the training path; DDP wraps this)."""
        return self.query(self.encode(lr, acquisition), q)

    def query_slices(
        self,
        fm: FeatureMap,
        sq: SliceQueries,
        decoder: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None,
    ) -> QueryOutput:
        """:meth:`query` for whole thin slices of one volume (inference): features are read
        slice by slice, only gated queries get positions for the attention, and the
        decoder takes each slice's conditions once. Same values as :meth:`query`.
        ``decoder`` stands in for the model's own (same call as :meth:`MLPDecoder.forward`)."""
        decode = self.decoder if decoder is None else decoder
        z0, linear = fm.lerp_slices(sq)
        shared = fm.slice_conditions(sq) if self.config.conditioning else None
        if self.lasa is None:
            ones = torch.ones_like(linear)
            return QueryOutput(decode(z0, shared) + linear, ones, ones)
        logit, mask = self._gate(z0, linear)
        z = self._attend_gated(z0, fm, sq, mask)
        return QueryOutput(decode(z, shared) + linear, logit, mask)

    def _attended(
        self, fm: FeatureMap, q: Queries
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(attended feature, linear interpolation, gate logit, 0/1 gate) of point queries."""
        z0, linear = fm.lerp(q)
        if self.lasa is None:
            ones = torch.ones_like(linear)
            return z0, linear, ones, ones
        logit, mask = self._gate(z0, linear)
        return self._attend(z0, fm, q, mask), linear, logit, mask

    def _with_conditions(self, z: torch.Tensor, fm: FeatureMap, q: Queries) -> torch.Tensor:
        """Decoder input rows: ``z`` and, for a conditioned model, the queries' position and
        acquisition."""
        if self.config.conditioning:
            return torch.cat([z, fm.conditions(q).to(z.dtype)], dim=1)
        return z

    def _gate(self, z0: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logit, 0/1 mask) of the gate; every query attends when the gate is removed."""
        if self.gate is None:
            return torch.full_like(like, float("inf")), torch.ones_like(like)
        return self.gate(z0)

    def _attend(
        self, z0: torch.Tensor, fm: FeatureMap, q: Queries, mask: torch.Tensor
    ) -> torch.Tensor:
        """Training: blend with the straight-through mask so fidelity teaches the gate.
        Inference: run LASA only on gated queries."""
        assert self.lasa is not None
        if self.training:
            return z0 + mask[:, None] * (self.lasa(z0, fm, q) - z0)
        return self._attend_gated(z0, fm, q, mask)

    def _attend_gated(
        self, z0: torch.Tensor, fm: FeatureMap, q: Queries | SliceQueries, mask: torch.Tensor
    ) -> torch.Tensor:
        """LASA on the gated queries only (gather, attend, scatter); the rest keep z0."""
        assert self.lasa is not None
        keep = torch.nonzero(mask > 0.5).squeeze(1)
        if keep.numel() == len(q):
            return self.lasa(z0, fm, q.select(None))
        z = z0.clone()
        if keep.numel():
            # under autocast LASA may return another float type than the features it gathered
            z[keep] = self.lasa(z0[keep], fm, q.select(keep)).to(z.dtype)
        return z


@contextmanager
def gating_disabled(model: SAINR) -> Iterator[SAINR]:
    """Temporarily remove the model's gate so that every query goes through LASA (the
    ungated reference of the evaluation and the benchmark)."""
    gate = model.gate
    model.gate = None
    try:
        yield model
    finally:
        model.gate = gate
