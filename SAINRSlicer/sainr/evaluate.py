"""``sainr evaluate``: SA-INR against interpolation on HR volumes with simulated thick slices.

Protocol, per volume:

1. Slice axis: ``--axis``, else the native coarsest axis, else (near-isotropic volume) index
   axis k. Optional in-plane centre crop (``--crop``). The cropped HR volume is normalised once
   with the robust scale of :mod:`sainr.intensity` (as in training); every method and metric
   works in these units, so all methods are scored on one intensity scale.
2. Per slice profile and factor r: the LR slices are centred at HR positions 0, r, 2r, ...
   and acquired with the profile (:mod:`sainr.degradation`): ``none`` keeps the HR slice
   (pure decimation, integer r only), ``gaussian`` and ``box`` average the HR across a slice
   thickness (``--thickness`` x the LR spacing; 1 = contiguous thick slices, as a clinical
   scan). The thin-slice grid has the HR spacing (c_L = r c_H), so thin slice j lies on HR
   slice j and the truth is HR slices 0 .. n_H - 1: every output slice is scored against a
   real (sharp) HR slice. SA-INR, adaptation and ECLARE are told the slice thickness.
3. Methods on that grid: linear, SimpleITK cubic B-spline, each SA-INR model through
   :func:`sainr.inference.super_resolve` and, for gated models, the same model with the gate
   removed (LASA on every query) to show what gating costs and saves. Optional:
   ``--adapt-steps N``, each model fine-tuned on the case's own LR (:mod:`sainr.adapt`) before
   it runs; ``--eclare``, ECLARE (Remedios et al., PyPI ``eclare``, a benchmark-only
   dependency that the extension never imports), which trains a network per volume on its own
   in-plane data: the LR goes to it as a NIfTI with the LR spacing, and its output (slices at
   the in-plane resolution, "same field of view" sampling) is resampled onto the thin-slice
   grid (:func:`same_fov_onto_grid`). Times include adaptation and ECLARE's training.
4. Metrics (:mod:`sainr.metrics`): PSNR (MAX = truth max), 3D SSIM, S3 sharpness on planes that
   contain the slice axis, wall time, and the fraction of queries that went through LASA.

Writes ``results.csv`` (one row per volume, factor and method), ``results.md`` (tables with the
configuration and a GFLOPs section) and ``figure_<volume>_x<r>.png``.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from . import __version__
from .baselines import bspline_interpolate, linear_interpolate, resample_to
from .data import usable_axes
from .degradation import Acquisition, acquire, lr_count
from .errors import InputImageError, SainrError, WeightsError
from .flops import flops_table, slab_macs
from .geometry import EPS, MAX_RELATIVE_THICKNESS, Geometry, SliceGrid, axis_label, slice_grid
from .inference import DEFAULT_BUDGET_MB, choose_device, resolve_precision, super_resolve
from .intensity import robust_scale
from .io import check_output_folder, read_volume, volume_suffix
from .metrics import psnr, s3_volume, ssim
from .model import SAINR, ModelConfig, gating_disabled
from .validation import check_image, check_values
from .weights import DEFAULT_MODEL, catalog, load_model, resolve

DEFAULT_FACTORS = (2.0, 2.5, 3.0, 4.0)
TRUTH = "ground truth"
#: 3D SSIM's window; every evaluated axis needs at least this many voxels.
_MIN_EXTENT = 7
DEFAULT_PROFILES = ("none", "gaussian", "box")
_FIELDS = ("volume", "axis", "profile", "factor", "method", "psnr", "ssim", "s3", "seconds", "attended")

#: (normalised LR (S, H, W), thin-slice grid, HR spacing in mm along (S, H, W), slice
#: thickness / LR spacing) -> (thin-slice volume, gating mask or None)
RunFn = Callable[
    [np.ndarray, SliceGrid, tuple[float, float, float], float],
    tuple[np.ndarray, np.ndarray | None],
]
#: ECLARE's command line (``run-eclare``) through this interpreter, so that the ``eclare``
#: found by :func:`require_eclare` is the one that runs.
_ECLARE_MAIN = "import sys; from eclare.main import main; main(sys.argv[1:])"


@dataclass(frozen=True)
class Case:
    """One HR volume ready for evaluation: normalised, slice axis first (S, H, W)."""

    name: str
    hr: np.ndarray
    axis: int
    label: str
    spacing: tuple[float, float, float]  # mm along (S, H, W)


@dataclass(frozen=True)
class Method:
    """A named way to fill the thin-slice grid; ``model`` is set for SA-INR variants."""

    name: str
    run: RunFn
    model: SAINR | None = None
    gated: bool = False


@dataclass(frozen=True)
class EvaluationSettings:
    """What one evaluation runs (the options of ``sainr evaluate``).

    ``volumes``: HR volumes (the ground truth); ``out``: folder for results.csv, results.md
    and figures. ``factors``, ``profiles``: the simulated acquisitions; ``thickness``: slice
    thickness / LR spacing of the gaussian and box profiles. ``figures``: profiles to draw
    (None: all). ``axis``: one slice axis (None: auto) for all volumes or one per volume.
    ``models``: ``NAME=WEIGHTS`` (none: the shipped default). ``ungated``: also run gated
    models without their gate. ``crop``: in-plane centre crop; ``max_slices``: planes S3 is
    averaged over. ``flops``: print the GMAC tables only. ``adapt_steps``, ``adapt_models``:
    fine-tuned rows per case. ``eclare``: also run ECLARE with that budget."""

    volumes: tuple[Path, ...] = ()
    out: Path | None = None
    factors: tuple[float, ...] = DEFAULT_FACTORS
    profiles: tuple[str, ...] = DEFAULT_PROFILES
    figures: tuple[str, ...] | None = None
    thickness: float = 1.0
    axis: tuple[int | None, ...] = ()
    models: tuple[str, ...] = ()
    ungated: bool = True
    crop: int | None = None
    max_slices: int = 16
    device: str = "auto"
    memory_mb: float = DEFAULT_BUDGET_MB
    threads: int | None = None
    flops: bool = False
    adapt_steps: int = 0
    adapt_models: tuple[str, ...] | None = None
    eclare: bool = False
    eclare_patches: int = 2048
    eclare_batch_size: int = 8


def run(settings: EvaluationSettings) -> None:
    """Evaluate every volume at every factor and write the CSV, markdown and figures
    (or, with ``--flops``, print the GMAC tables only)."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    factors = _check_factors(settings.factors)
    acquisitions = _acquisitions(settings.profiles, factors, settings.thickness)
    if settings.flops:
        print(flops_report(_load_models(settings.models), factors, {}))
        return
    if not settings.volumes:
        raise SainrError("give at least one HR volume to evaluate (or --flops)")
    if settings.out is None:
        raise SainrError("give an output folder with --out")
    check_output_folder(settings.out)  # before any work: nothing is created for a bad run
    for path in settings.volumes:
        if not Path(path).exists():
            raise InputImageError(f"input not found: {path}; check the path")
    axes = _axes_per_volume(settings.axis, len(settings.volumes))
    device = choose_device(settings.device)
    models = _load_models(settings.models)
    methods = build_methods(models, device, settings.memory_mb, settings.ungated)
    methods += adapted_methods(
        models, settings.adapt_steps, settings.adapt_models, device, settings.memory_mb
    )
    if settings.eclare:
        methods.append(eclare_method(EclareOptions.of(settings, device)))
    settings.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    cases: list[Case] = []
    for path, axis in zip(settings.volumes, axes, strict=True):
        case = load_case(path, axis, settings.crop)
        cases.append(case)
        for acq in acquisitions:
            figure = settings.figures is None or acq.profile in settings.figures
            folder = settings.out if figure else None
            rows += evaluate_case(case, acq, methods, settings.max_slices, folder)
            print(f"{case.name} {acq.profile} x{acq.factor:g}: " + ", ".join(
                f"{r['method']} {r['psnr']:.2f} dB" for r in rows[-len(methods):]
            ), file=sys.stderr)  # fmt: skip
    write_csv(rows, settings.out / "results.csv")
    config = configuration(cases, models, factors, settings, device)
    text = report(rows, methods, config, models, factors)
    (settings.out / "results.md").write_text(text, encoding="utf-8")
    print(f"wrote {settings.out / 'results.md'}", file=sys.stderr)


