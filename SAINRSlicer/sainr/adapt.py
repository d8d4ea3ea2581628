"""Per-volume adaptation: fine-tune SA-INR on training pairs made from the input volume itself.

The shipped model was trained on other volumes. A thick-slice acquisition still shows its own
thin-slice detail in-plane (the idea of SMORE and ECLARE, beyond the SA-INR paper): each in-plane
axis H and W in turn plays the slice axis. Resampled (anti-aliased) from its in-plane spacing to
the target spacing c_T it is the HR; the LR is that HR blurred with the acquisition's slice
profile (Gaussian, FWHM = the slice thickness, by default the slice spacing: contiguous thick
slices) and decimated by k = c_S / c_T, so the model practises the factor and the degradation it
is then asked to undo. :mod:`sainr.data` cuts the patches (across the other in-plane
axis and the true slice axis), and the model is trained with the supervised loss of
:mod:`sainr.training` for a bounded number of steps (and, optionally, minutes). The result is a
fine-tuned copy; the model passed in is never changed.

``sainr adapt`` saves the adapted weights (loadable by ``sainr reduce --weights``) and can write
the reconstruction too; ``sainr reduce --adapt-steps N`` adapts each input before reducing it.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from .api import plan_reduction, reduce_spacing, slice_first
from .cli import _checked_input, _progress_printer, _spacing_args, slice_thickness_mm
from .data import PatchDataset, PatchSpec, Volume, collate, gradient_target
from .degradation import Acquisition, acquire, lr_count
from .errors import Cancelled, InputImageError, OutputPathError, SainrError
from .geometry import relative_thickness
from .inference import (
    PRECISIONS,
    CancelFn,
    ProgressFn,
    autocast,
    choose_device,
    memory_format,
    resolve_precision,
)
from .intensity import robust_scale
from .io import check_output_path, check_writable, is_dicom_folder, write_volume
from .model import SAINR
from .protocol import ADAPT_TAG, DEFAULT_ADAPT_STEPS, PROGRESS_TAG
from .training import TrainConfig, sainr_loss
from .weights import check_not_shipped, load_model, save_checkpoint

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
    #: held-out cases (MNI x4: -0.65 dB), 1e-5 improved them (+0.12 dB; docs/evaluation/eclare).
    lr: float = 1e-5
    batch: int = 2
    size: int = 48  # in-plane patch size
    queries: int = 4096
    seed: int = 0
    precision: str = "auto"  # as sainr.inference.resolve_precision (bf16 autocast on AMX CPUs)
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
    true slice axis (the order :func:`sainr.data.sample_patch` crops in, slice axis = index
    axis 2). Axes too short for two LR slices at the factor c_S / c_T are left out."""
    factor = spacing[0] / target_spacing
    out = []
    for axis, name in ((1, "H"), (2, "W")):
        other = 3 - axis
        hr = resample_axis0(np.transpose(volume, (axis, other, 0)), spacing[axis], target_spacing)
        if (hr.shape[0] - 1) / factor + 1e-6 < 1:
            continue
        hr = np.ascontiguousarray(hr, dtype=np.float32)
        hr_spacing = (spacing[0], spacing[other], max(spacing[axis], target_spacing))
        out.append(Volume(name, hr, hr_spacing, gradient_target(hr), (2,)))
    if not out:
        raise InputImageError(
            f"the volume is too small in-plane ({volume.shape[1]} x {volume.shape[2]} voxels) "
            f"to make adaptation pairs at factor {factor:.3g}; reduce it without adaptation"
        )
    return out


def adaptation_data(
    volume: np.ndarray,
    spacing: tuple[float, float, float],
    target_spacing: float,
    config: AdaptConfig = AdaptConfig(),
) -> PatchDataset:
    """The deterministic stream of training patches for ``config.steps`` batches: LR made by
    the slice profile (Gaussian, FWHM ``config.thickness`` x c_S) and decimation by c_S / c_T
    (:mod:`sainr.degradation`; a thickness of c_T or less is almost no blur: thin slices with
    gaps). Patches
    are square, no larger than the shortest in-plane side of any pair volume (few thick
    slices), so that every batch stacks."""
    volumes = pair_volumes(volume, spacing, target_spacing)
    size = min(config.size, *(min(v.array.shape[1:]) for v in volumes))
    thickness = (config.thickness, config.thickness)
    spec = PatchSpec(lr_slices=12, size=size, queries=config.queries, profiles=("gaussian",),
                     factors=(spacing[0] / target_spacing,), thickness=thickness)  # fmt: skip
    return PatchDataset(volumes, spec, config.steps * config.batch, config.batch, config.seed)


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
    precision = resolve_precision(device, config.precision)
    layout = memory_format(precision)
    net.encoder.to(memory_format=layout)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    say(f"adapting on {', '.join(f'{v.name} {v.array.shape}' for v in data.volumes)} "
        f"(factor {data.spec.factors[0]:.3g}, {data.spec.size} px patches, {precision})")  # fmt: skip
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
            loss, _ = sainr_loss(res, tgt["target"].to(device), tgt["gate"].to(device),
                                 net.gate is not None, GAMMA, THETA)  # fmt: skip
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            losses.append(loss.item())
            if progress is not None:
                progress(len(losses), config.steps)
    if losses:
        say(f"adapted for {len(losses)} steps in {time.monotonic() - started:.0f} s "
            f"(loss {losses[0]:.4f} -> {np.mean(losses[-10:]):.4f})")  # fmt: skip
    return net.eval()


