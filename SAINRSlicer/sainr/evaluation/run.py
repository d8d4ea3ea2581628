"""One evaluation run: every volume, acquisition and method, scored and reported (``sainr
evaluate``)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..acquisition import Acquisition
from ..errors import InputImageError, SainrError
from ..io.files import check_output_folder, write_atomically
from ..runtime.device import choose_device
from ..runtime.precision import resolve_precision
from .cases import (
    MIN_EXTENT,
    Case,
    axes_per_volume,
    check_factors,
    load_case,
    simulate,
    simulated_acquisitions,
)
from .eclare import EclareOptions, eclare_method
from .figures import save_figure
from .methods import TRUTH, Method, Told, adapted_methods, build_methods, load_models
from .metrics import foreground_mask, psnr, s3_volume, ssim
from .report import configuration, flops_report, report, write_csv
from .settings import EvaluationSettings


def run(settings: EvaluationSettings) -> None:
    """Evaluate every volume at every factor and write the CSV, markdown and figures
    (or, with ``--flops``, print the GMAC tables only)."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    factors = check_factors(settings.factors)
    acquisitions = simulated_acquisitions(settings.profiles, factors, settings.thickness)
    if settings.flops:
        print(flops_report(load_models(settings.models), factors, {}))
        return
    if not settings.volumes:
        raise SainrError("give at least one HR volume to evaluate (or --flops)")
    if settings.out is None:
        raise SainrError("give an output folder with --out")
    check_output_folder(settings.out)  # before any work: nothing is created for a bad run
    for path in settings.volumes:
        if not Path(path).exists():
            raise InputImageError(f"input not found: {path}; check the path")
    axes = axes_per_volume(settings.axis, len(settings.volumes))
    device = choose_device(settings.device)
    resolve_precision(device, settings.precision)  # a precision this device lacks: before work
    models = load_models(settings.models)
    if not settings.wiener_nsr > 0:
        raise SainrError(f"--wiener-nsr must be positive, got {settings.wiener_nsr}")
    methods = build_methods(
        models,
        device,
        settings.memory_mb,
        settings.ungated,
        settings.estimated,
        settings.wiener_nsr,
        settings.precision,
        settings.network_only,
    )
    methods += adapted_methods(
        models,
        settings.adapt_steps,
        settings.adapt_models,
        device,
        settings.memory_mb,
        settings.precision,
    )
    if settings.eclare:
        methods.append(eclare_method(EclareOptions.of(settings, device)))
    settings.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    cases: list[Case] = []
    # the whole volume is acquired again for nothing unless a row estimates from it
    keep_whole = settings.estimated and not settings.estimate_on_crop
    for path, axis in zip(settings.volumes, axes, strict=True):
        case = load_case(path, axis, settings.crop, keep_whole)
        cases.append(case)
        for acq in acquisitions:
            figure = settings.figures is None or acq.profile in settings.figures
            folder = settings.out if figure else None
            rows += evaluate_case(case, acq, methods, settings.max_slices, folder)
            print(
                f"{case.name} {acq.profile} x{acq.factor:g}: "
                + ", ".join(f"{r['method']} {r['psnr']:.2f} dB" for r in rows[-len(methods) :]),
                file=sys.stderr,
            )
    write_csv(rows, settings.out / "results.csv")
    config = configuration(cases, models, factors, settings, device, settings.estimated)
    text = report(rows, methods, config, models, factors)
    write_atomically(
        settings.out / "results.md", lambda tmp: Path(tmp).write_text(text, encoding="utf-8")
    )
    print(f"wrote {settings.out / 'results.md'}", file=sys.stderr)


def evaluate_case(
    case: Case,
    acq: Acquisition,
    methods: list[Method],
    max_slices: int | None,
    out_dir: Path | None,
) -> list[dict]:
    """Score every method on one volume and acquisition; saves the figure into ``out_dir``
    (none without it); returns CSV rows."""
    factor = acq.factor
    lr, grid, truth = simulate(case.hr, acq)
    if min(truth.shape) < MIN_EXTENT:
        raise SainrError(
            f"{case.name} at x{factor:g} gives a {truth.shape} truth; 3D SSIM needs at least "
            f"{MIN_EXTENT} voxels per axis (use a larger volume, crop or smaller factor)"
        )
    base = {"volume": case.name, "axis": case.axis, "profile": acq.profile, "factor": factor}
    foreground = foreground_mask(truth)
    rows = [
        {
            **base,
            "method": TRUTH,
            "s3": _s3(truth, max_slices),
            "thickness": acq.relative_thickness,
            "foreground": float(foreground.mean()),
        }
    ]
    preds: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    seen = case.seen(acq, lr)
    for m in methods:
        start = time.perf_counter()
        told = Told(acq.profile, m.thickness(seen, grid, case.spacing, acq))
        pred, mask = m.run(lr, grid, case.spacing, told)
        seconds = time.perf_counter() - start
        preds[m.name] = (pred, mask)
        rows.append(
            {
                **base,
                "method": m.name,
                "psnr": psnr(pred, truth),
                "psnr_fg": psnr(pred, truth, foreground),
                "ssim": ssim(pred, truth),
                "s3": _s3(pred, max_slices),
                "seconds": seconds,
                "attended": float(mask.mean()) if mask is not None else None,
                "thickness": told.thickness if m.told else None,
            }
        )
    if out_dir is not None:
        save_figure(
            case,
            acq,
            lr,
            grid,
            truth,
            methods,
            preds,
            out_dir / f"figure_{case.name}_{acq.profile}_x{factor:g}.png",
        )
    return rows


def _s3(vol: np.ndarray, max_slices: int | None) -> float:
    """S3 on planes [:, :, x] (containing the slice axis), intensities clipped to [0, 1]
    as the official evaluator's inputs are."""
    return s3_volume(np.clip(vol, 0.0, 1.0), axis=2, max_slices=max_slices)