def _acquisitions(
    profiles: tuple[str, ...], factors: tuple[float, ...], thickness: float
) -> list[Acquisition]:
    """Every (profile, factor) case; pure decimation only at integer factors (its slices
    must lie on HR slices), the others with the given relative ``thickness``."""
    if not (math.isfinite(thickness) and 0 < thickness <= MAX_RELATIVE_THICKNESS):
        raise SainrError(f"--thickness must be in (0, {MAX_RELATIVE_THICKNESS:g}], got {thickness}")
    cases = [Acquisition(f, thickness, p) for p in dict.fromkeys(profiles) for f in factors
             if p != "none" or f.is_integer()]  # fmt: skip
    if not cases:
        raise SainrError("pure decimation (profile none) needs an integer factor")
    return cases


def _check_factors(factors: tuple[float, ...]) -> tuple[float, ...]:
    bad = [f for f in factors if not (math.isfinite(f) and f > 1)]
    if bad:
        raise SainrError(f"factors must be finite numbers > 1, got {bad}")
    return tuple(dict.fromkeys(float(f) for f in factors))


def _axes_per_volume(axes: tuple[int | None, ...], n: int) -> list[int | None]:
    if not axes:
        return [None] * n
    if len(axes) == 1:
        return list(axes) * n
    if len(axes) != n:
        raise SainrError(f"--axis takes one value or one per volume ({n}), got {len(axes)}")
    return list(axes)


