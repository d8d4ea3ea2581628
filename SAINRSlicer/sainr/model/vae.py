"""Slice VAE: a small fully-convolutional 2D variational auto-encoder for in-plane MRI slices.

Stage I of SA-INR's self-supervised training (Xuan et al. 2021) embeds the sharp in-plane slices
of real thick-slice volumes and makes intermediate slices by decoding interpolated embeddings.
The latent here is *spatial* (a few channels at 1/8 of the slice resolution, one mean and one
log-variance map each), so interpolating two latents moves anatomy locally instead of blending
whole-slice codes. Encoder and decoder are mirrored stacks of stride-2 stages with small
GroupNorm-SiLU residual blocks. Any slice size works: the input is edge-padded to a multiple of
the total stride and the output cropped back. ``forward`` samples the posterior
(reparameterisation) in training mode and returns its mean in evaluation mode.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

#: log-variance is clamped to this range so exp() never overflows early in training.
LOGVAR_RANGE = (-30.0, 20.0)


@dataclass(frozen=True)
class VAEConfig:
    """Architecture hyper-parameters (stored with every VAE checkpoint)."""

    widths: tuple[int, ...] = (16, 32, 64)  # channels of each stride-2 stage
    latent: int = 4  # latent channels

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VAEConfig:
        known = {f.name for f in fields(cls)}
        if set(data) - known:
            raise ValueError(f"unknown VAE config keys: {sorted(set(data) - known)}")
        cfg = cls(**{**data, **({"widths": tuple(data["widths"])} if "widths" in data else {})})
        if not cfg.widths or min(cfg.widths) < 1 or cfg.latent < 1:
            raise ValueError(f"VAE widths and latent must be positive, got {cfg}")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "widths": list(self.widths)}


class VAEOutput(NamedTuple):
    recon: torch.Tensor  # (B, 1, H, W)
    mu: torch.Tensor  # (B, latent, ceil(H / stride), ceil(W / stride))
    logvar: torch.Tensor


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(channels, 8), channels)


class ResBlock2d(nn.Module):
    """norm-SiLU-conv twice, added to the (1x1-projected when widths differ) input. The last
    conv starts at zero, so every block starts as the identity and the untrained network is
    effectively shallow: reconstructions improve from the first steps."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _norm(c_in),
            nn.SiLU(),
            nn.Conv2d(c_in, c_out, 3, padding=1),
            _norm(c_out),
            nn.SiLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1),
        )
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class SliceVAE(nn.Module):
    """1-channel slice -> spatial Gaussian posterior (mu, logvar) -> 1-channel slice."""

    def __init__(self, config: VAEConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or VAEConfig()
        self.stride = 2 ** len(cfg.widths)
        enc: list[nn.Module] = [nn.Conv2d(1, cfg.widths[0], 3, padding=1)]
        prev = cfg.widths[0]
        for width in cfg.widths:
            enc += [ResBlock2d(prev, width), nn.Conv2d(width, width, 3, stride=2, padding=1)]
            prev = width
        enc += [
            ResBlock2d(prev, prev),
            _norm(prev),
            nn.SiLU(),
            nn.Conv2d(prev, 2 * cfg.latent, 3, padding=1),
        ]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(cfg.latent, prev, 3, padding=1), ResBlock2d(prev, prev)]
        for width in reversed(cfg.widths):
            dec += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(prev, width, 3, padding=1),
                ResBlock2d(width, width),
            ]
            prev = width
        dec += [_norm(prev), nn.SiLU(), nn.Conv2d(prev, 1, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior (mu, logvar) of slices (B, 1, H, W), H and W edge-padded to the stride."""
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % self.stride, -w % self.stride
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(*LOGVAR_RANGE)

    def decode(self, z: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Slices (B, 1, H, W) from latents, cropped to ``size`` (default: the padded size)."""
        out = self.decoder(z)
        return out if size is None else out[..., : size[0], : size[1]]

    def forward(self, x: torch.Tensor) -> VAEOutput:
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        return VAEOutput(self.decode(z, tuple(x.shape[-2:])), mu, logvar)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)), averaged over latent elements (nats per element)."""
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).mean()
