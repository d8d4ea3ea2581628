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
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import Cancelled, DeviceError, ResourceError
from ..geometry import SliceGrid
from ..model import SAINR, SliceQueries, acquisition_tensor
from .heap import retained_heap
from .int8 import (
    CALIBRATION_QUERIES,
    calibration_queries,
    int8_available,
    int8_decoder,
    int8_encoder,
    with_modules,
)

ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]
NoticeFn = Callable[[str], None]

DEFAULT_BUDGET_MB = 2048
#: Live encoder activations per LR voxel while a tile is encoded, in units of C floats.
#: Measured peak on a 160 x 160 x 40 tile (C = 32, fp32): 5.1 in the default layout, 4.1
#: channels-last; 6 leaves a margin for allocator slack.
_ENCODER_FLOATS_PER_CHANNEL = 6
#: Bytes per query per channel: gathered K and V of 2 l^2 neighbours plus temporaries.
_QUERY_FLOATS_PER_NEIGHBOUR = 3
#: Smallest in-plane core of a tile (a smaller budget still runs, over budget).
_MIN_CORE = 16


def choose_device(name: str = "auto") -> torch.device:
    """'auto' = CUDA when usable, else CPU; an explicit unavailable device is an error."""
    name = name.lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError("CUDA was requested but no usable GPU is visible; use --device cpu")
        try:
            device = torch.device(name)
        except RuntimeError as exc:
            raise DeviceError(f"unknown device {name!r}; use cuda or cuda:N") from exc
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"{name} was requested but only {torch.cuda.device_count()} GPU(s) are visible"
            )
        return device
    if name == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise DeviceError("MPS was requested but is not available; use --device cpu")
        return torch.device("mps")
    raise DeviceError(f"unknown device {name!r}; use auto, cpu, cuda or mps")


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


def plan(model: SAINR, shape: tuple[int, int, int], budget_mb: float) -> Plan:
    """Tiling of an (S, H, W) volume and query chunk whose working sets fit ``budget_mb``:
    60 % for the encoder activations of one tile, 40 % for one chunk of queries."""
    n_s, n_h, n_w = shape
    budget = budget_mb * 2**20
    cfg = model.config
    per_pixel = 4 * cfg.channels * _ENCODER_FLOATS_PER_CHANNEL * n_s
    tile = choose_tile(n_h, n_w, model.halo, int(0.6 * budget / per_pixel))
    neighbours = 2 * cfg.window**2 if cfg.lasa else 1
    per_query = 4 * (cfg.channels * neighbours * _QUERY_FLOATS_PER_NEIGHBOUR + 4 * cfg.hidden)
    chunk = max(int(0.4 * budget / per_query), 256)
    return Plan(tile=tile, halo=model.halo, chunk=chunk)


PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")


def cpu_features() -> dict[str, str | bool]:
    """What decides the CPU precision: torch's vector ISA level and the bf16 units."""
    return {
        "isa": torch.backends.cpu.get_cpu_capability(),
        "amx": _cpu_probe("_is_amx_tile_supported"),
        "avx512_bf16": _cpu_probe("_is_avx512_bf16_supported"),
    }


def _cpu_probe(name: str) -> bool:
    """A ``torch.cpu`` feature probe; False where this torch build lacks it."""
    probe = getattr(torch.cpu, name, None)
    return bool(probe and probe())


def has_fast_bf16() -> bool:
    """True on CPUs with bf16 arithmetic in hardware: AMX tiles (Intel Sapphire Rapids and
    later) or AVX-512 BF16 dot products (AMD Zen 4 and later, Intel Cooper Lake). There
    oneDNN runs bf16 convolutions and matrix products 2-3x faster than fp32; elsewhere bf16
    is emulated and slower than fp32."""
    features = cpu_features()
    return bool(features["amx"] or features["avx512_bf16"])


