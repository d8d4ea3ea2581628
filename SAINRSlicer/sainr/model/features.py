"""The LR feature grid and the thin-slice queries that read from it.

Features are stored channels-last and flattened, (B*S*H*W, C), so that every read is a row
gather by flat index. S is the slice axis; H, W are in-plane. A query sits at an integer
in-plane position (y, x) between acquired slices ``s`` and ``s + 1`` at fraction ``t``.
Inference asks for whole thin slices over a tile region (:class:`SliceQueries`), whose
features are read slice by slice instead of gathered point by point.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` for a row table and an index tensor of any shape; index_select is
    about twice as fast as advanced indexing on the CPU."""
    return table.index_select(0, index.reshape(-1)).view(*index.shape, *table.shape[1:])


@dataclass
class Queries:
    """Thin-slice query positions; all tensors have shape (Q,)."""

    b: torch.Tensor  # batch index (long)
    s: torch.Tensor  # lower acquired slice (long)
    y: torch.Tensor  # in-plane row (long)
    x: torch.Tensor  # in-plane column (long)
    t: torch.Tensor  # fraction towards slice s + 1, in [0, 1)

    def __len__(self) -> int:
        return self.b.shape[0]

    def select(self, keep: torch.Tensor | None) -> Queries:
        """The subset at boolean mask or index tensor ``keep`` (None: all)."""
        if keep is None:
            return self
        return Queries(self.b[keep], self.s[keep], self.y[keep], self.x[keep], self.t[keep])


@dataclass
class SliceQueries:
    """Whole thin slices over one in-plane region of a single volume: J slices x the rows
    ``ys`` x the columns ``xs``, flattened slice-major. The regular-grid form of
    :class:`Queries` that inference uses: positions are implied, not stored per query."""

    lower: torch.Tensor  # (J,) acquired slice at or below each thin slice (long)
    t: torch.Tensor  # (J,) fraction towards the next acquired slice, in [0, 1)
    ys: slice
    xs: slice

    @property
    def pixels(self) -> int:
        """Queries per thin slice (region rows x columns)."""
        return (self.ys.stop - self.ys.start) * (self.xs.stop - self.xs.start)

    def __len__(self) -> int:
        return self.lower.shape[0] * self.pixels

    def select(self, keep: torch.Tensor | None) -> Queries:
        """Point queries at flat indices ``keep`` (None: all), for the attention's gathers."""
        if keep is None:
            keep = torch.arange(len(self), device=self.lower.device)
        j, pixel = keep // self.pixels, keep % self.pixels
        n_x = self.xs.stop - self.xs.start
        return Queries(
            b=torch.zeros_like(keep),
            s=self.lower[j],
            y=pixel // n_x + self.ys.start,
            x=pixel % n_x + self.xs.start,
            t=self.t[j],
        )


@dataclass
class FeatureMap:
    """Encoder output plus the LR image on the LR grid."""

    shape: tuple[int, int, int, int]  # (B, S, H, W)
    feat: torch.Tensor  # (N, C)
    image: torch.Tensor  # (N,)
    #: (B, 2) per volume: 1 / factor and slice thickness / slice spacing (see conditions)
    acquisition: torch.Tensor | None = None

    def flat_index(
        self, b: torch.Tensor, s: torch.Tensor, y: torch.Tensor, x: torch.Tensor
    ) -> torch.Tensor:
        """Flat row index of voxel (b, s, y, x); inputs broadcast."""
        _, n_s, n_h, n_w = self.shape
        return ((b * n_s + s) * n_h + y) * n_w + x

    def bracket(self, q: Queries) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat indices of the lower and upper acquired voxels (last slice replicated)."""
        upper = torch.clamp(q.s + 1, max=self.shape[1] - 1)
        return self.flat_index(q.b, q.s, q.y, q.x), self.flat_index(q.b, upper, q.y, q.x)

    def lerp(self, q: Queries) -> tuple[torch.Tensor, torch.Tensor]:
        """Linear blend along the slice axis of features (Q, C) and image (Q,) at the queries."""
        lo, hi = self.bracket(q)
        t = q.t.to(self.feat.dtype)
        feat = torch.lerp(rows(self.feat, lo), rows(self.feat, hi), t[:, None])
        image = torch.lerp(rows(self.image, lo), rows(self.image, hi), t.to(self.image.dtype))
        return feat, image

    def lerp_slices(self, sq: SliceQueries) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`lerp` for whole thin slices of a single volume: each thin slice blends two
        views of the region on its bracketing acquired slices straight into the output, with
        no gather (same values, a fraction of the time)."""
        _, n_s, n_h, n_w = self.shape
        feat = self.feat.view(n_s, n_h, n_w, -1)[:, sq.ys, sq.xs]
        image = self.image.view(n_s, n_h, n_w)[:, sq.ys, sq.xs]
        z = feat.new_empty((len(sq.t), *feat.shape[1:]))
        linear = image.new_empty((len(sq.t), *image.shape[1:]))
        weights = sq.t.to(self.feat.dtype).tolist()
        for j, (lo, t) in enumerate(zip(sq.lower.tolist(), weights)):
            hi = min(lo + 1, n_s - 1)
            torch.lerp(feat[lo], feat[hi], t, out=z[j])
            torch.lerp(image[lo], image[hi], t, out=linear[j])
        return z.view(len(sq), -1), linear.view(-1)

    def slice_conditions(self, sq: SliceQueries) -> torch.Tensor:
        """(J, 3) :meth:`conditions` of each thin slice: the same for all its queries."""
        if self.acquisition is None:
            raise ValueError("this model needs the acquisition (factor and slice thickness)")
        per_slice = self.acquisition[:1].to(sq.t.dtype).expand(len(sq.t), -1)
        return torch.cat([sq.t[:, None], per_slice], dim=1)

    def conditions(self, q: Queries) -> torch.Tensor:
        """(Q, 3) what a query's value depends on beyond its feature: its fraction ``t``
        between the acquired slices, 1 / r (how far apart they are in thin slices) and the
        acquired slice thickness relative to the spacing (how much each slice averages)."""
        if self.acquisition is None:
            raise ValueError("this model needs the acquisition (factor and slice thickness)")
        per_query = rows(self.acquisition.to(q.t.dtype), q.b)
        return torch.cat([q.t[:, None], per_query], dim=1)


def acquisition_tensor(factor: float, thickness: float, batch: int = 1) -> torch.Tensor:
    """The (B, 2) acquisition rows of :class:`FeatureMap` for one reduction ``factor`` (LR
    spacing / thin spacing) and relative slice ``thickness`` (thickness / LR spacing)."""
    return torch.tensor([[1.0 / factor, thickness]], dtype=torch.float32).repeat(batch, 1)


def encode_grid(
    feat: torch.Tensor, image: torch.Tensor, acquisition: torch.Tensor | None = None
) -> FeatureMap:
    """Flatten an encoder output (B, C, S, H, W) and its input (B, 1, S, H, W). The feature
    rows are made contiguous (a view of a channels-last output, a copy of any other): a row
    gather from the channel-major view of a default-layout output is several times slower."""
    n_b, n_c, n_s, n_h, n_w = feat.shape
    flat = feat.permute(0, 2, 3, 4, 1).reshape(-1, n_c).contiguous()
    return FeatureMap((n_b, n_s, n_h, n_w), flat, image.reshape(-1), acquisition=acquisition)