def _load_models(specs: tuple[str, ...]) -> list[tuple[str, str, SAINR]]:
    """(name, source, model) per ``NAME=WEIGHTS``; the shipped default when none is given."""
    if not specs:
        try:
            if DEFAULT_MODEL in catalog():
                shipped = f"{resolve(None)[0].name} (shipped as '{DEFAULT_MODEL}')"
                return [(DEFAULT_MODEL, shipped, load_model(None))]
        except WeightsError as exc:
            print(f"note: no shipped model ({exc}); evaluating interpolation only", file=sys.stderr)
        return []
    out = []
    for spec in specs:
        name, sep, weights = spec.partition("=")
        if not sep:
            name, weights = Path(spec).stem, spec
        if not name or not weights:
            raise SainrError(f"--model expects NAME=WEIGHTS, got {spec!r}")
        out.append((name, weights, load_model(weights)))
    names = [n for n, _, _ in out]
    if len(set(names)) != len(names):
        raise SainrError(f"model names must be unique, got {names}")
    return out


def build_methods(
    models: list[tuple[str, str, SAINR]], device: torch.device, budget_mb: float,
    ungated: bool = True,
) -> list[Method]:  # fmt: skip
    """Interpolators, then each model, then (``ungated``) each gated model with its gate
    removed."""

    def interp(fn) -> RunFn:
        return lambda lr, grid, _spacing, _thickness: (fn(lr, grid), None)

    methods = [Method("linear", interp(linear_interpolate)),
               Method("B-spline", interp(bspline_interpolate))]  # fmt: skip
    for name, _, model in models:
        methods.append(Method(name, _network(model, device, budget_mb), model,
                              model.gate is not None))  # fmt: skip
    for name, _, model in models if ungated else ():
        if model.gate is not None:
            methods.append(Method(f"{name} (ungated)",
                                  _network(model, device, budget_mb, ungated=True), model))  # fmt: skip
    return methods


def _network(
    model: SAINR, device: torch.device, budget_mb: float, ungated: bool = False,
    adapt_steps: int = 0,
) -> RunFn:  # fmt: skip
    """SA-INR on the case's LR; with ``adapt_steps``, a copy of the model is first fine-tuned
    on that LR alone (:func:`adapt_to_case`)."""

    def run_model(
        lr: np.ndarray, grid: SliceGrid, spacing: tuple[float, float, float], thickness: float
    ) -> tuple[np.ndarray, np.ndarray]:
        net = model
        if adapt_steps:
            net = adapt_to_case(model, lr, grid, spacing, thickness, adapt_steps)
        if ungated:
            with gating_disabled(net):
                return super_resolve(net, lr, grid, device, budget_mb, thickness=thickness)
        return super_resolve(net, lr, grid, device, budget_mb, thickness=thickness)

    return run_model


def adapted_methods(
    models: list[tuple[str, str, SAINR]], steps: int, names: tuple[str, ...] | None,
    device: torch.device, budget_mb: float,
) -> list[Method]:  # fmt: skip
    """``<model> adapted (N steps)`` for each model (or each of ``names``); none for N = 0."""
    if steps < 0:
        raise SainrError(f"--adapt-steps must be >= 0, got {steps}")
    if not steps:
        return []
    known = [name for name, _, _ in models]
    unknown = sorted(set(names or ()) - set(known))
    if not models or unknown:
        raise SainrError(f"--adapt-steps: no SA-INR model {unknown or ''} to adapt; models: "
                         f"{known} (name them with --model NAME=WEIGHTS)")  # fmt: skip
    try:
        from .adapt import AdaptConfig, adapt  # noqa: F401  (fail before any case runs)
    except ImportError as exc:
        raise SainrError(
            f"--adapt-steps needs sainr.adapt, which cannot be imported: {exc}"
        ) from exc
    return [Method(f"{name} adapted ({steps} steps)",
                   _network(model, device, budget_mb, adapt_steps=steps))
            for name, _, model in models if names is None or name in names]  # fmt: skip


def adapt_to_case(
    model: SAINR, lr: np.ndarray, grid: SliceGrid, spacing: tuple[float, float, float],
    thickness: float, steps: int,
) -> SAINR:  # fmt: skip
    """A fine-tuned copy of ``model`` (:func:`sainr.adapt.adapt` leaves ``model`` unchanged),
    trained on this case's LR only: ``lr`` is the normalised array SA-INR receives (the HR's
    robust scale, slice axis first), its spacing (r c_S, c_H, c_W), the target the HR slice
    spacing c_S, told the simulated slice ``thickness`` (relative to the LR spacing) as
    ECLARE is."""
    from .adapt import AdaptConfig, adapt

    config = AdaptConfig(steps=steps, thickness=thickness)
    return adapt(model, lr, lr_spacing(grid, spacing), spacing[0], config=config)


