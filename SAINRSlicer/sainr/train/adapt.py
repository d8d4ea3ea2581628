"""Per-volume adaptation: fine-tune SA-INR on training pairs made from the input volume itself.

The shipped model was trained on other volumes. A thick-slice acquisition still shows its own
thin-slice detail in-plane (the idea of SMORE and ECLARE, beyond the SA-INR paper): each in-plane
axis H and W in turn plays the slice axis. Resampled (anti-aliased) from its in-plane spacing to
the target spacing c_T it is the HR; the LR is that HR blurred with the acquisition's slice
profile (Gaussian, FWHM = the slice thickness: given, from the header or estimated from the
image, :mod:`sainr.thickness`) and decimated by k = c_S / c_T, so the model practises the factor and the degradation it
is then asked to undo. :mod:`sainr.train.data` cuts the patches (across the other in-plane
axis and the true slice axis), and the model is trained with the supervised loss of
:mod:`sainr.train.training` for a bounded number of steps (and, optionally, minutes). The result is a
fine-tuned copy; the model passed in is never changed.

``sainr adapt`` saves the adapted weights (loadable by ``sainr reduce --weights``) and can write
the reconstruction too; ``sainr reduce --adapt-steps N`` adapts each input before reducing it
(both in :mod:`sainr.cli`).
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ..acquisition import Acquisition, acquire, lr_count
from ..api import check_plan, slice_first
from ..errors import Cancelled, InputImageError, OutputPathError, SainrError
from ..intensity import robust_scale
from ..io.files import check_writable
from ..model import SAINR
from ..planning import ReductionPlan
from ..protocol import DEFAULT_ADAPT_STEPS, DEFAULT_MODEL
from ..request import ReduceOptions
from ..runtime.inference import CancelFn, ProgressFn
from ..runtime.precision import (
    autocast,
    memory_format,
    resolve_precision,
    training_precision,
)
from ..runtime.weights import check_not_shipped, save_checkpoint
from .data import PatchDataset, PatchSpec, Volume, collate, gradient_target
from .training import TrainConfig, sainr_loss

LogFn = Callable[[str], None]

#: Weight of the gate's BCE term: where the training schedule ends (gamma halved
#: ``gamma_halvings - 1`` times), since adaptation continues a finished run rather than
#: restarting the gate's warm-up. theta (target gated fraction) is the training one.
GAMMA = TrainConfig.gamma * 0.5 ** (TrainConfig.gamma_halvings - 1)
THETA = TrainConfig.theta


@dataclass(frozen=True)
class AdaptConfig:
    """Budget and optimiser settings of one adaptation."""

    steps: int = DEFAULT_ADAPT_STEPS  # optimizer steps (hard budget)
    minutes: float | None = None  # optional wall-clock budget, whichever comes first
    #: A fresh Adam moves every weight by ~lr per step; 1e-4 undid the shipped model on some
    #: held-out cases, 1e-5 improved them (docs/evaluation/eclare/README.md).
    lr: float = 1e-5
    batch: int = 2
    size: int = 48  # in-plane patch size
    queries: int = 4096
    seed: int = 0
    precision: str = (
        "auto"  # as sainr.runtime.precision.resolve_precision (training: bf16 on bf16 hardware)
    )
    thickness: float = 1.0  # acquired slice thickness / slice spacing (1 = contiguous slices)


def resample_axis0(volume: np.ndarray, spacing: float, target: float) -> np.ndarray:
    """``volume`` resampled along axis 0 from ``spacing`` to a coarser ``target`` mm: Gaussian
    anti-aliasing (FWHM = the spacing ratio in voxels) integrated over each voxel at the new
    positions. Returned as is when ``target`` is not coarser."""
    ratio = target / spacing
    if ratio <= 1:
        return volume
    return acquire(volume, Acquisition(ratio, 1.0, "gaussian"), lr_count(volume.shape[0], ratio))


def pair_volumes(
    volume: np.ndarray, spacing: tuple[float, float, float], target_spacing: float
) -> list[Volume]:
    """One HR training volume per in-plane axis of the normalised ``volume`` (S, H, W): that
    axis resampled to ``target_spacing`` and put first, then the other in-plane axis and the
    true slice axis (the order :func:`sainr.train.data.sample_patch` crops in, slice axis = index
    axis 2). Axes too short for two LR slices at the factor c_S / c_T are left out."""
    out = []
    for axis in pair_axes(volume.shape, spacing, target_spacing):
        other = 3 - axis
        hr = resample_axis0(np.transpose(volume, (axis, other, 0)), spacing[axis], target_spacing)
        hr = np.ascontiguousarray(hr, dtype=np.float32)
        hr_spacing = (spacing[0], spacing[other], max(spacing[axis], target_spacing))
        out.append(Volume("HW"[axis - 1], hr, hr_spacing, gradient_target(hr), (2,)))
    return out


def pair_axes(
    shape: tuple[int, ...], spacing: tuple[float, float, float], target_spacing: float
) -> list[int]:
    """The in-plane axes (1 = H, 2 = W) of a (S, H, W) volume long enough for two LR slices
    once resampled to ``target_spacing`` and decimated by c_S / c_T (as
    :func:`resample_axis0` and :func:`sainr.acquisition.lr_count` count them); refuses a volume
    with none. Needs only the shape, so every input of a batch is checked before any work."""
    factor = spacing[0] / target_spacing
    axes = []
    for axis in (1, 2):
        ratio = target_spacing / spacing[axis]
        resampled = lr_count(shape[axis], ratio) if ratio > 1 else shape[axis]
        if lr_count(resampled, factor) >= 2:
            axes.append(axis)
    if not axes:
        raise InputImageError(
            f"the volume is too small in-plane ({shape[1]} x {shape[2]} voxels) to make "
            f"adaptation pairs at factor {factor:.3g}; reduce it without adaptation (leave "
            "out --adapt-steps)"
        )
    return axes


def check_adaptable(plan: ReductionPlan) -> None:
    """Refuse, from the plan alone (no voxels read), an image too small to adapt to at the
    plan's target (the refusal :func:`adapt_to_image` would give after the earlier work)."""
    ax = plan.axis
    order = [ax] + [a for a in (2, 1, 0) if a != ax]  # (S, H, W) as slice_first orders them
    size, spacing = plan.input.size, plan.input.spacing
    pair_axes(tuple(size[a] for a in order), tuple(spacing[a] for a in order), plan.spacing_out)


