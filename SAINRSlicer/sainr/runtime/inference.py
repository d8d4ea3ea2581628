"""Whole-volume inference in bounded memory.

The volume (slice axis first, normalised) is cut in-plane into tiles with a halo as wide as the
model's receptive field plus the attention reach, so every tile sees exactly the context the
untiled run would: the encoder runs once per tile, then the thin slices of the tile's core are
decoded in query chunks. Tile and chunk sizes come from a memory budget. Results do not depend
on the tiling (up to float rounding).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import Cancelled, ResourceError
from ..geometry import SliceGrid
from ..model import SAINR, SliceQueries, acquisition_tensor
from .backends import load_backend
from .backends.base import ENCODER_FLOATS, Tile
from .precision import resolve_precision

ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]
NoticeFn = Callable[[str], None]

DEFAULT_BUDGET_MB = 2048
#: Bytes per query per channel: gathered K and V of 2 l^2 neighbours plus temporaries.
_QUERY_FLOATS_PER_NEIGHBOUR = 3
#: Smallest in-plane core of a tile (a smaller budget still runs, over budget).
_MIN_CORE = 16


@dataclass(frozen=True)
class Plan:
    """Tiling of one volume: in-plane core tile (rows, columns, or one side for squares),
    halo and queries per chunk."""

    tile: int | tuple[int, int]
    halo: int
    chunk: int

    def tiles(self, n_h: int, n_w: int) -> Iterator[tuple[slice, slice]]:
        """Core regions covering the H x W plane."""
        t_h, t_w = (self.tile, self.tile) if isinstance(self.tile, int) else self.tile
        for y0 in range(0, n_h, t_h):
            for x0 in range(0, n_w, t_w):
                yield slice(y0, min(y0 + t_h, n_h)), slice(x0, min(x0 + t_w, n_w))


def encoded_extent(n: int, core: int, halo: int) -> tuple[int, int]:
    """(total, largest) length encoded along an axis of ``n`` voxels cut into cores of
    ``core``: each tile adds the halo on its inner sides only (none beyond the volume)."""
    spans = [min(a + core + halo, n) - max(a - halo, 0) for a in range(0, n, core)]
    return sum(spans), max(spans)


def _axis_options(n: int, halo: int) -> list[tuple[int, int, int]]:
    """(core, total, largest) for every number of tiles along an axis of ``n`` voxels."""
    cores = sorted({math.ceil(n / k) for k in range(1, max(n // _MIN_CORE, 1) + 1)}, reverse=True)
    return [(core, *encoded_extent(n, core, halo)) for core in cores]


def choose_tile(n_h: int, n_w: int, halo: int, max_area: int) -> tuple[int, int]:
    """Core tile (rows, columns) whose encoded tiles each fit ``max_area`` pixels and that
    encode the fewest pixels in all (halo overlap is repeated work): strips when a whole row
    fits, squares-ish otherwise. The smallest cores when nothing fits."""
    best: tuple[tuple[int, int], tuple[int, int]] | None = None
    for core_h, total_h, big_h in _axis_options(n_h, halo):
        for core_w, total_w, big_w in _axis_options(n_w, halo):
            if big_h * big_w > max_area:
                continue
            cost = (total_h * total_w, math.ceil(n_h / core_h) * math.ceil(n_w / core_w))
            if best is None or cost < best[0]:
                best = cost, (core_h, core_w)
    return best[1] if best else (min(_MIN_CORE, n_h), min(_MIN_CORE, n_w))


def plan(
    model: SAINR,
    shape: tuple[int, int, int],
    budget_mb: float,
    encoder_floats: float = ENCODER_FLOATS,
) -> Plan:
    """Tiling of an (S, H, W) volume and query chunk whose working sets fit ``budget_mb``:
    60 % for the encoder activations of one tile (``encoder_floats`` C floats per voxel, as
    the backend that runs it reports), 40 % for one chunk of queries."""
    n_s, n_h, n_w = shape
    budget = budget_mb * 2**20
    channels = model.encoder.channels
    per_pixel = 4 * channels * encoder_floats * n_s
    tile = choose_tile(n_h, n_w, model.halo, int(0.6 * budget / per_pixel))
    neighbours = model.lasa.neighbour_count if model.lasa is not None else 1
    per_query = 4 * (channels * neighbours * _QUERY_FLOATS_PER_NEIGHBOUR + 4 * model.decoder.width)
    chunk = max(int(0.4 * budget / per_query), 256)
    return Plan(tile=tile, halo=model.halo, chunk=chunk)


def _tile_slices(
    grid: SliceGrid, js: np.ndarray, ys: slice, xs: slice, off: tuple[int, int], device
) -> SliceQueries:
    """Thin slices ``js`` over core region (ys, xs), in tile coordinates."""
    return SliceQueries(
        lower=torch.as_tensor(grid.lower[js], device=device),
        t=torch.as_tensor(grid.frac[js], dtype=torch.float32, device=device),
        ys=_shift(ys, off[0]),
        xs=_shift(xs, off[1]),
    )


def query_chunks(
    n_hr: int, rows: slice, n_cols: int, chunk: int
) -> Iterator[tuple[np.ndarray, slice]]:
    """(thin slices, core rows) of each query chunk of a tile with ``rows`` x ``n_cols``
    core: whole slices, several per chunk while they fit ``chunk`` queries, else one slice
    cut into row blocks, so that no chunk exceeds the budget however large the tile."""
    per_slice = (rows.stop - rows.start) * n_cols
    if per_slice <= chunk:
        step = chunk // per_slice
        for j0 in range(0, n_hr, step):
            yield np.arange(j0, min(j0 + step, n_hr)), rows
        return
    block = max(chunk // n_cols, 1)
    for j in range(n_hr):
        for r0 in range(rows.start, rows.stop, block):
            yield np.array([j]), slice(r0, min(r0 + block, rows.stop))


@torch.inference_mode()
def super_resolve(
    model: SAINR,
    volume: np.ndarray,
    grid: SliceGrid,
    device: torch.device,
    budget_mb: float = DEFAULT_BUDGET_MB,
    precision: str = "auto",
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    tile_plan: Plan | None = None,
    thickness: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Thin-slice volume (n_hr, H, W) and gating mask (uint8) from normalised ``volume`` (S, H, W).

    ``thickness`` is the acquired slice thickness relative to the slice spacing (1 = contiguous
    thick slices, the usual clinical case; < 1 = gaps); a conditioned model adapts its output
    to it, others ignore it.

    ``progress(done, total)`` counts decoded voxels; ``cancel()`` returning True stops the
    run between chunks with :class:`Cancelled`. The model is moved to ``device``; the
    resolved ``precision``'s backend (:mod:`sainr.runtime.backends`) runs it, leaving its
    values unchanged.
    """
    backend = load_backend(resolve_precision(device, precision))
    model = model.eval().to(device)
    n_s, n_h, n_w = volume.shape
    runner = backend.prepare(model, volume, device)
    p = tile_plan or plan(model, volume.shape, budget_mb, runner.encoder_floats)
    out = np.empty((grid.n_hr, n_h, n_w), dtype=np.float32)
    mask = np.empty((grid.n_hr, n_h, n_w), dtype=np.uint8)
    total, done = grid.n_hr * n_h * n_w, 0
    acquisition = acquisition_tensor(grid.factor, thickness).to(device)
    for ys, xs in p.tiles(n_h, n_w):
        ty = slice(max(ys.start - p.halo, 0), min(ys.stop + p.halo, n_h))
        tx = slice(max(xs.start - p.halo, 0), min(xs.stop + p.halo, n_w))
        lr = torch.from_numpy(np.ascontiguousarray(volume[:, ty, tx])).to(device)
        fm = runner.encode(lr[None, None], acquisition)
        core = Tile(grid, _shift(ys, ty.start), _shift(xs, tx.start))
        decode = runner.decoder(fm, core)
        for js, rows in query_chunks(grid.n_hr, ys, xs.stop - xs.start, p.chunk):
            if cancel is not None and cancel():
                raise Cancelled("cancelled by the user; nothing was written")
            q = _tile_slices(grid, js, rows, xs, (ty.start, tx.start), device)
            res = decode(q)
            shape = (len(js), rows.stop - rows.start, xs.stop - xs.start)
            out[js[0] : js[-1] + 1, rows, xs] = res.value.float().reshape(shape).cpu().numpy()
            mask[js[0] : js[-1] + 1, rows, xs] = (res.mask > 0.5).reshape(shape).cpu().numpy()
            done += len(q)
            if progress is not None:
                progress(done, total)
        del fm, decode
    return out, mask


