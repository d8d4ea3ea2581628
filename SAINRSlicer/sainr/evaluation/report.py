"""results.csv and results.md: the per-row CSV, the metric, gating and GMAC tables, and the
configuration that says exactly what was run."""

from __future__ import annotations

import csv
import platform
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..io.files import write_atomically
from ..model import SAINR, ModelConfig
from ..runtime.consistency import describe as describe_consistency
from ..runtime.precision import resolve_precision
from .cases import Case
from .eclare import EclareOptions, require_eclare
from .flops import flops_table, slab_macs
from .methods import ESTIMATED, NETWORK_ONLY, TRUTH, WIENER, Method
from .metrics import FOREGROUND_FRACTION, FOREGROUND_PERCENTILE
from .settings import EvaluationSettings

_FIELDS = (
    "volume",
    "axis",
    "profile",
    "factor",
    "method",
    "psnr",
    "psnr_fg",
    "ssim",
    "s3",
    "seconds",
    "attended",
    "thickness",
    "foreground",
)


def write_csv(rows: list[dict], path: Path) -> None:
    """One line per row; empty cells where a metric does not apply. Written atomically: an
    interrupted evaluation never leaves a truncated table over the previous one."""

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, _FIELDS)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: _csv_value(row.get(k)) for k in _FIELDS})

    write_atomically(path, write)


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


def metric_table(
    rows: list[dict], metric: str, columns: list[str], fmt: str, gain_of: str | None = None
) -> str:
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
            gains = [
                index[(k, gain_of)][metric]
                - max(index[(k, "linear")][metric], index[(k, "B-spline")][metric])
                for k in sel
            ]
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