def resolve_precision(device: torch.device, precision: str, training: bool = False) -> str:
    """'auto' = fp16 on CUDA; on the CPU bf16 where it has bf16 hardware
    (:func:`has_fast_bf16`), else int8 inference (:mod:`sainr.runtime.int8`) where this torch build
    has its kernels, else fp32; fp32 on other devices. Training (test-time adaptation)
    never runs in int8: where inference would, it runs fp32. Explicit choices pass through
    once checked."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "int8" and device.type != "cpu":
        raise ValueError("int8 runs on the CPU only; use auto, fp16 or fp32 on this device")
    if precision == "int8" and training:
        return "fp32"
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "fp16"
    if device.type != "cpu":
        return "fp32"
    if has_fast_bf16():
        return "bf16"
    return "fp32" if training or not int8_available() else "int8"


def autocast(device: torch.device, precision: str):
    """Autocast for the encoder and the MLP at a resolved ``precision`` (fp32 and int8 =
    none); attention, softmax and outputs stay fp32. Inference, training and adaptation
    share it."""
    if precision in ("fp32", "int8"):
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def memory_format(precision: str) -> torch.memory_format:
    """Channels-last 3D for reduced precision: oneDNN/cuDNN run those convolutions about twice
    as fast and the flattened (N, C) feature table becomes a view. fp32 CPU convolutions are
    slightly slower channels-last, so fp32 keeps the default layout; the int8 kernels want
    channels-last."""
    return torch.contiguous_format if precision == "fp32" else torch.channels_last_3d


def _tile_slices(
    grid: SliceGrid, js: np.ndarray, ys: slice, xs: slice, off: tuple[int, int], device
) -> SliceQueries:
    """Thin slices ``js`` over core region (ys, xs), in tile coordinates."""
    return SliceQueries(
        lower=torch.as_tensor(grid.lower[js], device=device),
        t=torch.as_tensor(grid.frac[js], dtype=torch.float32, device=device),
        ys=slice(ys.start - off[0], ys.stop - off[0]),
        xs=slice(xs.start - off[1], xs.stop - off[1]),
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
@retained_heap()
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
    run between chunks with :class:`Cancelled`. The model is moved to ``device`` and its
    encoder to the memory layout that suits ``precision`` (values unchanged); int8 runs a
    copy of it with a calibrated int8 encoder and, per tile, int8 decoder (:mod:`sainr.runtime.int8`).
    """
    precision = resolve_precision(device, precision)
    layout = memory_format(precision)
    model = model.eval().to(device)
    model.encoder.to(memory_format=layout)
    n_s, n_h, n_w = volume.shape
    p = tile_plan or plan(model, volume.shape, budget_mb)
    out = np.empty((grid.n_hr, n_h, n_w), dtype=np.float32)
    mask = np.empty((grid.n_hr, n_h, n_w), dtype=np.uint8)
    total, done = grid.n_hr * n_h * n_w, 0
    acquisition = acquisition_tensor(grid.factor, thickness).to(device)
    run = with_modules(model, encoder=int8_encoder(model, volume)) if precision == "int8" else model
    for ys, xs in p.tiles(n_h, n_w):
        ty = slice(max(ys.start - p.halo, 0), min(ys.stop + p.halo, n_h))
        tx = slice(max(xs.start - p.halo, 0), min(xs.stop + p.halo, n_w))
        lr = torch.from_numpy(np.ascontiguousarray(volume[:, ty, tx])).to(device)
        with autocast(device, precision):
            fm = run.encode(lr[None, None].contiguous(memory_format=layout), acquisition)
        fm.feat = fm.feat.float()
        if precision == "int8":
            core_y = slice(ys.start - ty.start, ys.stop - ty.start)
            core_x = slice(xs.start - tx.start, xs.stop - tx.start)
            sample = calibration_queries(grid, core_y, core_x, CALIBRATION_QUERIES)
            run = with_modules(run, decoder=int8_decoder(model, fm, sample))
        for js, rows in query_chunks(grid.n_hr, ys, xs.stop - xs.start, p.chunk):
            if cancel is not None and cancel():
                raise Cancelled("cancelled by the user; nothing was written")
            q = _tile_slices(grid, js, rows, xs, (ty.start, tx.start), device)
            with autocast(device, precision):
                res = run.query_slices(fm, q)
            shape = (len(js), rows.stop - rows.start, xs.stop - xs.start)
            out[js[0] : js[-1] + 1, rows, xs] = res.value.float().reshape(shape).cpu().numpy()
            mask[js[0] : js[-1] + 1, rows, xs] = (res.mask > 0.5).reshape(shape).cpu().numpy()
            done += len(q)
            if progress is not None:
                progress(done, total)
        del fm
    return out, mask


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