def adapt_to_image(
    model: SAINR,
    image: sitk.Image,
    spacing_mm: float | None = None,
    *,
    factor: float | None = None,
    isotropic: bool = False,
    axis: int | None = None,
    force: bool = False,
    nan_policy: str = "refuse",
    config: AdaptConfig = AdaptConfig(),
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    log: LogFn | None = None,
) -> SAINR:
    """:func:`adapt` for a SimpleITK image and a target given as in
    :func:`sainr.api.reduce_spacing`: same checks, slice axis and intensity normalisation as
    the reduction that follows."""
    ax, out_geom = plan_reduction(
        image, spacing_mm, factor=factor, isotropic=isotropic, axis=axis, force=force
    )
    volume, spacing = slice_first(image, ax, nan_policy)
    normalised = robust_scale(volume).normalize(volume)
    return adapt(model, normalised, spacing, out_geom.spacing[ax], config, progress, cancel, log)


# --- command line ----------------------------------------------------------------------------


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


def _save(model: SAINR, path: Path, args, name: str, config: AdaptConfig, done: int) -> None:
    """Checkpoint with provenance: base model, input, settings and the steps actually done."""
    adapted = {"base": args.weights or "default", "input": name, "steps_done": done}
    save_checkpoint(model, path, meta={"adapted": {**adapted, **asdict(config)}})


