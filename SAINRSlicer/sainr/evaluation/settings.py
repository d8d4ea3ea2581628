"""What one evaluation runs: the simulated acquisitions, the methods and where results go."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..runtime.inference import DEFAULT_BUDGET_MB
from .baselines import WIENER_NSR

DEFAULT_FACTORS = (2.0, 2.5, 3.0, 4.0)

DEFAULT_PROFILES = ("none", "gaussian", "box")


@dataclass(frozen=True)
class EvaluationSettings:
    """What one evaluation runs (the options of ``sainr evaluate``).

    ``volumes``: HR volumes (the ground truth); ``out``: folder for results.csv, results.md
    and figures. ``factors``, ``profiles``: the simulated acquisitions; ``thickness``: slice
    thickness / LR spacing of the gaussian and box profiles. ``figures``: profiles to draw
    (None: all). ``axis``: one slice axis (None: auto) for all volumes or one per volume.
    ``models``: ``NAME=WEIGHTS`` (none: the shipped default). ``estimated``: also run each
    model told the thickness estimated from the image (:mod:`sainr.thickness`) instead of
    the true one. ``wiener_nsr``: the B-spline + Wiener baseline's noise-to-signal ratio.
    ``notes``: lines for the report's configuration (e.g. which volumes are test volumes).
    ``ungated``: also run gated models without their gate. ``network_only``: also run each
    model (told the true thickness) without the data consistency step. ``crop``: in-plane centre
    crop (the thickness is still estimated on the whole volume, as a user's run would, unless
    ``estimate_on_crop``);
    ``max_slices``: planes S3 is averaged over. ``precision``: how every SA-INR row runs
    (:func:`sainr.runtime.precision.resolve_precision`; ``auto`` differs between CPUs, so a
    comparison across machines names one). ``flops``: print the GMAC tables only.
    ``adapt_steps``, ``adapt_models``: fine-tuned rows per case. ``eclare``: also run ECLARE
    with that budget."""

    volumes: tuple[Path, ...] = ()
    out: Path | None = None
    factors: tuple[float, ...] = DEFAULT_FACTORS
    profiles: tuple[str, ...] = DEFAULT_PROFILES
    figures: tuple[str, ...] | None = None
    thickness: float = 1.0
    axis: tuple[int | None, ...] = ()
    models: tuple[str, ...] = ()
    estimated: bool = True
    wiener_nsr: float = WIENER_NSR
    notes: tuple[str, ...] = ()
    ungated: bool = True
    network_only: bool = False
    crop: int | None = None
    estimate_on_crop: bool = False
    max_slices: int = 16
    device: str = "auto"
    memory_mb: float = DEFAULT_BUDGET_MB
    precision: str = "auto"
    threads: int | None = None
    flops: bool = False
    adapt_steps: int = 0
    adapt_models: tuple[str, ...] | None = None
    eclare: bool = False
    eclare_patches: int = 2048
    eclare_batch_size: int = 8
