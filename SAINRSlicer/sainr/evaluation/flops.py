"""Multiply-accumulate counts of SA-INR for one slab, in the paper's accounting (Table III).

The paper's "GFLOPs" are thop MAC counts for one slab: an LR input of 256 x 256 x 2 (two
acquired slices) decoded to the 256^2 (k + 1) thin-slice queries between them. As in thop,
convolution and linear layers count (input features x outputs); biases, activations, softmax
and element-wise operations count nothing.

Two accountings of LASA per attended query (n = 2 l^2 neighbours, C channels):
- ``paper``: the official code projects every gathered (query, neighbour) pair with Phi and
  Gamma, n 2 C^2, plus the query projection C^2, and predicts two gating logits (2 C MACs).
- ``ours``: what the modules report of their own layers (:meth:`sainr.model.lasa.LASA.macs_per_query`
  and :meth:`sainr.model.gating.GatingMask.macs_per_query`): nothing is projected per
  neighbour or per LR voxel.

Encoder and decoder counts come from the modules too (:meth:`EDSR3d.macs_per_voxel`,
:meth:`MLPDecoder.macs_per_query`), built without weights (PyTorch's meta device), so a change
of architecture changes the counts with no edit here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import torch

from ..geometry import slice_count
from ..model import SAINR, ModelConfig

ACCOUNTINGS = ("paper", "ours")


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


@lru_cache(maxsize=8)
def _modules(cfg: ModelConfig) -> SAINR:
    """The model of ``cfg`` with shapes only (meta tensors): what the counts are read from."""
    with torch.device("meta"):
        return SAINR(cfg)


def encoder_macs_per_voxel(cfg: ModelConfig) -> int:
    """3D EDSR: every convolution once per voxel (:meth:`EDSR3d.macs_per_voxel`)."""
    return _modules(cfg).encoder.macs_per_voxel()


def decoder_macs_per_query(cfg: ModelConfig) -> int:
    """The MLP's layers once per query (:meth:`MLPDecoder.macs_per_query`)."""
    return _modules(cfg).decoder.macs_per_query()


def lasa_macs_per_query(cfg: ModelConfig, accounting: str) -> int:
    """LASA MACs of one attended query (see the module docstring)."""
    if accounting == "paper":
        c, n = cfg.channels, 2 * cfg.window**2
        return n * 2 * c**2 + c**2
    lasa = _modules(replace(cfg, lasa=True)).lasa
    assert lasa is not None
    return lasa.macs_per_query()


def gate_macs_per_query(cfg: ModelConfig, accounting: str) -> int:
    """Gating MACs of one query: the paper's code predicts two logits, ours one."""
    if accounting == "paper":
        return 2 * cfg.channels
    gate = _modules(replace(cfg, lasa=True, gating=True)).gate
    assert gate is not None
    return gate.macs_per_query()


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
            out["gate"] = float(queries * gate_macs_per_query(cfg, accounting))
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