def adaptation_data(
    volume: np.ndarray,
    spacing: tuple[float, float, float],
    target_spacing: float,
    config: AdaptConfig = AdaptConfig(),
) -> PatchDataset:
    """The deterministic stream of training patches for ``config.steps`` batches: LR made by
    the slice profile (Gaussian, FWHM ``config.thickness`` x c_S) and decimation by c_S / c_T
    (:mod:`sainr.acquisition`; a thickness of c_T or less is almost no blur: thin slices with
    gaps). Patches
    are square, no larger than the shortest in-plane side of any pair volume (few thick
    slices), so that every batch stacks."""
    volumes = pair_volumes(volume, spacing, target_spacing)
    size = min(config.size, *(min(v.array.shape[1:]) for v in volumes))
    thickness = (config.thickness, config.thickness)
    spec = PatchSpec(
        lr_slices=12,
        size=size,
        queries=config.queries,
        profiles=("gaussian",),
        factors=(spacing[0] / target_spacing,),
        thickness=thickness,
    )
    return PatchDataset(volumes, spec, config.steps * config.batch, config.batch, config.seed)


def patch_slices(data: PatchDataset) -> int:
    """Thick slices in each training patch (a short volume's pairs hold fewer than asked)."""
    lr, _, _ = collate([data[0]])
    return int(lr.shape[2])


