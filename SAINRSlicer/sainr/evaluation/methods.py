"""The methods that fill a thin-slice grid: linear and B-spline interpolation, B-spline + Wiener
deconvolution of the known slice profile, each SA-INR model (told the true slice thickness or
the thickness estimated from the image; gated, ungated, adapted per case; with the data
consistency step that users get, or the network's output alone) and the shipped-model
loading."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ..acquisition import Acquisition
from ..errors import SainrError, WeightsError
from ..geometry import SliceGrid
from ..model import SAINR, gating_disabled
from ..runtime.consistency import enforce_consistency
from ..runtime.inference import super_resolve
from ..runtime.weights import DEFAULT_MODEL, catalog, load_model, resolve
from ..thickness import resolve_slice_thickness
from .baselines import WIENER_NSR, bspline_interpolate, bspline_wiener, linear_interpolate

TRUTH = "ground truth"
WIENER = "B-spline + Wiener"
#: Suffix of the SA-INR rows told the thickness estimated from the image.
ESTIMATED = " (estimated thickness)"
#: Suffix of the SA-INR rows without the data consistency step (the network's output alone).
NETWORK_ONLY = " (network only)"

Spacing = tuple[float, float, float]


@dataclass(frozen=True)
class Told:
    """What a method is told about the acquisition of a case: the slice ``profile`` (only the
    Wiener baseline uses it) and the slice ``thickness`` relative to the slice spacing (the
    true one or, for the estimated-thickness rows, the image estimate)."""

    profile: str
    thickness: float


#: (normalised LR (S, H, W), thin-slice grid, HR spacing in mm along (S, H, W), what the
#: method is told) -> (thin-slice volume, gating mask or None)
RunFn = Callable[[np.ndarray, SliceGrid, Spacing, Told], tuple[np.ndarray, np.ndarray | None]]
#: (normalised LR, thin-slice grid, HR spacing, the true acquisition) -> relative thickness
ThicknessFn = Callable[[np.ndarray, SliceGrid, Spacing, Acquisition], float]


def true_thickness(_lr: np.ndarray, _grid: SliceGrid, _spacing: Spacing, acq: Acquisition) -> float:
    """The simulated slice thickness / slice spacing (1 / factor for pure decimation)."""
    return acq.relative_thickness


def estimated_for(model: SAINR) -> ThicknessFn:
    """The slice thickness / slice spacing a user who gives none gets from ``model``: the
    image estimate of :mod:`sainr.thickness` on the LR alone (no header), clipped to the
    model's trained range, contiguous slices where the LR is too small to estimate
    (:func:`sainr.thickness.resolve_slice_thickness`); the true acquisition is not looked at.
    The LR (S, H, W) is SimpleITK's (k, j, i) order with the slice axis k: the one a user
    would give (:meth:`~.cases.Case.seen`), which may extend beyond the evaluated crop."""
    trained = getattr(model, "trained_thickness", None)

    def estimated(lr: np.ndarray, grid: SliceGrid, spacing: Spacing, _acq: Acquisition) -> float:
        image = sitk.GetImageFromArray(lr)
        image.SetSpacing(lr_spacing(grid, spacing)[::-1])
        return resolve_slice_thickness(image, 2, None, trained).relative

    return estimated


@dataclass(frozen=True)
class Method:
    """A named way to fill the thin-slice grid; ``model`` is set for SA-INR variants.

    ``thickness`` says where the method's slice thickness comes from (the true one unless
    it is an estimated-thickness row); ``told`` is False for the interpolators, which take
    none (their reported thickness stays empty)."""

    name: str
    run: RunFn
    model: SAINR | None = None
    gated: bool = False
    thickness: ThicknessFn = true_thickness
    told: bool = True


def load_models(specs: tuple[str, ...]) -> list[tuple[str, str, SAINR]]:
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
    models: list[tuple[str, str, SAINR]],
    device: torch.device,
    budget_mb: float,
    ungated: bool = True,
    estimated: bool = True,
    nsr: float = WIENER_NSR,
    precision: str = "auto",
    network_only: bool = False,
) -> list[Method]:
    """Interpolators, B-spline + Wiener (noise-to-signal ratio ``nsr``), then each model told
    the true thickness, then (``estimated``) each model told the image estimate, then
    (``ungated``) each gated model with its gate removed, then (``network_only``) each model
    told the true thickness without the data consistency step; every model runs at
    ``precision``, and every row but the last kind ends with the consistency step, as
    :func:`sainr.api.reduce_spacing` does."""

    def interp(fn) -> RunFn:
        return lambda lr, grid, _spacing, _told: (fn(lr, grid), None)

    def wiener(lr: np.ndarray, grid: SliceGrid, _spacing: Spacing, told: Told):
        return bspline_wiener(lr, grid, told.profile, told.thickness, nsr), None

    methods = [
        Method("linear", interp(linear_interpolate), told=False),
        Method("B-spline", interp(bspline_interpolate), told=False),
        Method(WIENER, wiener),
    ]
    for name, _, model in models:
        methods.append(
            Method(
                name,
                _network(model, device, budget_mb, precision),
                model,
                model.gate is not None,
            )
        )
    for name, _, model in models if estimated else ():
        methods.append(
            Method(
                name + ESTIMATED,
                _network(model, device, budget_mb, precision),
                model,
                thickness=estimated_for(model),
            )
        )
    for name, _, model in models if ungated else ():
        if model.gate is not None:
            methods.append(
                Method(
                    f"{name} (ungated)",
                    _network(model, device, budget_mb, precision, ungated=True),
                    model,
                )
            )
    for name, _, model in models if network_only else ():
        methods.append(
            Method(
                name + NETWORK_ONLY,
                _network(model, device, budget_mb, precision, consistency=False),
                model,
                model.gate is not None,
            )
        )
    return methods


def _network(
    model: SAINR,
    device: torch.device,
    budget_mb: float,
    precision: str = "auto",
    ungated: bool = False,
    adapt_steps: int = 0,
    consistency: bool = True,
) -> RunFn:
    """SA-INR on the case's LR, followed (``consistency``) by the data consistency step of
    :func:`sainr.runtime.consistency.enforce_consistency`; with ``adapt_steps``, a copy of the
    model is first fine-tuned on that LR alone (:func:`adapt_to_case`)."""

    def run_model(
        lr: np.ndarray, grid: SliceGrid, spacing: Spacing, told: Told
    ) -> tuple[np.ndarray, np.ndarray]:
        thickness = told.thickness
        net = model
        if adapt_steps:
            net = adapt_to_case(model, lr, grid, spacing, thickness, adapt_steps)
        run = partial(super_resolve, device=device, budget_mb=budget_mb, precision=precision)
        if ungated:
            with gating_disabled(net):
                thin, mask = run(net, lr, grid, thickness=thickness)
        else:
            thin, mask = run(net, lr, grid, thickness=thickness)
        if consistency:
            enforce_consistency(thin, lr, grid, thickness)
        return thin, mask

    return run_model


def adapted_methods(
    models: list[tuple[str, str, SAINR]],
    steps: int,
    names: tuple[str, ...] | None,
    device: torch.device,
    budget_mb: float,
    precision: str = "auto",
) -> list[Method]:
    """``<model> adapted (N steps)`` for each model (or each of ``names``), run at
    ``precision`` after the (fp32) fine-tuning; none for N = 0."""
    if steps < 0:
        raise SainrError(f"--adapt-steps must be >= 0, got {steps}")
    if not steps:
        return []
    known = [name for name, _, _ in models]
    unknown = sorted(set(names or ()) - set(known))
    if not models or unknown:
        raise SainrError(
            f"--adapt-steps: no SA-INR model {unknown or ''} to adapt; models: "
            f"{known} (name them with --model NAME=WEIGHTS)"
        )
    try:
        from ..train.adapt import AdaptConfig, adapt  # noqa: F401  (fail before any case runs)
    except ImportError as exc:
        raise SainrError(
            f"--adapt-steps needs sainr.train.adapt, which cannot be imported: {exc}"
        ) from exc
    return [
        Method(
            f"{name} adapted ({steps} steps)",
            _network(model, device, budget_mb, precision, adapt_steps=steps),
        )
        for name, _, model in models
        if names is None or name in names
    ]


def adapt_to_case(
    model: SAINR,
    lr: np.ndarray,
    grid: SliceGrid,
    spacing: tuple[float, float, float],
    thickness: float,
    steps: int,
) -> SAINR:
    """A fine-tuned copy of ``model`` (:func:`sainr.train.adapt.adapt` leaves ``model`` unchanged),
    trained on this case's LR only: ``lr`` is the normalised array SA-INR receives (the HR's
    robust scale, slice axis first), its spacing (r c_S, c_H, c_W), the target the HR slice
    spacing c_S, told the simulated slice ``thickness`` (relative to the LR spacing) as
    ECLARE is."""
    from ..train.adapt import AdaptConfig, adapt

    config = AdaptConfig(steps=steps, thickness=thickness)
    return adapt(model, lr, lr_spacing(grid, spacing), spacing[0], config=config)


def lr_spacing(grid: SliceGrid, spacing: tuple[float, float, float]) -> tuple[float, float, float]:
    """Spacing (mm, along S, H, W) of the simulated LR: the HR's with slices ``grid.factor``
    times further apart."""
    return (grid.factor * spacing[0], spacing[1], spacing[2])
