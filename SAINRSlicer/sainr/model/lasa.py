"""LASA: local-aware spatial attention over the two acquired slices bracketing a query.

For a query between slices s and s+1 at in-plane (y, x), the neighbours are an l x l window
(dilation d, edge-replicated) on both slices: 2 l^2 keys. Following the paper (Eq. 7), every
neighbour feature carries a linear embedding of its offset delta = (dz, dy, dx) to the query,
in LR voxel units (dz = -t on the lower slice, 1 - t on the upper one).

Because Phi, Gamma and Omega are linear and the attention weights a_n sum to one, nothing has
to be materialised per pair, not even keys and values: with u = Phi_W^T Theta z,
    <Theta z, Phi(F_n + Omega(delta_n))> = <u, F_n> + <Omega_W^T u, delta_n> + (terms equal
                                           for all n, which the softmax cancels)
    sum_n a_n Gamma(F_n + Omega(delta_n)) = Gamma(sum_n a_n F_n + Omega(sum_n a_n delta_n))
Each query then costs one gather of its 2 l^2 feature rows plus dot products: half the rows of
a gather of precomputed keys and values, and no per-volume projection. The offsets' share
splits into a through-plane term (dz depends on the query's t) and an in-plane one (the
window's, shared by all queries).

Attention always runs in fp32, also inside a bf16/fp16 autocast region: its cost is the row
gather, not arithmetic, so reduced precision saves nothing there and costs accuracy. Inference
hands it an fp32 feature table (converted once per tile); reduced-precision features, as in
mixed-precision training, are cast after the gather.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .features import FeatureMap, Queries, rows


class LASA(nn.Module):
    """Single-head attention of a query feature over its 2 l^2 slice neighbours, residual."""

    def __init__(
        self,
        channels: int,
        window: int = 7,
        dilation: int = 2,
        offset_embed: bool = True,
        attn_scale: bool = True,
    ) -> None:
        super().__init__()
        if window % 2 != 1:
            raise ValueError(f"window must be odd, got {window}")
        self.query = nn.Linear(channels, channels)
        self.key = nn.Linear(channels, channels)
        # the key's bias adds one logit to every neighbour alike, which the softmax cancels:
        # no gradient reaches it, so it is frozen (and kept: checkpoints hold it)
        self.key.bias.requires_grad_(False)
        self.value = nn.Linear(channels, channels)
        self.offset = nn.Linear(3, channels) if offset_embed else None
        self.scale = 1.0 / math.sqrt(channels) if attn_scale else 1.0
        half = window // 2
        steps = torch.arange(-half, half + 1) * dilation
        dy, dx = torch.meshgrid(steps, steps, indexing="ij")
        self.register_buffer("dy", dy.reshape(-1), persistent=False)
        self.register_buffer("dx", dx.reshape(-1), persistent=False)
        #: (2 l^2, 2) in-plane offsets (dy, dx) of the neighbours, lower slice then upper
        in_plane = torch.stack([dy.reshape(-1), dx.reshape(-1)], dim=-1).float().repeat(2, 1)
        self.register_buffer("in_plane", in_plane, persistent=False)
        self.reach = half * dilation

    @property
    def neighbour_count(self) -> int:
        """Neighbours each query attends to: 2 l^2."""
        return self.in_plane.shape[0]

    def macs_per_query(self) -> int:
        """Multiply-accumulates per attended query (module docstring): Theta, Phi_W^T and
        Gamma once, a logit and a weighted sum term per neighbour and, with the offset
        embedding, its weights twice (scoring the offsets, embedding their mean) plus two
        in-plane products per neighbour (their logits, their mean)."""
        c = self.query.in_features
        macs = sum(m.weight.numel() for m in (self.query, self.key, self.value))
        macs += 2 * self.neighbour_count * c
        if self.offset is not None:
            macs += 2 * self.offset.weight.numel() + 2 * self.in_plane.numel()
        return macs

    def neighbours(self, fm: FeatureMap, q: Queries) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat indices (Q, 2 l^2) of the neighbours and their through-plane offsets dz
        (Q, 2 l^2): -t on the lower slice, 1 - t on the upper. Their in-plane offsets are
        the window's, the same for every query (``in_plane``)."""
        _, n_s, n_h, n_w = fm.shape
        ys = (q.y[:, None] + self.dy).clamp_(0, n_h - 1)
        xs = (q.x[:, None] + self.dx).clamp_(0, n_w - 1)
        upper = torch.clamp(q.s + 1, max=n_s - 1)
        idx = torch.cat(
            [
                fm.flat_index(q.b[:, None], q.s[:, None], ys, xs),
                fm.flat_index(q.b[:, None], upper[:, None], ys, xs),
            ],
            dim=1,
        )
        t = q.t.float()[:, None].expand(-1, self.dy.numel())
        return idx, torch.cat([-t, 1 - t], dim=1)

    def forward(self, z0: torch.Tensor, fm: FeatureMap, q: Queries) -> torch.Tensor:
        """Attended features (Q, C, fp32) for query features z0 (Q, C) at queries q."""
        with _full_precision(z0):
            return self._attend(z0.float(), fm, q)

    def _attend(self, z0: torch.Tensor, fm: FeatureMap, q: Queries) -> torch.Tensor:
        idx, dz = self.neighbours(fm, q)
        feat = rows(fm.feat, idx).float()  # (Q, 2 l^2, C)
        qk = self.query(z0) @ self.key.weight  # Phi_W^T Theta z: scores features directly
        logits = torch.einsum("qc,qnc->qn", qk, feat)
        if self.offset is not None:
            w = qk @ self.offset.weight  # (Q, 3): the weight of dz, dy and dx in the logit
            logits = logits + w[:, :1] * dz + w[:, 1:] @ self.in_plane.T
        attn = torch.softmax(logits * self.scale, dim=-1)
        mixed = torch.einsum("qn,qnc->qc", attn, feat)
        if self.offset is not None:
            mean_dz = (attn * dz).sum(dim=1, keepdim=True)
            mixed = mixed + self.offset(torch.cat([mean_dz, attn @ self.in_plane], dim=1))
        return z0 + self.value(mixed)


def _full_precision(like: torch.Tensor) -> torch.autocast:
    """An autocast-disabled region on the device of ``like``."""
    return torch.autocast(like.device.type, enabled=False)
