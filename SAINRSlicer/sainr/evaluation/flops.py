"""Multiply-accumulate counts of SA-INR for one slab, in the paper's accounting (Table III).

The paper's "GFLOPs" are thop MAC counts for one slab: an LR input of 256 x 256 x 2 (two
acquired slices) decoded to the 256^2 (k + 1) thin-slice queries between them. As in thop,
convolution and linear layers count (input features x outputs); biases, activations, softmax
and element-wise operations count nothing.

Two accountings of LASA per attended query (n = 2 l^2 neighbours, C channels):
- ``paper``: the official code projects every gathered (query, neighbour) pair with Phi and
  Gamma, n 2 C^2, plus the query projection C^2, and predicts two gating logits (2 C MACs).
- ``ours`` (:mod:`sainr.model.lasa`): nothing is projected per neighbour or per LR voxel; a
  query costs Theta and Phi_W^T (2 C^2), n C for the logits, n C for the weighted feature
  sum and Gamma once (C^2), plus the offset-embedding terms (6 C + 4 n); one gating logit
  (C MACs).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..geometry import slice_count
from ..model import ModelConfig

ACCOUNTINGS = ("paper", "ours")
_KERNEL = 27  # 3 x 3 x 3 convolutions


@dataclass(frozen=True)
class Slab:
    """The paper's unit of work: ``side`` x ``side`` x ``lr_slices`` LR voxels."""

    side: int = 256
    lr_slices: int = 2

    @property
    def voxels(self) -> int:
        return self.side**2 * self.lr_slices

    def queries(self, factor: float) -> int:
        """Thin-slice queries of the slab at reduction ``factor``: side^2 per thin slice."""
        return self.side**2 * slice_count(self.lr_slices, factor)


def encoder_macs_per_voxel(cfg: ModelConfig) -> int:
    """3D EDSR: head conv 1 -> C, then 2 B + 1 convs C -> C, all 3 x 3 x 3."""
    return _KERNEL * cfg.channels + (2 * cfg.blocks + 1) * _KERNEL * cfg.channels**2


def decoder_macs_per_query(cfg: ModelConfig) -> int:
    """MLP C -> hidden -> ... -> 1 with ``decoder_layers`` linear layers."""
    dims = [cfg.channels] + [cfg.hidden] * (cfg.decoder_layers - 1) + [1]
    return sum(a * b for a, b in zip(dims[:-1], dims[1:], strict=True))


def lasa_macs_per_query(cfg: ModelConfig, accounting: str) -> int:
    """LASA MACs of one attended query (see the module docstring)."""
    c, n = cfg.channels, 2 * cfg.window**2
    if accounting == "paper":
        return n * 2 * c**2 + c**2
    offset = 6 * c + 4 * n if cfg.offset_embed else 0
    return 3 * c**2 + 2 * n * c + offset


def slab_macs(
    cfg: ModelConfig,
    factor: float,
    attended: float = 1.0,
    accounting: str = "ours",
    slab: Slab = Slab(),
) -> dict[str, float]:
    """MACs per component on one slab at reduction ``factor``; ``attended`` is the fraction of
    queries that go through LASA (the gated fraction; forced to 1 without gating)."""
    if accounting not in ACCOUNTINGS:
        raise ValueError(f"unknown accounting {accounting!r}; use one of {ACCOUNTINGS}")
    if not 0.0 <= attended <= 1.0:
        raise ValueError(f"attended fraction must be in [0, 1], got {attended}")
    queries = slab.queries(factor)
    out = {
        "encoder": float(encoder_macs_per_voxel(cfg) * slab.voxels),
        "gate": 0.0,
        "lasa": 0.0,
        "decoder": float(decoder_macs_per_query(cfg) * queries),
    }
    if cfg.lasa:
        g = attended if cfg.gating else 1.0
        out["lasa"] = g * queries * lasa_macs_per_query(cfg, accounting)
        if cfg.gating:
            out["gate"] = float(queries * cfg.channels * (2 if accounting == "paper" else 1))
    out["total"] = sum(out.values())
    return out


def _row(label: str, cfg: ModelConfig, factors, attended: float, accounting: str) -> str:
    cells = [f"{slab_macs(cfg, k, attended, accounting)['total'] / 1e9:.1f}" for k in factors]
    return f"| {label} | " + " | ".join(cells) + " |"


def flops_table(
    cfg: ModelConfig, factors: tuple[float, ...] = (2, 3, 4), attended: float | None = None
) -> str:
    """Markdown table of GMACs per 256 x 256 x 2 slab ("GFLOPs" as in the paper's Table III):
    without LASA, LASA on every query and, given ``attended``, LASA on that fraction; each
    LASA row in the paper's accounting and in ours."""
    head = "| variant | " + " | ".join(f"×{k:g}" for k in factors) + " |"
    lines = [head, "|---|" + "---|" * len(factors)]
    lines.append(
        _row("encoder + MLP, no LASA", replace(cfg, lasa=False, gating=False), factors, 1.0, "ours")
    )
    if cfg.lasa:
        ungated = replace(cfg, gating=False)
        for accounting, label in (
            ("paper", "as coded in the paper"),
            ("ours", "ours, no per-pair projection"),
        ):
            lines.append(_row(f"LASA on all queries, {label}", ungated, factors, 1.0, accounting))
            if cfg.gating and attended is not None:
                lines.append(
                    _row(
                        f"LASA on {100 * attended:.0f} % (gated), {label}",
                        cfg,
                        factors,
                        attended,
                        accounting,
                    )
                )
    return "\n".join(lines)