def adapt(
    model: SAINR,
    volume: np.ndarray,
    spacing: tuple[float, float, float],
    target_spacing: float,
    config: AdaptConfig = AdaptConfig(),
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    log: LogFn | None = None,
) -> SAINR:
    """Fine-tune a copy of ``model`` on pairs made from ``volume`` and return it (eval mode).

    volume: NORMALISED array (S, H, W) with S the slice (through-plane) axis, spacing
    (c_S, c_H, c_W) in mm; ``target_spacing`` the slice spacing it will be reduced to. Runs on
    the device the model is on, at ``config.precision`` (autocast, channels-last encoder) and
    with the random stream of ``config.seed`` (the caller's RNG state is left alone), so a seed
    gives the same weights. Stops after ``config.steps`` optimizer steps or ``config.minutes``,
    whichever comes first. ``progress(done_steps, total_steps)`` after every step;
    ``cancel()`` returning True raises :class:`Cancelled`. The input model is untouched.
    """
    say = log or (lambda _msg: None)
    data = adaptation_data(volume, spacing, target_spacing, config)
    net = copy.deepcopy(model).train()
    device = next(net.parameters()).device
    asked = resolve_precision(device, config.precision, training=True)
    precision, why = training_precision(device, asked, patch_slices(data))
    if why:
        say(f"adapting in {precision}, not {asked}: {why}")
    layout = memory_format(device, precision)
    net.encoder.to(memory_format=layout)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    say(
        f"adapting on {', '.join(f'{v.name} {v.array.shape}' for v in data.volumes)} "
        f"(factor {data.spec.factors[0]:.3g}, {data.spec.size} px patches, {precision})"
    )
    started = time.monotonic()
    deadline = started + 60 * config.minutes if config.minutes is not None else math.inf
    losses: list[float] = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)  # the gate's Gumbel noise
        while len(losses) < config.steps and time.monotonic() < deadline:
            if cancel is not None and cancel():
                raise Cancelled("cancelled by the user; nothing was written")
            batch = range(len(losses) * config.batch, (len(losses) + 1) * config.batch)
            lr, q, tgt = collate([data[i] for i in batch])
            lr = lr.to(device).contiguous(memory_format=layout)
            q = type(q)(*(getattr(q, f).to(device) for f in ("b", "s", "y", "x", "t")))
            with autocast(device, precision):
                res = net(lr, q, tgt["acquisition"].to(device))
            loss, _ = sainr_loss(
                res,
                tgt["target"].to(device),
                tgt["gate"].to(device),
                net.gate is not None,
                GAMMA,
                THETA,
            )
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            losses.append(loss.item())
            if progress is not None:
                progress(len(losses), config.steps)
    if losses:
        say(
            f"adapted for {len(losses)} steps in {time.monotonic() - started:.0f} s "
            f"(loss {losses[0]:.4f} -> {np.mean(losses[-10:]):.4f})"
        )
    return net.eval()


@dataclass(frozen=True)
class Adapted:
    """An adapted model with the settings it was adapted with and the steps it got (fewer
    than ``config.steps`` when ``config.minutes`` ran out first)."""

    model: SAINR
    config: AdaptConfig
    steps_done: int


def adapt_to_image(
    model: SAINR,
    image: sitk.Image,
    plan: ReductionPlan,
    options: ReduceOptions = ReduceOptions(),
    config: AdaptConfig = AdaptConfig(),
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    log: LogFn | None = None,
) -> Adapted:
    """:func:`adapt` for a SimpleITK image and the plan of the reduction that follows
    (:func:`sainr.planning.plan_reduction`, passed on to :func:`sainr.api.reduce_spacing`):
    its slice axis, target spacing, checked voxels and slice thickness (the model is told
    it), the same intensity normalisation, at ``options.precision``; the budget and seed are
    ``config``'s."""
    check_plan(plan, image, getattr(model, "trained_thickness", None))
    volume, spacing = slice_first(image, plan.axis, bool(plan.nonfinite))
    config = replace(config, precision=options.precision, thickness=plan.thickness.relative)
    normalised = robust_scale(volume).normalize(volume)
    done = [0]

    def report(n: int, total: int) -> None:
        done[0] = n
        if progress is not None:
            progress(n, total)

    net = adapt(model, normalised, spacing, plan.spacing_out, config, report, cancel, log)
    return Adapted(net, config, done[0])


def check_budget(steps: int, minutes: float | None) -> None:
    """Refuse an adaptation of no steps or of a non-positive time budget."""
    if steps < 1:
        raise SainrError(f"the number of adaptation steps must be at least 1, got {steps}")
    if minutes is not None and not (math.isfinite(minutes) and minutes > 0):
        raise SainrError(f"--minutes must be a positive number, got {minutes}")


def check_weights_output(path: Path, base: str | None) -> Path:
    """Refuse a weights output that is not a .pt file in a writable folder, that is in the
    shipped models folder, or that is the base checkpoint itself (it would be replaced by its
    adapted copy)."""
    if path.suffix != ".pt":
        raise OutputPathError(f"adapted weights need a .pt file name, got {path.name}")
    check_not_shipped(path)
    folder = path.resolve().parent
    if not folder.is_dir():
        raise OutputPathError(f"output folder does not exist: {folder}; create it first")
    check_writable(folder)
    if base is not None and path.exists() and Path(base).exists() and os.path.samefile(path, base):
        raise OutputPathError(f"{path} is the base weights file; write the adapted ones elsewhere")
    return path


def save_adapted(adapted: Adapted, path: Path, base: str | None, input_name: str) -> None:
    """Checkpoint loadable as weights, with its provenance: the base model (None: the shipped
    default), the input's name, the settings and the steps actually done."""
    meta = {"base": base or DEFAULT_MODEL, "input": input_name, "steps_done": adapted.steps_done}
    trained = getattr(adapted.model, "trained_thickness", None)  # the base model's range
    save_checkpoint(
        adapted.model,
        path,
        meta={"adapted": {**meta, **asdict(adapted.config)}, "thickness_range": trained},
    )