def margin_table(rows: list[dict], methods: list[Method], metric: str = "psnr") -> str:
    """Markdown: per SA-INR row and (profile, factor), the mean and smallest margin over the
    better of linear / B-spline and over B-spline + Wiener, across the volumes."""
    keys, index = _lookup(rows)
    names = [m.name for m in methods if m.model is not None]
    wiener = any(m.name == WIENER for m in methods)
    header = ["method", "profile", "factor", "volumes", "− best interp. (mean)", "min"]
    header += ["− B-spline+Wiener (mean)", "min"] if wiener else []
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for name in names:
        for p, f in dict.fromkeys((p, f) for _, p, f in keys):
            sel = [k for k in keys if k[1:] == (p, f)]
            best = [
                index[(k, name)][metric]
                - max(index[(k, "linear")][metric], index[(k, "B-spline")][metric])
                for k in sel
            ]
            cells = [
                name,
                p,
                f"×{f:g}",
                str(len(sel)),
                f"{np.mean(best):+.2f}",
                f"{min(best):+.2f}",
            ]
            if wiener:
                over = [index[(k, name)][metric] - index[(k, WIENER)][metric] for k in sel]
                cells += [f"{np.mean(over):+.2f}", f"{min(over):+.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def thickness_table(rows: list[dict], methods: list[Method]) -> str:
    """Markdown: per case, the true relative slice thickness and each estimated-thickness
    row's estimate (thickness / slice spacing) with its relative error."""
    keys, index = _lookup(rows)
    names = [m.name for m in methods if m.name.endswith(ESTIMATED)]
    header = ["volume", "profile", "factor", "true"]
    for n in names:
        header += [f"{n}", "error"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for key in keys:
        true = index[(key, TRUTH)]["thickness"]
        cells = [key[0], key[1], f"×{key[2]:g}", f"{true:.3f}"]
        for n in names:
            est = index[(key, n)]["thickness"]
            cells += [f"{est:.3f}", f"{100 * (est - true) / true:+.0f} %"]
        lines.append("| " + " | ".join(cells) + " |")
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
        parts.append(
            f"**{name}** ({_config_text(model.config)}{gate})\n\n"
            + flops_table(model.config, factors, frac)
        )
    parts.append(
        "**Paper configuration** (C=64, B=8, hidden 256, 5 layers, 7×7 window; "
        "Table III: 288.6/302.6/316.5 no LASA, 447.3/514.2/580.3 LASA, "
        "320.3/344.9/369.4 gated 20 % at ×2/×3/×4)\n\n"
        + flops_table(ModelConfig(), (2.0, 3.0, 4.0), 0.2)
    )
    return "\n\n".join(parts)


def _config_text(cfg: ModelConfig) -> str:
    return ", ".join(f"{k}={v}" for k, v in cfg.to_dict().items())


def _estimated_from(settings: EvaluationSettings) -> str:
    """Which LR the thickness estimates read (sainr.evaluation.cases.Case.seen)."""
    if not settings.crop:
        return "the whole LR"
    if settings.estimate_on_crop:
        return "the cropped LR (--estimate-on-crop)"
    return "the whole volume's LR, as a user's run sees it (the crop only saves time)"


def configuration(
    cases: list[Case],
    models: list[tuple[str, str, SAINR]],
    factors: tuple[float, ...],
    settings: EvaluationSettings,
    device: torch.device,
    estimated: bool = False,
) -> list[str]:
    """Markdown bullet lines describing exactly what was run."""
    lines = [f"- note: {note}" for note in settings.notes]
    lines += [
        f"- volume `{c.name}`: slice axis {c.label}, HR {c.hr.shape[0]} slices × "
        f"{c.hr.shape[1]}×{c.hr.shape[2]} in-plane, spacing {c.spacing[0]:g} mm "
        f"(in-plane {c.spacing[1]:g}×{c.spacing[2]:g} mm)"
        for c in cases
    ]
    for name, source, model in models:
        n_params = sum(p.numel() for p in model.parameters())
        lines.append(
            f"- model `{name}` from {source}: {_config_text(model.config)}; {n_params:,} parameters"
        )
    crop = (
        f"{settings.crop}×{settings.crop} in-plane centre crop"
        if settings.crop
        else "none (full volumes)"
    )
    lines += [
        f"- factors: {', '.join(f'×{f:g}' for f in factors)}; crop: {crop}",
        f"- device: {device}; precision: {resolve_precision(device, settings.precision)} "
        f"({settings.precision}); "
        f"torch threads: {torch.get_num_threads()}; torch {torch.__version__}; "
        f"sainr {__version__}; Python {platform.python_version()}",
        f"- LR simulation (sainr.acquisition): slices centred at HR positions 0, r, 2r, …; "
        f"profiles {', '.join(dict.fromkeys(settings.profiles))} (none = the HR slice itself, "
        f"integer r only; gaussian = FWHM, box = width of {settings.thickness:g} × the LR "
        "spacing, weights integrated over each HR voxel); every method that takes it is told "
        "that thickness; output grid = HR grid, truth = HR slices 0 … n_H−1",
        "- intensities: every metric in the units of the HR volume's robust scale "
        "(0.5th → 0, 99.5th percentile → 1), shared by all methods; PSNR equals the PSNR in "
        "the file's units when the 0.5th percentile is 0 (volumes with background)",
        f"- {WIENER}: cubic B-spline onto the thin grid, then along the slice axis a Wiener "
        "filter G = H(1+K)/(H²+K) (H: transfer function of the case's true slice profile on "
        "the thin grid, sainr.acquisition's weights; G = 1 where H = 1, so pure decimation is "
        "left as interpolated), mirror-extended FFT; noise-to-signal ratio K = "
        f"{settings.wiener_nsr:g} (chosen on the validation volumes only; "
        "docs/evaluation/wiener_nsr.md)",
        "- SA-INR rows: each model told the true relative slice thickness; "
        + (
            f"'… {ESTIMATED.strip()}' rows: the same model told the thickness that "
            "sainr.thickness estimates from the LR alone (the true one is not looked at), "
            + _estimated_from(settings)
            + "; time includes the estimate"
            if estimated
            else "no estimated-thickness rows (sainr.thickness absent or --no-estimated)"
        ),
        "- every SA-INR row ends with the data consistency step users get "
        f"(sainr.runtime.consistency: {describe_consistency()}; what re-acquiring the result "
        "misses of the LR, weighted by that residual's Wiener gain against its own noise)"
        + (
            f"; '… {NETWORK_ONLY.strip()}' rows: the network's output without it"
            if settings.network_only
            else ""
        ),
        "- PSNR: MAX = truth max, prediction clipped to [0, MAX]; foreground PSNR: the same "
        f"with the MSE over the voxels where the truth exceeds {FOREGROUND_FRACTION:g} × its "
        f"{FOREGROUND_PERCENTILE:g}th percentile (one mask per case, shared by all methods; "
        "its share of the voxels is the 'foreground' column of the CSV); SSIM: 3D, scikit-image "
        "defaults (7-voxel uniform window), L = max − min of the truth, prediction clipped to "
        "[min, max] of the truth",
        f"- S3: mean over at most {settings.max_slices} planes [:, :, x] containing the slice axis "
        "(x evenly spaced), intensities clipped to [0, 1]; 'ground truth' gives the reference",
        "- time: wall-clock seconds per method and volume (SA-INR: encoder + all queries)",
    ]
    if settings.adapt_steps:
        from dataclasses import asdict

        from ..train.adapt import AdaptConfig

        names = ", ".join(
            f"`{n}`"
            for n, _, _ in models
            if not settings.adapt_models or n in settings.adapt_models
        )
        adapting = {**asdict(AdaptConfig(steps=settings.adapt_steps)), "thickness": "the case's"}
        lines.append(
            f"- adapted: {names} fine-tuned per case on that case's normalised LR only "
            "(sainr.train.adapt, from the loaded weights each time; "
            f"{', '.join(f'{k}={v}' for k, v in adapting.items())}; spacing = LR "
            "spacing, target = HR slice spacing); time includes the adaptation"
        )
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
    rows: list[dict],
    methods: list[Method],
    config: list[str],
    models: list[tuple[str, str, SAINR]],
    factors: tuple[float, ...],
) -> str:
    """results.md: configuration, PSNR/SSIM/S3/time tables, gating and GFLOPs sections."""
    names = [m.name for m in methods]
    scored = [r for r in rows if r["method"] != TRUTH]
    first = next((m.name for m in methods if m.model is not None), None)
    parts = [
        "# SA-INR evaluation",
        "## Configuration\n\n" + "\n".join(config),
        "## PSNR (dB)\n\n" + metric_table(scored, "psnr", names, ".2f", gain_of=first),
        "## Foreground PSNR (dB)\n\n"
        + metric_table(scored, "psnr_fg", names, ".2f", gain_of=first),
        "## SSIM\n\n" + metric_table(scored, "ssim", names, ".4f"),
        "## S3 sharpness\n\n" + metric_table(rows, "s3", names + [TRUTH], ".4f"),
        "## Wall time (s)\n\n" + metric_table(scored, "seconds", names, ".2f"),
    ]
    if first is not None:
        parts.insert(
            2,
            "## Margins of each SA-INR row (PSNR dB)\n\n"
            + margin_table(scored, methods)
            + "\n\nForeground PSNR:\n\n"
            + margin_table(scored, methods, "psnr_fg"),
        )
    if any(m.name.endswith(ESTIMATED) for m in methods):
        parts.append(
            "## Slice thickness: true vs estimated (thickness / slice spacing)\n\n"
            + thickness_table(rows, methods)
        )
    for m in methods:
        if m.gated and f"{m.name} (ungated)" in names:
            parts.append(f"## Gating: `{m.name}` gated vs ungated\n\n" + gating_table(rows, m))
    attended = {
        m.name: float(np.mean([r["attended"] for r in rows if r["method"] == m.name]))
        for m in methods
        if m.gated
    }
    parts.append(
        '## GMACs per 256×256×2 slab (the paper\'s "GFLOPs")\n\n'
        + flops_report(models, factors, attended)
    )
    return "\n\n".join(parts) + "\n"