def lr_spacing(grid: SliceGrid, spacing: tuple[float, float, float]) -> tuple[float, float, float]:
    """Spacing (mm, along S, H, W) of the simulated LR: the HR's with slices ``grid.factor``
    times further apart."""
    return (grid.factor * spacing[0], spacing[1], spacing[2])


@dataclass(frozen=True)
class EclareOptions:
    """ECLARE's budget and device (its --n-patches, --batch-size and --gpu-id)."""

    patches: int
    batch_size: int
    gpu_id: int = -1

    @classmethod
    def of(cls, settings: EvaluationSettings, device: torch.device) -> EclareOptions:
        """The ECLARE budget of ``settings``, on ``device``'s GPU (or the CPU)."""
        if settings.eclare_patches < 1 or settings.eclare_batch_size < 1:
            raise SainrError("--eclare-patches and --eclare-batch-size must be >= 1")
        gpu = (device.index or 0) if device.type == "cuda" else -1
        return cls(settings.eclare_patches, settings.eclare_batch_size, gpu)

    @property
    def steps(self) -> int:
        return math.ceil(self.patches / self.batch_size)


def require_eclare() -> str:
    """ECLARE's version; a :class:`SainrError` when this environment does not have it."""
    if importlib.util.find_spec("eclare") is None:
        raise SainrError(
            "--eclare needs the ECLARE package, which is not installed in this environment "
            f"({sys.executable}). It is a benchmark-only dependency of the evaluation, never of "
            "the extension: install it into a separate environment (scripts/compare_eclare.sh "
            "sets up .venv-bench with 'pip install torch==2.13.0 eclare') and run "
            "'sainr evaluate --eclare' from there"
        )
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("eclare")
    except PackageNotFoundError:
        return "unknown version"


def eclare_method(options: EclareOptions) -> Method:
    """ECLARE as a method; refuses (before any case runs) when it is not installed."""
    require_eclare()
    return Method(
        "ECLARE",
        lambda lr, grid, spacing, thickness: (run_eclare(lr, grid, spacing, thickness, options), None),
    )


def eclare_thickness(spacing: tuple[float, float, float], grid: SliceGrid, thickness: float) -> float:
    """The simulated LR's slice thickness in ECLARE's units (finest in-plane voxels):
    ``thickness`` x the LR spacing r c_S (profile known, so ECLARE's ESPRESO estimate is
    skipped)."""
    return thickness * lr_spacing(grid, spacing)[0] / min(spacing[1], spacing[2])


def write_lr_nifti(lr: np.ndarray, spacing: tuple[float, float, float], path: Path) -> Path:
    """``lr`` (S, H, W) as a NIfTI with voxel spacing ``spacing`` (mm along S, H, W): index axis
    k = S, as ECLARE expects (it takes the coarsest axis as the slice axis)."""
    if spacing[0] <= max(spacing[1], spacing[2]) * (1 + EPS):
        raise SainrError(
            f"ECLARE needs the slice axis to be the coarsest: LR spacing {spacing[0]:g} mm vs "
            f"in-plane {spacing[1]:g}×{spacing[2]:g} mm (use a larger factor)"
        )
    image = sitk.GetImageFromArray(np.ascontiguousarray(lr, dtype=np.float32))
    image.SetSpacing((spacing[2], spacing[1], spacing[0]))
    sitk.WriteImage(image, str(path))
    return path


def run_eclare(
    lr: np.ndarray, grid: SliceGrid, spacing: tuple[float, float, float], thickness: float,
    options: EclareOptions,
) -> np.ndarray:  # fmt: skip
    """Train and run ECLARE on one simulated LR volume (a subprocess with this interpreter and
    torch's thread count) and return its output on the thin-slice grid."""
    spacing_lr = lr_spacing(grid, spacing)
    with tempfile.TemporaryDirectory(prefix="sainr-eclare-") as tmp:
        src = write_lr_nifti(lr, spacing_lr, Path(tmp) / "lr.nii.gz")
        cmd = [sys.executable, "-c", _ECLARE_MAIN, "--in-fpath", str(src), "--out-dir", tmp,
               "--n-patches", str(options.patches), "--batch-size", str(options.batch_size),
               "--relative-slice-thickness", f"{eclare_thickness(spacing, grid, thickness):.6g}",
               "--gpu-id", str(options.gpu_id)]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        out_path = Path(tmp) / "lr_eclare.nii.gz"
        if proc.returncode != 0 or not out_path.exists():
            tail = (proc.stdout + proc.stderr)[-3000:]
            raise SainrError(f"ECLARE failed (exit {proc.returncode}):\n{tail}")
        out = sitk.ReadImage(str(out_path))
        volume = sitk.GetArrayFromImage(out).astype(np.float32)
    if volume.shape[1:] != lr.shape[1:]:
        raise SainrError(f"ECLARE returned in-plane {volume.shape[1:]}, expected {lr.shape[1:]}")
    return same_fov_onto_grid(volume, spacing_lr[0] / out.GetSpacing()[2], grid)