def _shift(span: slice, origin: int) -> slice:
    """``span`` in coordinates that start at ``origin``."""
    return slice(span.start - origin, span.stop - origin)


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


#: Out-of-memory retries on one device, each with a quarter of the previous budget.
OOM_RETRIES = 3


def super_resolve_with_fallback(
    model: SAINR,
    volume: np.ndarray,
    grid: SliceGrid,
    device: torch.device,
    budget_mb: float = DEFAULT_BUDGET_MB,
    notice: NoticeFn | None = None,
    **kwargs,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`super_resolve`, retrying with a quarter of the budget on out-of-memory (up to
    ``OOM_RETRIES`` times), then on the CPU when a GPU still runs out; each step is announced.
    Running out on the CPU with the smallest budget is a :class:`ResourceError`."""
    say = notice or (lambda _msg: None)
    for attempt in range(OOM_RETRIES + 1):
        try:
            return super_resolve(model, volume, grid, device, budget_mb, **kwargs)
        except (RuntimeError, MemoryError) as exc:
            if not (isinstance(exc, MemoryError) or is_out_of_memory(exc)):
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if attempt < OOM_RETRIES:
                budget_mb /= 4
                say(f"out of memory on {device}; retrying with a {budget_mb:.0f} MB budget")
    if device.type != "cpu":
        say(f"out of memory on {device} even with small chunks; continuing on the CPU")
        return super_resolve_with_fallback(
            model, volume, grid, torch.device("cpu"), budget_mb, notice, **kwargs
        )
    raise ResourceError(
        f"not enough memory even with a {budget_mb:.0f} MB working budget; close other "
        "programs, crop the volume or choose a larger target spacing"
    )