def _adapt_with_progress(
    name: str, image: sitk.Image, model: SAINR, args, target: dict, config: AdaptConfig, tag: str
) -> tuple[SAINR, int]:
    """Adapt on the chosen device with the CLI's progress display; (model, steps done)."""
    update, close = _progress_printer(args.progress, f"adapting {name}", "step", tag)
    done = [0]

    def report(n: int, total: int) -> None:
        done[0] = n
        update(n, total)

    try:
        adapted = adapt_to_image(
            model.to(choose_device(args.device)), image, args.spacing, **target,
            nan_policy="zero" if args.nan_to_zero else "refuse", config=config,
            progress=report, log=lambda msg: print(msg, file=sys.stderr),
        )  # fmt: skip
    finally:
        close()
    return adapted, done[0]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``sainr adapt INPUT --spacing MM|--factor F|--isotropic --out WEIGHTS.pt [...]``."""
    p.add_argument("input", type=Path, help="volume file (.nii.gz/.nrrd/.mha) or DICOM folder")
    _spacing_args(p)
    p.add_argument("--out", type=Path, required=True, metavar="WEIGHTS.pt",
                   help="write the adapted weights here (use with sainr reduce --weights)")  # fmt: skip
    p.add_argument(
        "--steps", type=int, default=AdaptConfig.steps, help="optimizer steps (default 200)"
    )
    p.add_argument("--minutes", type=float, help="also stop after this many minutes")
    p.add_argument(
        "--weights",
        default=None,
        help="model to start from: shipped name or checkpoint (default: default)",
    )
    p.add_argument(
        "--reduce", type=Path, metavar="OUTPUT", help="also reduce the input with the adapted model"
    )
    p.add_argument(
        "--device", default="auto", help="auto (CUDA if usable, else CPU), cpu, cuda, mps"
    )
    p.add_argument(
        "--axis", type=int, choices=(0, 1, 2), help="slice axis (i, j, k); detected if omitted"
    )
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto = fp16 autocast on CUDA, bf16 on CPUs with AMX, else fp32")  # fmt: skip
    p.add_argument("--seed", type=int, default=AdaptConfig.seed, help="patch and noise stream")
    _thickness_arg(p)
    p.add_argument(
        "--nan-to-zero", action="store_true", help="replace NaN/Inf voxels by 0 instead of refusing"
    )
    p.add_argument("--progress", choices=("bar", "lines", "none"), default="bar")


def _thickness_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--slice-thickness", type=float, metavar="MM",
                   help="acquired slice thickness in mm (default: DICOM SliceThickness, else "
                   "the slice spacing; give the smaller thickness when slices have gaps)")  # fmt: skip


def _thickness_fraction(args, src: Path, image: sitk.Image, target: dict) -> float:
    """The acquired slice thickness of ``image`` read from ``src`` (``--slice-thickness``,
    DICOM SliceThickness or the spacing) as a fraction of its slice spacing."""
    ax, _ = plan_reduction(image, args.spacing, **target)
    return relative_thickness(slice_thickness_mm(args, src), image.GetSpacing()[ax])


def _check_budget(steps: int, minutes: float | None) -> None:
    if steps < 1:
        raise SainrError(f"the number of adaptation steps must be at least 1, got {steps}")
    if minutes is not None and not (math.isfinite(minutes) and minutes > 0):
        raise SainrError(f"--minutes must be a positive number, got {minutes}")


def run(args) -> int:
    """``sainr adapt``: check everything, adapt, save the weights, optionally reduce."""
    _check_budget(args.steps, args.minutes)
    check_weights_output(args.out, args.weights)
    if args.reduce is not None:
        check_output_path(args.reduce, (args.input,))
    choose_device(args.device)  # an unavailable device fails before any work
    target = {"factor": args.factor, "isotropic": args.isotropic, "axis": args.axis, "force": False}
    image = _checked_input(args.input, args, target)
    model = load_model(args.weights)
    config = AdaptConfig(steps=args.steps, minutes=args.minutes, seed=args.seed,
                         precision=args.precision,
                         thickness=_thickness_fraction(args, args.input, image, target))  # fmt: skip
    name = args.input.name
    adapted, done = _adapt_with_progress(name, image, model, args, target, config, PROGRESS_TAG)
    _save(adapted, args.out, args, name, config, done)
    print(f"{args.input.name}: adapted {done} steps -> {args.out}", file=sys.stderr)
    if args.reduce is not None:
        update, close = _progress_printer(args.progress, args.input.name)
        try:
            result = reduce_spacing(image, args.spacing, **target, device=args.device,
                                    model=adapted, precision=args.precision,
                                    slice_thickness_mm=slice_thickness_mm(args, args.input),
                                    nan_policy="zero" if args.nan_to_zero else "refuse",
                                    progress=update)  # fmt: skip
        finally:
            close()
        write_volume(result.image, args.reduce)
        print(f"{args.input.name}: {result.info['slices_out']} slices at "
              f"{result.info['spacing_out']:.4g} mm -> {args.reduce}", file=sys.stderr)  # fmt: skip
    return 0


def add_reduce_arguments(p: argparse.ArgumentParser) -> None:
    """``--adapt-steps N`` and ``--save-adapted W.pt`` of ``sainr reduce``."""
    p.add_argument("--adapt-steps", type=int, default=0, metavar="N",
                   help="first adapt the model to each input for N steps (default 0: off)")  # fmt: skip
    p.add_argument("--save-adapted", type=Path, metavar="WEIGHTS.pt",
                   help="also save the adapted weights (single input)")  # fmt: skip
    _thickness_arg(p)


def adapt_for_reduce(src: Path, image: sitk.Image, model: SAINR, args, target: dict) -> SAINR:
    """The model ``sainr reduce`` reconstructs ``image`` (read from ``src``) with: ``model`` itself without
    ``--adapt-steps``, else a copy adapted to ``image`` (``ADAPT done total`` lines with
    ``--progress lines``), saved to ``--save-adapted`` when given. Option errors are raised
    before any adaptation."""
    if args.adapt_steps == 0:
        if args.save_adapted is not None:
            raise SainrError("--save-adapted needs --adapt-steps N (N > 0)")
        return model
    _check_budget(args.adapt_steps, None)
    if args.save_adapted is not None:
        if args.input.is_dir() and not is_dicom_folder(args.input):
            raise SainrError("--save-adapted needs a single input volume, not a folder")
        check_weights_output(args.save_adapted, args.weights)
    config = AdaptConfig(steps=args.adapt_steps, precision=args.precision,
                         thickness=_thickness_fraction(args, src, image, target))  # fmt: skip
    adapted, done = _adapt_with_progress(src.name, image, model, args, target, config, ADAPT_TAG)
    if args.save_adapted is not None:
        _save(adapted, args.save_adapted, args, src.name, config, done)
    return adapted