def same_fov_positions(n_in: int, n_out: int, ratio: float) -> np.ndarray:
    """Where ``n_out`` samples that resample ``n_in`` samples ``ratio`` times more densely
    with the same field of view lie, in input-sample units.

    Radifox's "same FOV" resize, which ECLARE uses for its upsampling (and its training
    pairs): input sample i is a cell [i − ½, i + ½]; the n_out output cells of width 1/ratio
    are centred on the input's field of view, sample k at the centre of cell k:
    −½ + (n_in − n_out/ratio)/2 + (k + ½)/ratio. For n_out = n_in · ratio the fields of view
    coincide; the first output sample lies (ratio − 1)/2 output samples before input sample 0.
    """
    return -0.5 + (n_in - n_out / ratio) / 2 + (np.arange(n_out) + 0.5) / ratio


def same_fov_onto_grid(volume: np.ndarray, ratio: float, grid: SliceGrid) -> np.ndarray:
    """``volume`` (N, H, W), the ``grid.n_lr`` acquired slices resampled ``ratio`` times more
    densely with the same field of view (:func:`same_fov_positions`), resampled by cubic
    B-spline (as the B-spline baseline) onto the thin slices of ``grid`` (thin slice j at
    acquired-slice position j / r). The thin positions are evenly spaced, so this is one
    SimpleITK resampling with output spacing ratio / r starting at output index −p_0 · ratio
    (p_0: the first output sample's position); in-plane the grid is unchanged."""
    n, h, w = volume.shape
    p0 = float(same_fov_positions(grid.n_lr, n, ratio)[0])
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume, dtype=np.float32))
    geom = Geometry((w, h, grid.n_hr), (1.0, 1.0, ratio / grid.factor), (0.0, 0.0, -p0 * ratio),
                    (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))  # fmt: skip
    return sitk.GetArrayFromImage(resample_to(image, geom, "bspline"))


def volume_name(path: Path) -> str:
    """File name without its volume suffix (.nii.gz, .nrrd, ...)."""
    suffix = volume_suffix(path)
    return path.name[: -len(suffix)] if suffix else path.name


