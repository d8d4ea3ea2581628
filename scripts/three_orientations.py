"""Three-orientation check (sainr.evaluation.orthogonal): super-resolve the SAGITTAL 3 mm T2 TSE
stack of the prostate session PX0000 along its slice axis (L-R), image the result the way the
session's axial and coronal stacks were acquired (their grids, 3 mm thick slices) and compare
with those acquired images after a linear intensity fit: correlation and PSNR over a common
foreground/overlap region. Methods: linear, B-spline, B-spline + Wiener and SA-INR with
default options, told 3 mm (the DICOM slice thickness) and told 3.6 mm (= the spacing), and
told the image estimate when sainr.thickness exists. Then, as a sanity check where the truth is
known, the same procedure on a thin brain (brain_pycortexS1, a test volume: reported only):
three orthogonal thick stacks are simulated from it and the sagittal one is super-resolved.

Prints its configuration and the tables and writes them to OUT (markdown). Rerun with another
model: --weights PATH (or a shipped name).

Usage: python scripts/three_orientations.py [--data DIR] [--out FILE] [--weights NAME|PATH]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from sainr import __version__
from sainr.api import reduce_spacing
from sainr.evaluation.baselines import WIENER_NSR
from sainr.evaluation.metrics import (
    FOREGROUND_FRACTION,
    FOREGROUND_PERCENTILE,
    foreground_mask,
    psnr,
)
from sainr.evaluation.orthogonal import (
    FIT_ORDERS,
    SuperResolve,
    TargetResult,
    bspline_wiener_image,
    interpolator,
    orthogonal_stacks,
    three_orientation_check,
)
from sainr.geometry import detect_slice_axis
from sainr.request import ReduceOptions
from sainr.runtime.device import choose_device
from sainr.runtime.precision import resolve_precision
from sainr.runtime.weights import load_model, resolve
from sainr.thickness import resolve_slice_thickness

PROSTATE = {
    "sagittal": "prostate_px0000_t2tse_sag_0p56x0p56x3p6.nii.gz",
    "axial": "prostate_px0000_t2tse_tra_0p5x0p5x3p0.nii.gz",
    "coronal": "prostate_px0000_t2tse_cor_0p6x0p6x3p0.nii.gz",
}
#: DICOM SliceThickness of the session's stacks (data README): 3 mm each; the sagittal
#: slices are 3.6 mm apart.
PROSTATE_THICKNESS_MM = {"sagittal": 3.0, "axial": 3.0, "coronal": 3.0}
BRAIN = "brain_pycortexS1_t1_1mm.nii.gz"
#: pycortex S1 index axes: i L-R (sagittal slices), j S-I (axial), k A-P (coronal).
BRAIN_AXES = {"sagittal": 0, "axial": 1, "coronal": 2}
BRAIN_SPACING_MM = {"sagittal": 3.6, "axial": 3.0, "coronal": 3.0}
FIT_TITLES = {
    0: "Intensity fit with one gain and offset",
    1: "Intensity fit with gain and offset linear in the position",
    2: "Intensity fit with gain and offset quadratic in the position (coil shading)",
}


def methods_for(
    source: sitk.Image, weights: str, device: str, spacing_told: float, thickness_told: float
) -> tuple[dict[str, SuperResolve], list[str]]:
    """The compared methods on ``source`` and lines describing them."""
    model = load_model(weights)

    def sainr(thickness_mm: float | None) -> SuperResolve:
        options = ReduceOptions(slice_thickness_mm=thickness_mm, device=device)
        return lambda image, spacing: reduce_spacing(image, spacing, options, model=model).image

    methods: dict[str, SuperResolve] = {
        "linear": interpolator("linear"),
        "B-spline": interpolator("bspline"),
        "B-spline + Wiener": bspline_wiener_image(thickness_told, "gaussian"),
        "SA-INR (default options)": sainr(None),
        f"SA-INR told {thickness_told:g} mm": sainr(thickness_told),
        f"SA-INR told {spacing_told:g} mm": sainr(spacing_told),
    }
    lines = [
        f"- B-spline + Wiener: Gaussian profile of FWHM {thickness_told:g} mm assumed (the real "
        f"profile is unknown), K = {WIENER_NSR:g} (chosen on the validation volumes)",
        f"- SA-INR (default options): sainr.reduce_spacing with {ReduceOptions(device=device)}",
    ]
    axis = detect_slice_axis(source.GetSpacing(), source.GetDirection())
    used = resolve_slice_thickness(source, axis, None, getattr(model, "trained_thickness", None))
    lines.append(f"- default options told the model {used.mm:.2f} mm ({used.source})")
    return methods, lines


def table(
    results: list[TargetResult], methods: list[str], profiles: tuple[str, ...], order: int
) -> str:
    """Markdown: one row per method; correlation and PSNR per target and profile (intensity
    fit of ``order``), then their means."""
    cols = [(r.name, p) for r in results for p in profiles]
    header = ["method"]
    header += [f"{t} {p} r" for t, p in cols] + [f"{t} {p} PSNR" for t, p in cols]
    header += ["mean r", "mean PSNR"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    by_name = {r.name: r for r in results}
    for m in methods:
        scores = [by_name[t].scores[(m, p, order)] for t, p in cols]
        cells = [m] + [f"{s.correlation:.4f}" for s in scores] + [f"{s.psnr:.2f}" for s in scores]
        cells += [
            f"{np.mean([s.correlation for s in scores]):.4f}",
            f"{np.mean([s.psnr for s in scores]):.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    voxels = ", ".join(
        f"{t} {p}: {by_name[t].scores[(methods[0], p, order)].voxels:,}" for t, p in cols
    )
    return "\n".join(lines) + f"\n\nVoxels compared: {voxels}."


def tables(results: list[TargetResult], methods: list[str], profiles: tuple[str, ...]) -> str:
    """Both intensity fits, each under its heading; targets as acquired (the scanner's
    patient space), then after the rigid alignment when there is one."""
    parts = []
    for registered in (False, True):
        chosen = [r for r in results if r.name.endswith(", registered") == registered]
        if not chosen:
            continue
        parts.append(
            "### " + ("After a rigid alignment of each target" if registered else "As acquired")
        )
        parts += [
            f"{FIT_TITLES[order]}:\n\n" + table(chosen, methods, profiles, order)
            for order in FIT_ORDERS
        ]
    return "\n\n".join(parts)


def centre_crop(image: sitk.Image, size: int) -> sitk.Image:
    """A centred cube of ``size`` voxels (geometry kept)."""
    full = np.asarray(image.GetSize())
    n = np.minimum(full, size)
    return sitk.RegionOfInterest(image, [int(v) for v in n], [int(v) for v in (full - n) // 2])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--out", type=Path, default=Path("docs/evaluation/three_orientations.md"))
    p.add_argument("--weights", default="default", help="SA-INR weights (shipped name or file)")
    p.add_argument("--spacing", type=float, default=1.0, help="target slice spacing (mm)")
    p.add_argument("--profiles", nargs="+", default=["gaussian", "box"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--brain-crop", type=int, default=128, help="cube of the thin brain (voxels)")
    p.add_argument("--no-brain", dest="brain", action="store_false")
    p.add_argument(
        "--no-register",
        dest="register",
        action="store_false",
        help="skip the second scoring after a rigid alignment of each target",
    )
    args = p.parse_args(argv)
    profiles = tuple(args.profiles)
    device = choose_device(args.device)
    source_name = resolve(args.weights)[0].name if args.weights else "default"
    config = [
        f"- model: `{args.weights}` ({source_name}); device {device}, precision "
        f"{resolve_precision(device, 'auto')} (the default, auto); torch threads "
        f"{torch.get_num_threads()}; torch {torch.__version__}; sainr {__version__}; "
        f"Python {platform.python_version()}",
        f"- source: the sagittal stack, super-resolved along its slice axis (L-R) to "
        f"{args.spacing:g} mm (all methods on one grid: the source's origin and direction)",
        "- imaging like a target stack (sainr.evaluation.orthogonal.image_like): the result "
        "resampled (linear) into the target's grid with a fine step (at most 0.5 mm) along "
        "its slice normal, then averaged across each 3 mm thick slice with sainr.acquisition's "
        f"profile ({', '.join(profiles)}: FWHM / width = the thickness); the target is first "
        "cut to the bounding box of the source's field of view",
        "- region: voxels whose whole slice profile lies inside the source's field of view "
        f"and where the acquired target exceeds {FOREGROUND_FRACTION:g} × its "
        f"{FOREGROUND_PERCENTILE:g}th percentile; one region for all methods",
        "- score: linear least-squares fit acquired ≈ a × imaged + b over the region, a and b "
        "either constants or quadratic polynomials of the voxel position (each stack has its "
        "own coil shading, which one gain cannot absorb); then the correlation r of the "
        "fitted values with the acquired ones (Pearson r of imaged and acquired for the "
        "constant fit) and the PSNR of the fitted values (MAX = the acquired region's maximum)",
        "- alignment: first as acquired (the scanner's patient space; patient motion between "
        "the stacks lowers every method, smoother ones less); then after a rigid alignment of "
        "each target (sainr.evaluation.orthogonal.register_rigid: correlation, estimated once "
        "on the linear result, the same transform for every method)",
    ]
    parts = ["# Three-orientation check", "## Configuration\n\n" + "\n".join(config)]
    print("\n".join(config), flush=True)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    # Real acquisitions: the prostate session PX0000.
    stacks = {k: sitk.ReadImage(str(args.data / f)) for k, f in PROSTATE.items()}
    source = stacks.pop("sagittal")
    methods, lines = methods_for(source, args.weights, args.device, 3.6, 3.0)
    print("\n".join(lines), flush=True)
    start = time.perf_counter()
    results, _ = three_orientation_check(
        source,
        stacks,
        methods,
        args.spacing,
        PROSTATE_THICKNESS_MM,
        profiles,
        log,
        register="linear" if args.register else None,
    )
    text = tables(results, list(methods), profiles)
    log(f"prostate done in {time.perf_counter() - start:.0f} s")
    print(text, flush=True)
    parts.append(
        "## Real acquisitions: prostate PX0000 (sagittal 0.5625 × 0.5625 × 3.6 mm, 3 mm thick "
        "→ axial 0.5 × 0.5 × 3 mm and coronal 0.6 × 0.6 × 3 mm, both oblique)\n\n"
        + "\n".join(lines)
        + "\n\n"
        + text
    )

    if args.brain:
        thin = centre_crop(
            sitk.Cast(sitk.ReadImage(str(args.data / BRAIN)), sitk.sitkFloat32), args.brain_crop
        )
        stacks = orthogonal_stacks(
            thin, BRAIN_AXES, BRAIN_SPACING_MM, PROSTATE_THICKNESS_MM, "gaussian"
        )
        source = stacks.pop("sagittal")
        methods, lines = methods_for(source, args.weights, args.device, 3.6, 3.0)
        start = time.perf_counter()
        results, images = three_orientation_check(
            source,
            stacks,
            methods,
            args.spacing,
            PROSTATE_THICKNESS_MM,
            profiles,
            log,
            register="linear" if args.register else None,
        )
        log(f"brain done in {time.perf_counter() - start:.0f} s")
        text = tables(results, list(methods), profiles)
        # The truth is known here: the super-resolved volume against the thin brain itself.
        truth = sitk.GetArrayFromImage(
            sitk.Resample(thin, next(iter(images.values())), sitk.Transform(), sitk.sitkLinear)
        )
        mask = foreground_mask(truth)
        direct = ", ".join(
            f"{m} {psnr(sitk.GetArrayFromImage(img).astype(np.float32), truth, mask):.2f}"
            for m, img in images.items()
        )
        text += f"\n\nDirect foreground PSNR of the super-resolved volume against the truth (dB): {direct}."
        print(text, flush=True)
        parts.append(
            f"## Sanity check with known truth: brain pycortex S1 ({args.brain_crop}³ mm centre "
            "cube, 1 mm iso; a test volume, reported only), three stacks simulated with a "
            "Gaussian profile: sagittal 3.6 mm apart / 3 mm thick, axial and coronal 3 mm / "
            "3 mm (axis-aligned, not oblique)\n\n" + "\n".join(lines) + "\n\n" + text
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
