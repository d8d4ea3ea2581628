"""Gradient-guided gating mask: which queries are 'difficult' enough to get attention."""

from __future__ import annotations

import torch
from torch import nn


def logistic_noise_like(x: torch.Tensor) -> torch.Tensor:
    """g1 - g2 for two i.i.d. Gumbel(0, 1) samples (a standard logistic sample)."""
    u = torch.rand_like(x).clamp_(1e-6, 1 - 1e-6)
    return torch.log(u) - torch.log1p(-u)


class GatingMask(nn.Module):
    """One linear logit per query feature.

    Training: binary Gumbel-softmax (temperature 1), hard 0.5 threshold in the forward pass,
    straight-through gradient of the soft sample in the backward pass. Evaluation: the
    deterministic threshold sigma(logit) >= 0.5. Noise depends only on ``self.training``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(channels, 1)

    def macs_per_query(self) -> int:
        """Multiply-accumulates per query: the one logit."""
        return self.proj.weight.numel()

    def forward(self, z0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (logit, mask) for query features z0 of shape (Q, C); mask is 0/1 valued."""
        logit = self.proj(z0).squeeze(-1)
        if not self.training:
            return logit, (logit >= 0).to(z0.dtype)
        soft = torch.sigmoid(logit + logistic_noise_like(logit))
        hard = (soft >= 0.5).to(soft.dtype)
        return logit, hard + (soft - soft.detach())
