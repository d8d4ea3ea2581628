"""A narrower SA-INR cut from a trained one: the warm start of a distilled student.

Structured pruning keeps whole channels: the ``channels`` feature channels (the encoder's
residual stream, which the gate, the attention and the decoder read) and, per residual
block, the ``channels`` inner channels, and per decoder layer the ``hidden`` units, whose
weights carry the most (the norms of every weight that writes or reads each one, each weight's
scaled to mean 1, summed). The
attention's inner width follows the channels, its scale too. The cut model answers roughly
what the wide one does, so distillation starts near the teacher instead of from scratch.
A shallower cut keeps some of the encoder's residual blocks: each block adds its branch to
the stream, so leaving one out lets the stream pass unchanged, and the blocks kept still read
and write the features they were trained on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn

from ..model import SAINR
from ..model.edsr import ResBlock3d


def narrowed(
    model: SAINR, channels: int, hidden: int, blocks: Sequence[int] | None = None
) -> SAINR:
    """A copy of ``model`` with ``channels`` feature channels and ``hidden`` decoder units,
    initialised from the strongest ones of ``model``, and only its residual ``blocks`` (indices,
    in order; None: all). Same window and options."""
    cfg = model.config
    if channels > cfg.channels or hidden > cfg.hidden:
        raise ValueError(
            f"cannot widen {cfg.channels} channels / {cfg.hidden} units to {channels} / {hidden}"
        )
    kept = list(range(cfg.blocks)) if blocks is None else list(blocks)
    if not kept or sorted(set(kept)) != kept or not 0 <= kept[0] <= kept[-1] < cfg.blocks:
        raise ValueError(
            f"blocks to keep must be increasing indices below {cfg.blocks}, got {list(blocks or [])}"
        )
    small = SAINR(replace(cfg, channels=channels, hidden=hidden, blocks=len(kept)))
    wide_blocks = list(model.encoder.residual_blocks())
    source = [wide_blocks[k] for k in kept]
    stream = _strongest(_stream_weights(model, source), channels)
    with torch.no_grad():
        _cut_encoder(model, small, stream, source)
        if model.gate is not None:
            _copy(small.gate.proj, model.gate.proj, cols=stream)
        if model.lasa is not None:
            _cut_attention(model, small, stream)
        _cut_decoder(model, small, stream)
    return small


def _strongest(pairs: list[tuple[torch.Tensor, int]], keep: int) -> torch.Tensor:
    """Indices (sorted) of the ``keep`` channels with the largest summed importance over
    ``pairs`` of (weight, axis of the channel), each weight's norms scaled to mean 1."""
    score = 0
    for weight, axis in pairs:
        other = [d for d in range(weight.ndim) if d != axis]
        norms = weight.detach().float().pow(2).sum(dim=other).sqrt()
        score = score + norms / norms.mean().clamp_min(1e-12)
    return torch.sort(torch.topk(score, keep).indices).values


def _stream_weights(model: SAINR, blocks: list[ResBlock3d]) -> list[tuple[torch.Tensor, int]]:
    """Every weight that writes (axis 0) or reads (axis 1) the feature channels, of the
    residual ``blocks`` that are kept."""
    enc = model.encoder
    pairs = [(enc.head.weight, 0), (enc.tail.weight, 0), (enc.tail.weight, 1)]
    for block in blocks:
        first, second = block.convs()
        pairs += [(first.weight, 1), (second.weight, 0)]
    first_layer = model.decoder.linears()[0].weight[:, : enc.channels]
    pairs.append((first_layer, 1))
    if model.gate is not None:
        pairs.append((model.gate.proj.weight, 1))
    if model.lasa is not None:
        lasa = model.lasa
        pairs += [(lasa.query.weight, 1), (lasa.key.weight, 1), (lasa.value.weight, 0)]
    return pairs


def _copy(
    dst: nn.Module,
    src: nn.Module,
    rows: torch.Tensor | None = None,
    cols: torch.Tensor | None = None,
    scale: float = 1.0,
) -> None:
    """``dst``'s weight (and bias) = ``src``'s at output ``rows`` and input ``cols``."""
    weight = src.weight
    if rows is not None:
        weight = weight[rows]
    if cols is not None:
        weight = weight[:, cols]
    dst.weight.copy_(weight * scale)
    if dst.bias is not None:
        dst.bias.copy_((src.bias if rows is None else src.bias[rows]) * scale)


def _cut_encoder(
    model: SAINR, small: SAINR, stream: torch.Tensor, blocks: list[ResBlock3d]
) -> None:
    """Head, the kept residual ``blocks`` (inner channels: their strongest) and tail."""
    big, cut = model.encoder, small.encoder
    _copy(cut.head, big.head, rows=stream)
    for wide, narrow in zip(blocks, cut.residual_blocks(), strict=True):
        (first, second), (first_cut, second_cut) = wide.convs(), narrow.convs()
        inner = _strongest([(first.weight, 0), (second.weight, 1)], len(stream))
        _copy(first_cut, first, rows=inner, cols=stream)
        _copy(second_cut, second, rows=stream, cols=inner)
    _copy(cut.tail, big.tail, rows=stream, cols=stream)


def _cut_attention(model: SAINR, small: SAINR, stream: torch.Tensor) -> None:
    """Query and key keep their strongest inner dimensions (scaled so the logits keep their
    size under the narrower 1 / sqrt(C)); value and offset write the kept stream."""
    big, cut = model.lasa, small.lasa
    inner = _strongest([(big.query.weight, 0), (big.key.weight, 0)], len(stream))
    scale = math.sqrt(big.scale / cut.scale)
    _copy(cut.query, big.query, rows=inner, cols=stream, scale=scale)
    _copy(cut.key, big.key, rows=inner, cols=stream, scale=scale)
    _copy(cut.value, big.value, rows=stream, cols=stream)
    if big.offset is not None:
        _copy(cut.offset, big.offset, rows=stream)


def _cut_decoder(model: SAINR, small: SAINR, stream: torch.Tensor) -> None:
    """The first layer reads the kept stream and the conditions; each hidden layer keeps its
    strongest units."""
    layers, cut = model.decoder.linears(), small.decoder.linears()
    extra = torch.arange(model.encoder.channels, layers[0].in_features)  # the conditions
    cols, units = torch.cat([stream, extra]), small.config.hidden
    for k, (wide, narrow) in enumerate(zip(layers, cut, strict=True)):
        last = k == len(layers) - 1
        rows = None if last else _strongest([(wide.weight, 0), (layers[k + 1].weight, 1)], units)
        _copy(narrow, wide, rows=rows, cols=cols)
        cols = rows
