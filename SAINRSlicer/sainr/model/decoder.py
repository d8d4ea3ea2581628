"""MLP decoder: query feature -> intensity residual over the linear interpolation."""

from __future__ import annotations

import torch
from torch import nn


class MLPDecoder(nn.Module):
    """``layers`` linear layers with ReLU between them and a scalar output."""

    def __init__(self, in_dim: int, hidden: int = 256, layers: int = 5) -> None:
        super().__init__()
        dims = [in_dim] + [hidden] * (layers - 1)
        blocks: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            blocks += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        blocks.append(nn.Linear(dims[-1], 1))
        self.net = nn.Sequential(*blocks)

    def linears(self) -> list[nn.Linear]:
        """The linear layers, input to output (a ReLU after each but the last)."""
        return [m for m in self.net if isinstance(m, nn.Linear)]

    @property
    def width(self) -> int:
        """The widest layer's outputs (the hidden width)."""
        return max(layer.out_features for layer in self.linears())

    def macs_per_query(self) -> int:
        """Multiply-accumulates per query: every layer's weights once."""
        return sum(layer.weight.numel() for layer in self.linears())

    def forward(self, z: torch.Tensor, shared: torch.Tensor | None = None) -> torch.Tensor:
        """Scalar per row of ``z`` (Q, in_dim); ``shared`` as in :meth:`first_layer`."""
        if shared is None:
            return self.net(z).squeeze(-1)
        return self.net[2:](self.first_layer(z, shared)).squeeze(-1)

    def first_layer(self, z: torch.Tensor, shared: torch.Tensor | None = None) -> torch.Tensor:
        """ReLU output of the first layer. With ``shared`` (J, k), the last k inputs are the
        same within each of J equal consecutive groups of rows and ``z`` holds only the
        others (Q, in_dim - k): their part of the layer is computed once per group (the
        conditions of a thin slice), which also saves concatenating them per query."""
        first = self.linears()[0]
        if shared is None:
            return torch.relu(first(z))
        w_rows, bias = split_shared(first.weight, first.bias, shared)
        hidden = torch.matmul(z.view(len(shared), -1, z.shape[1]), w_rows.T)
        return (hidden + bias[:, None].to(hidden.dtype)).relu_().view(len(z), -1)


def split_shared(
    weight: torch.Tensor, bias: torch.Tensor, shared: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A first layer (``weight``, ``bias``) whose last k inputs are ``shared`` (J, k) within
    each of J groups of rows: the weight on the other inputs, and the J biases with the shared
    inputs' part folded in."""
    n_shared = shared.shape[1]
    folded = torch.addmm(bias, shared.to(bias.dtype), weight[:, -n_shared:].T)
    return weight[:, :-n_shared], folded
