"""LASA: local-aware spatial attention over the two acquired slices bracketing a query.

For a query between slices s and s+1 at in-plane (y, x), the neighbours are an l x l window
(dilation d, edge-replicated) on both slices: 2 l^2 keys. Following the paper (Eq. 7), every
neighbour feature carries a linear embedding of its offset delta = (dz, dy, dx) to the query,
in LR voxel units (dz = -t on the lower slice, 1 - t on the upper one).

Because Phi, Gamma and Omega are linear, the embedding never has to be materialised per pair:
    <Theta z, Phi(F_n + Omega(delta_n))> = <Theta z, K_n> + <Omega_W^T Phi_W^T Theta z, delta_n>
                                           + <Phi_W^T Theta z, Omega_b>
    sum_n a_n Gamma(F_n + Omega(delta_n)) = sum_n a_n V_n + Gamma_W (Omega_W sum_n a_n delta_n + Omega_b)
with K = Phi(F) and V = Gamma(F) precomputed once on the LR grid. Each query then costs one
gather of 2 l^2 rows of K and V plus dot products.

Attention always runs in fp32, also inside a bf16/fp16 autocast region: its cost is the row
gather, not arithmetic, and under autocast every gathered fp32 row would be cast again per
query (measured: LASA 2.3x slower in bf16 on the CPU).
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
        self.value = nn.Linear(channels, channels)
        self.offset = nn.Linear(3, channels) if offset_embed else None
        self.scale = 1.0 / math.sqrt(channels) if attn_scale else 1.0
        half = window // 2
        steps = torch.arange(-half, half + 1) * dilation
        dy, dx = torch.meshgrid(steps, steps, indexing="ij")
        self.register_buffer("dy", dy.reshape(-1), persistent=False)
        self.register_buffer("dx", dx.reshape(-1), persistent=False)
        self.reach = half * dilation

    def project_kv(self, fm: FeatureMap) -> FeatureMap:
        """Precompute keys and values (fp32) on the LR grid, once per encoded volume."""
        with _full_precision(fm.feat):
            feat = fm.feat.float()
            fm.key = self.key(feat)
            fm.value = self.value(feat)
        return fm

    def neighbours(self, fm: FeatureMap, q: Queries) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat indices (Q, 2 l^2) of the neighbours and their offsets delta (Q, 2 l^2, 3)."""
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
        n_win = self.dy.numel()
        t = q.t.float()[:, None].expand(-1, n_win)
        dz = torch.cat([-t, 1 - t], dim=1)
        dyx = torch.stack([self.dy, self.dx], dim=-1).to(dz.dtype).repeat(2, 1)
        delta = torch.cat([dz[..., None], dyx.expand(len(q), -1, -1)], dim=-1)
        return idx, delta

    def forward(self, z0: torch.Tensor, fm: FeatureMap, q: Queries) -> torch.Tensor:
        """Attended features (Q, C, fp32) for query features z0 (Q, C) at queries q."""
        assert fm.key is not None and fm.value is not None, "call project_kv first"
        with _full_precision(z0):
            return self._attend(z0.float(), fm, q)

    def _attend(self, z0: torch.Tensor, fm: FeatureMap, q: Queries) -> torch.Tensor:
        idx, delta = self.neighbours(fm, q)
        qv = self.query(z0)
        logits = torch.einsum("qc,qnc->qn", qv, rows(fm.key, idx))
        if self.offset is not None:
            qk = qv @ self.key.weight
            logits = logits + torch.einsum("qd,qnd->qn", qk @ self.offset.weight, delta)
            logits = logits + (qk @ self.offset.bias)[:, None]
        attn = torch.softmax(logits * self.scale, dim=-1)
        out = torch.einsum("qn,qnc->qc", attn, rows(fm.value, idx))
        if self.offset is not None:
            mean_delta = torch.einsum("qn,qnd->qd", attn, delta)
            out = out + self.offset(mean_delta) @ self.value.weight.T
        return z0 + out


def _full_precision(like: torch.Tensor) -> torch.autocast:
    """An autocast-disabled region on the device of ``like``."""
    return torch.autocast(like.device.type, enabled=False)