def load_case(path: Path, axis: int | None, crop: int | None) -> Case:
    """Read, choose the slice axis, centre-crop in-plane and normalise an HR volume."""
    image = read_volume(path)
    check_image(image)
    spacing = tuple(float(s) for s in image.GetSpacing())
    if axis is None:
        axes = usable_axes(spacing)
        axis = axes[0] if len(axes) == 1 else 2
    array = check_values(sitk.GetArrayViewFromImage(image))
    hr = np.moveaxis(np.asarray(array, dtype=np.float32), 2 - axis, 0)
    if crop is not None:
        if crop < _MIN_EXTENT:
            raise SainrError(f"--crop must be at least {_MIN_EXTENT} voxels, got {crop}")
        starts = [max((n - crop) // 2, 0) for n in hr.shape[1:]]
        hr = hr[:, starts[0] : starts[0] + crop, starts[1] : starts[1] + crop]
    in_plane = [a for a in (2, 1, 0) if a != axis]
    return Case(
        name=volume_name(path),
        hr=np.ascontiguousarray(robust_scale(hr).normalize(hr)),
        axis=axis,
        label=axis_label(image.GetDirection(), axis),
        spacing=(spacing[axis], spacing[in_plane[0]], spacing[in_plane[1]]),
    )


def simulate(hr: np.ndarray, acq: Acquisition) -> tuple[np.ndarray, SliceGrid, np.ndarray]:
    """(LR, thin-slice grid at the HR spacing, truth) for acquisition ``acq`` along axis 0."""
    n_lr = lr_count(hr.shape[0], acq.factor)
    grid = slice_grid(n_lr, acq.factor, 1.0)
    return acquire(hr, acq, n_lr), grid, hr[: grid.n_hr]


def evaluate_case(
    case: Case, acq: Acquisition, methods: list[Method], max_slices: int | None,
    out_dir: Path | None,
) -> list[dict]:  # fmt: skip
    """Score every method on one volume and acquisition; saves the figure into ``out_dir``
    (none without it); returns CSV rows."""
    factor = acq.factor
    lr, grid, truth = simulate(case.hr, acq)
    if min(truth.shape) < _MIN_EXTENT:
        raise SainrError(
            f"{case.name} at x{factor:g} gives a {truth.shape} truth; 3D SSIM needs at least "
            f"{_MIN_EXTENT} voxels per axis (use a larger volume, crop or smaller factor)"
        )
    base = {"volume": case.name, "axis": case.axis, "profile": acq.profile, "factor": factor}
    rows = [{**base, "method": TRUTH, "s3": _s3(truth, max_slices)}]
    preds: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for m in methods:
        start = time.perf_counter()
        pred, mask = m.run(lr, grid, case.spacing, acq.relative_thickness)
        seconds = time.perf_counter() - start
        preds[m.name] = (pred, mask)
        rows.append({
            **base, "method": m.name, "psnr": psnr(pred, truth), "ssim": ssim(pred, truth),
            "s3": _s3(pred, max_slices), "seconds": seconds,
            "attended": float(mask.mean()) if mask is not None else None,
        })  # fmt: skip
    if out_dir is not None:
        save_figure(case, acq, lr, grid, truth, methods, preds,
                    out_dir / f"figure_{case.name}_{acq.profile}_x{factor:g}.png")  # fmt: skip
    return rows


def _s3(vol: np.ndarray, max_slices: int | None) -> float:
    """S3 on planes [:, :, x] (containing the slice axis), intensities clipped to [0, 1]
    as the official evaluator's inputs are."""
    return s3_volume(np.clip(vol, 0.0, 1.0), axis=2, max_slices=max_slices)


def save_figure(
    case: Case, acq: Acquisition, lr: np.ndarray, grid: SliceGrid, truth: np.ndarray,
    methods: list[Method], preds: dict[str, tuple[np.ndarray, np.ndarray | None]], path: Path,
) -> None:  # fmt: skip
    """One plane through the slice axis (the centre column): nearest-upsampled LR input, each
    method, truth, and for the first SA-INR model its |error| and gating mask."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = truth.shape[2] // 2
    nearest = np.minimum(np.floor(grid.lower + grid.frac + 0.5).astype(np.int64), grid.n_lr - 1)
    panels = [(f"LR input ×{acq.factor:g} {acq.profile} (nearest)", lr[nearest, :, x], "gray", 0.0, 1.0)]
    panels += [(m.name, preds[m.name][0][:, :, x], "gray", 0.0, 1.0) for m in methods]
    panels.append((TRUTH, truth[:, :, x], "gray", 0.0, 1.0))
    first = next((m for m in methods if m.model is not None), None)
    if first is not None:
        pred, mask = preds[first.name]
        error = np.abs(pred[:, :, x] - truth[:, :, x])
        panels.append((f"|error| {first.name}", error, "magma", 0.0, max(float(error.max()), 1e-6)))
        if mask is not None:
            panels.append((f"gating mask {first.name}", mask[:, :, x], "gray", 0.0, 1.0))
    aspect = case.spacing[0] / case.spacing[1]  # thin-slice spacing / in-plane spacing
    height = float(np.clip(2.2 * truth.shape[0] * aspect / truth.shape[1], 1.2, 6.0))
    fig, axes = plt.subplots(
        1, len(panels), figsize=(2.2 * len(panels), height + 0.9), squeeze=False
    )
    for ax, (title, img, cmap, vmin, vmax) in zip(axes[0], panels, strict=True):
        ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax, aspect=aspect, origin="lower",
                  interpolation="nearest")  # fmt: skip
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].set_ylabel("thin-slice index ↑", fontsize=8)
    fig.suptitle(f"{case.name}, {case.label}, {acq.profile} ×{acq.factor:g}, column {x}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_csv(rows: list[dict], path: Path) -> None:
    """One line per row; empty cells where a metric does not apply."""
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, _FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k)) for k in _FIELDS})


def _csv_value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


CaseKey = tuple[str, str, float]  # (volume, profile, factor)


def _lookup(rows: list[dict]) -> tuple[list[CaseKey], dict]:
    """Case keys (volume, profile, factor) in order of appearance and (case, method) -> row."""
    keys = list(dict.fromkeys((r["volume"], r["profile"], r["factor"]) for r in rows))
    return keys, {((r["volume"], r["profile"], r["factor"]), r["method"]): r for r in rows}


def metric_table(rows: list[dict], metric: str, columns: list[str], fmt: str,
                 gain_of: str | None = None) -> str:  # fmt: skip
    """Markdown: one row per case (volume, profile, factor), one column per method, then the
    means per profile and factor and per profile. ``gain_of`` adds that method's margin over
    the better interpolator (its minimum over the cases in the per-profile means)."""
    keys, index = _lookup(rows)
    header = ["volume", "profile", "factor", *columns]
    header += [f"{gain_of} − best interp.", "min"] if gain_of else []
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]

    def values(sel: list[CaseKey]) -> list[float]:
        cols = [np.mean([index[(k, c)][metric] for k in sel]) for c in columns]
        if gain_of:
            gains = [index[(k, gain_of)][metric]
                     - max(index[(k, "linear")][metric], index[(k, "B-spline")][metric])
                     for k in sel]  # fmt: skip
            cols += [np.mean(gains), np.min(gains)]
        return cols

    def line(cells: list[str], cols: list[float], bold: bool = False) -> str:
        cells = cells + [format(c, fmt) for c in cols]
        return "| " + " | ".join(f"**{c}**" if bold else c for c in cells) + " |"

    for v, p, f in keys:
        lines.append(line([v, p, f"×{f:g}"], values([(v, p, f)])))
    if len({v for v, _, _ in keys}) > 1:
        for p, f in dict.fromkeys((p, f) for _, p, f in keys):
            sel = [k for k in keys if k[1:] == (p, f)]
            lines.append(line(["mean", p, f"×{f:g}"], values(sel), True))
        for p in dict.fromkeys(p for _, p, _ in keys):
            lines.append(line(["mean", p, "all"], values([k for k in keys if k[1] == p]), True))
    return "\n".join(lines)


def gating_table(rows: list[dict], method: Method) -> str:
    """Gated vs ungated: fraction attended, PSNR, LASA GMACs per slab (ours), wall time."""
    keys, index = _lookup(rows)
    cfg = method.model.config
    lines = [
        "| volume | profile | factor | attended | PSNR gated | PSNR ungated | Δ dB | LASA "
        "GMAC/slab (ours) gated | ungated | time gated (s) | ungated (s) |",
        "|---" * 11 + "|",
    ]
    for key in keys:
        v, p, f = key
        g, u = index[(key, method.name)], index[(key, f"{method.name} (ungated)")]
        lasa_g = slab_macs(cfg, f, g["attended"])["lasa"] / 1e9
        lasa_u = slab_macs(cfg, f, 1.0)["lasa"] / 1e9
        lines.append(
            f"| {v} | {p} | ×{f:g} | {100 * g['attended']:.1f} % | {g['psnr']:.3f} | "
            f"{u['psnr']:.3f} | {g['psnr'] - u['psnr']:+.3f} | {lasa_g:.2f} | {lasa_u:.2f} | "
            f"{g['seconds']:.2f} | {u['seconds']:.2f} |"
        )
    return "\n".join(lines)


def flops_report(
    models: list[tuple[str, str, SAINR]], factors: tuple[float, ...], attended: dict[str, float]
) -> str:
    """GMAC tables per 256 x 256 x 2 slab for each model (at its measured gated fraction when
    known, else the paper's budget of 20 %) and for the paper's configuration."""
    parts = []
    for name, _, model in models:
        frac = attended.get(name, 0.2)
        which = "measured mean" if name in attended else "paper's budget"
        gate = f"; gated fraction = {which} {100 * frac:.0f} %" if model.gate is not None else ""
        parts.append(f"**{name}** ({_config_text(model.config)}{gate})\n\n"
                     + flops_table(model.config, factors, frac))  # fmt: skip
    parts.append("**Paper configuration** (C=64, B=8, hidden 256, 5 layers, 7×7 window; "
                 "Table III: 288.6/302.6/316.5 no LASA, 447.3/514.2/580.3 LASA, "
                 "320.3/344.9/369.4 gated 20 % at ×2/×3/×4)\n\n"
                 + flops_table(ModelConfig(), (2.0, 3.0, 4.0), 0.2))  # fmt: skip
    return "\n\n".join(parts)


def _config_text(cfg: ModelConfig) -> str:
    return ", ".join(f"{k}={v}" for k, v in cfg.to_dict().items())


def configuration(
    cases: list[Case], models: list[tuple[str, str, SAINR]], factors: tuple[float, ...],
    settings: EvaluationSettings, device: torch.device,
) -> list[str]:  # fmt: skip
    """Markdown bullet lines describing exactly what was run."""
    lines = [f"- volume `{c.name}`: slice axis {c.label}, HR {c.hr.shape[0]} slices × "
             f"{c.hr.shape[1]}×{c.hr.shape[2]} in-plane, spacing {c.spacing[0]:g} mm "
             f"(in-plane {c.spacing[1]:g}×{c.spacing[2]:g} mm)" for c in cases]  # fmt: skip
    for name, source, model in models:
        n_params = sum(p.numel() for p in model.parameters())
        lines.append(f"- model `{name}` from {source}: {_config_text(model.config)}; "
                     f"{n_params:,} parameters")  # fmt: skip
    crop = f"{settings.crop}×{settings.crop} in-plane centre crop" if settings.crop else "none (full volumes)"
    lines += [
        f"- factors: {', '.join(f'×{f:g}' for f in factors)}; crop: {crop}",
        f"- device: {device}; precision: {resolve_precision(device, 'auto')} (auto); "
        f"torch threads: {torch.get_num_threads()}; torch {torch.__version__}; "
        f"sainr {__version__}; Python {platform.python_version()}",
        f"- LR simulation (sainr.degradation): slices centred at HR positions 0, r, 2r, …; "
        f"profiles {', '.join(dict.fromkeys(settings.profiles))} (none = the HR slice itself, "
        f"integer r only; gaussian = FWHM, box = width of {settings.thickness:g} × the LR "
        "spacing, weights integrated over each HR voxel); every method that takes it is told "
        "that thickness; output grid = HR grid, truth = HR slices 0 … n_H−1",
        "- intensities: every metric in the units of the HR volume's robust scale "
        "(0.5th → 0, 99.5th percentile → 1), shared by all methods; PSNR equals the PSNR in "
        "the file's units when the 0.5th percentile is 0 (volumes with background)",
        "- PSNR: MAX = truth max, prediction clipped to [0, MAX]; SSIM: 3D, scikit-image "
        "defaults (7-voxel uniform window), L = max − min of the truth, prediction clipped to "
        "[min, max] of the truth",
        f"- S3: mean over at most {settings.max_slices} planes [:, :, x] containing the slice axis "
        "(x evenly spaced), intensities clipped to [0, 1]; 'ground truth' gives the reference",
        "- time: wall-clock seconds per method and volume (SA-INR: encoder + all queries)",
    ]
    if settings.adapt_steps:
        from dataclasses import asdict

        from .adapt import AdaptConfig

        names = ", ".join(f"`{n}`" for n, _, _ in models if not settings.adapt_models
                          or n in settings.adapt_models)  # fmt: skip
        adapting = {**asdict(AdaptConfig(steps=settings.adapt_steps)), "thickness": "the case's"}
        lines.append(f"- adapted: {names} fine-tuned per case on that case's normalised LR only "
                     "(sainr.adapt, from the loaded weights each time; "
                     f"{', '.join(f'{k}={v}' for k, v in adapting.items())}; spacing = LR "
                     "spacing, target = HR slice spacing); time includes the adaptation")  # fmt: skip
    if settings.eclare:
        eclare = EclareOptions.of(settings, device)
        where = f"GPU {eclare.gpu_id}" if eclare.gpu_id >= 0 else "CPU"
        lines.append(
            f"- ECLARE {require_eclare()} (PyPI `eclare`, its `run-eclare` in a subprocess, "
            f"{where}): trained per case on the LR's own in-plane data, {eclare.patches:,} "
            f"patches in batches of {eclare.batch_size} ({eclare.steps} steps; ECLARE's default "
            "is 1,000,000 patches in batches of 128); input: the LR as NIfTI, spacing "
            "(r c_S, in-plane); slice thickness given as the simulated thickness / finest "
            "in-plane spacing (ESPRESO's estimate not run); output (slices at "
            "the finest in-plane spacing, same-field-of-view sampling) resampled by cubic "
            "B-spline onto the thin-slice grid; time includes training, inference and file I/O"
        )
    return lines


def report(
    rows: list[dict], methods: list[Method], config: list[str],
    models: list[tuple[str, str, SAINR]], factors: tuple[float, ...],
) -> str:  # fmt: skip
    """results.md: configuration, PSNR/SSIM/S3/time tables, gating and GFLOPs sections."""
    names = [m.name for m in methods]
    scored = [r for r in rows if r["method"] != TRUTH]
    first = next((m.name for m in methods if m.model is not None), None)
    parts = [
        "# SA-INR evaluation",
        "## Configuration\n\n" + "\n".join(config),
        "## PSNR (dB)\n\n" + metric_table(scored, "psnr", names, ".2f", gain_of=first),
        "## SSIM\n\n" + metric_table(scored, "ssim", names, ".4f"),
        "## S3 sharpness\n\n" + metric_table(rows, "s3", names + [TRUTH], ".4f"),
        "## Wall time (s)\n\n" + metric_table(scored, "seconds", names, ".2f"),
    ]
    for m in methods:
        if m.gated and f"{m.name} (ungated)" in names:
            parts.append(f"## Gating: `{m.name}` gated vs ungated\n\n" + gating_table(rows, m))
    attended = {
        m.name: float(np.mean([r["attended"] for r in rows if r["method"] == m.name]))
        for m in methods if m.gated
    }  # fmt: skip
    parts.append("## GMACs per 256×256×2 slab (the paper's \"GFLOPs\")\n\n"
                 + flops_report(models, factors, attended))  # fmt: skip
    return "\n\n".join(parts) + "\n"
