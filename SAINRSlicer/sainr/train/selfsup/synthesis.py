"""Synthetic thin-slice volumes by latent interpolation of the slice VAE (``latent`` and
``residual`` modes), their sanity checks and reformatted-plane picture, and the thick-slice
inputs of the pipeline."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from ...errors import SainrError, SpacingError
from ...evaluation.metrics import psnr
from ...geometry import axis_label, detect_slice_axis
from ...intensity import robust_scale
from ...io.files import write_atomically
from ...io.outputs import write_volume
from ...io.read import read_volume, volume_suffix
from ...model.vae import SliceVAE
from ...runtime.device import choose_device
from ...validation import check_image
from .slices import volume_slices

Tensorish = np.ndarray | torch.Tensor

MODES = ("residual", "latent")

#: Slices per encoder/decoder call at synthesis (bounds memory on large slices).
CHUNK = 8


@torch.no_grad()
def _encode(vae: SliceVAE, slices: np.ndarray, device: torch.device) -> torch.Tensor:
    """Posterior means (n, latent, h, w) of slices (n, H, W), on the CPU."""
    mus = [
        vae.encode(torch.from_numpy(slices[s : s + CHUNK, None]).to(device))[0].cpu()
        for s in range(0, len(slices), CHUNK)
    ]
    return torch.cat(mus).float()


@torch.no_grad()
def _decode(
    vae: SliceVAE, z: torch.Tensor, size: tuple[int, int], device: torch.device
) -> np.ndarray:
    """Slices (n, H, W) decoded from latents (n, latent, h, w)."""
    out = [
        vae.decode(z[s : s + CHUNK].to(device), size)[:, 0].float().cpu()
        for s in range(0, len(z), CHUNK)
    ]
    return torch.cat(out).numpy()


def lerp_pairs(a: Tensorish, t: Tensorish) -> Tensorish:
    """(n - 1, len(t), ...) linear interpolations between consecutive entries of ``a``
    (n, ...) at fractions ``t``; works on numpy arrays and torch tensors alike."""
    t = t.reshape(1, -1, *([1] * (a.ndim - 1)))
    return (1 - t) * a[:-1, None] + t * a[1:, None]


def interpolate_slices(
    vae: SliceVAE, slices: np.ndarray, factor: int, mode: str = "residual", device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Thin slices ((n - 1) factor + 1, H, W) from slices (n, H, W) in any units (normalised
    for the VAE with the robust volume scale, results mapped back), and the reconstructions
    decode(mu_i) of the given slices. Slice j factor is given slice j, bit for bit
    (``residual``), or its reconstruction (``latent``)."""
    if mode not in MODES:
        raise SainrError(f"unknown synthesis mode {mode!r}; use one of {', '.join(MODES)}")
    if not (isinstance(factor, int) and factor >= 2):
        raise SpacingError(f"the synthesis factor must be an integer >= 2, got {factor}")
    dev = choose_device(device)
    vae = vae.to(dev).eval()
    scale = robust_scale(slices)
    n, size = len(slices), slices.shape[1:]
    mu = _encode(vae, scale.normalize(slices), dev)
    recon = scale.denormalize(_decode(vae, mu, size, dev)).astype(np.float32)
    t = np.arange(1, factor, dtype=np.float32) / factor  # intermediate positions
    z = lerp_pairs(mu, torch.from_numpy(t))  # (n - 1, factor - 1, latent, h, w)
    middle = scale.denormalize(_decode(vae, z.flatten(0, 1), size, dev))
    middle = middle.reshape(n - 1, factor - 1, *size)
    if mode == "residual":  # the scale's offset cancels in the difference
        middle = lerp_pairs(slices, t) + middle - lerp_pairs(recon, t)
    base = slices if mode == "residual" else recon
    out = np.empty((n - 1, factor, *size), dtype=np.float32)
    out[:, 0], out[:, 1:] = base[:-1], middle
    return np.concatenate([out.reshape(-1, *size), base[-1:]]), recon


@dataclass
class Synthesis:
    """Synthetic thin-slice image (float32, input units) and its sanity checks."""

    image: sitk.Image
    checks: dict[str, Any]
    real: np.ndarray  # (n, H, W) input slices (slice axis first), float32 input units
    thin: np.ndarray  # ((n - 1) factor + 1, H, W) synthetic slices, same units
    axis: int


def synthesize_volume(
    image: sitk.Image,
    vae: SliceVAE,
    factor: int = 4,
    mode: str = "residual",
    axis: int | None = None,
    device: str = "cpu",
) -> Synthesis:
    """The synthetic volume of ``image`` at slice spacing c_L / factor: same origin and
    direction, in-plane grid unchanged, slice j factor at input slice j. Values are clipped
    to the input's range."""
    real, ax = volume_slices(image, axis)
    thin, recon = interpolate_slices(vae, real, factor, mode, device)
    lo, hi = float(real.min()), float(real.max())
    thin = np.clip(thin, lo, hi)
    spacing = list(image.GetSpacing())
    spacing[ax] /= factor
    result = sitk.GetImageFromArray(np.ascontiguousarray(np.moveaxis(thin, 0, 2 - ax)))
    result.SetSpacing(spacing)
    result.SetOrigin(image.GetOrigin())
    result.SetDirection(image.GetDirection())
    size = real.shape[1:]
    middle = thin[:-1].reshape(len(real) - 1, factor, *size)[:, 1:]
    linear = lerp_pairs(real, np.arange(1, factor, dtype=np.float32) / factor)
    checks = {
        "mode": mode,
        "factor": factor,
        "axis": ax,
        "axis_label": axis_label(image.GetDirection(), ax),
        "slices_in": len(real),
        "slices_out": len(thin),
        "spacing_in": image.GetSpacing()[ax],
        "spacing_out": spacing[ax],
        "recon_psnr": float(psnr(np.clip(recon, lo, hi), real)),
        "decimated_psnr": float(psnr(thin[::factor], real)),
        "decimated_max_abs": float(np.abs(thin[::factor] - real).max()),
        "change_vs_linear_pct": float(100 * np.abs(middle - linear).mean() / (hi - lo)),
    }
    return Synthesis(result, checks, real, thin, ax)


def save_reformat(syn: Synthesis, path: str | os.PathLike) -> None:
    """PNG of one plane across the slices (through the middle of the second in-plane index
    axis, at physical aspect): input nearest-upsampled, synthetic, synthetic minus linear."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    factor, cut = syn.checks["factor"], syn.real.shape[1] // 2
    real, thin = syn.real[:, cut], syn.thin[:, cut]
    nearest = real[np.rint(np.arange(len(thin)) / factor).astype(int)]
    linear = np.concatenate(
        [
            lerp_pairs(real, np.arange(factor, dtype=np.float32) / factor).reshape(
                -1, real.shape[1]
            ),
            real[-1:],
        ]
    )
    spacing = syn.image.GetSpacing()
    shown = min(a for a in range(3) if a != syn.axis)  # index axis of the last array axis
    extent = (0, real.shape[1] * spacing[shown], len(thin) * spacing[syn.axis], 0)
    vmin, vmax = np.percentile(syn.real, [0.5, 99.5])
    diff = thin - linear
    lim = max(float(np.abs(diff).max()), 1e-6)
    panels = [
        (nearest, f"input ({syn.checks['spacing_in']:.3g} mm, nearest)", "gray", vmin, vmax),
        (thin, f"synthetic, {syn.checks['mode']} ({spacing[syn.axis]:.3g} mm)", "gray", vmin, vmax),
        (diff, "synthetic - linear interpolation", "coolwarm", -lim, lim),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.8))
    for ax, (img, title, cmap, lo, hi) in zip(axes, panels):
        image = ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi, extent=extent, interpolation="nearest")
        ax.set_title(title)
        ax.set_xlabel("mm (in-plane)")
    fig.colorbar(image, ax=axes[2], fraction=0.046)
    axes[0].set_ylabel("mm (through-plane)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _jsonable(checks: dict[str, Any]) -> dict[str, Any]:
    """JSON has no infinity: an exact PSNR is written as the string "inf"."""
    return {
        k: str(v) if isinstance(v, float) and not math.isfinite(v) else v for k, v in checks.items()
    }


def synthesize(
    input_path: str | os.PathLike,
    output: str | os.PathLike,
    vae: SliceVAE,
    factor: int = 4,
    mode: str = "residual",
    axis: int | None = None,
    device: str = "cpu",
    preview: bool = True,
) -> dict[str, Any]:
    """Synthesise ``input_path`` into the NIfTI ``output``; writes ``<stem>_checks.json`` and
    (``preview``) ``<stem>_reformat.png`` beside it, all atomically. Returns the checks."""
    src, dst = Path(input_path), Path(output)
    if volume_suffix(dst) not in (".nii.gz", ".nii"):
        raise SainrError(
            f"the synthetic volume is written as NIfTI; name it .nii.gz, not {dst.name}"
        )
    syn = synthesize_volume(read_volume(src), vae, factor, mode, axis, device)
    write_volume(syn.image, dst)
    stem = dst.parent / dst.name[: -len(volume_suffix(dst))]
    checks = {"input": str(src), "output": str(dst), **syn.checks}
    if preview:
        png = stem.with_name(stem.name + "_reformat.png")
        write_atomically(png, lambda tmp: save_reformat(syn, tmp), png.suffix)
        checks["preview"] = str(png)
    report = stem.with_name(stem.name + "_checks.json")
    text = json.dumps(_jsonable(checks), indent=2) + "\n"
    write_atomically(
        report, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), report.suffix
    )
    return checks


def prepare_thick(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    keep_every: int = 1,
    axis: int | None = None,
    crop: Sequence[Sequence[int]] | None = None,
) -> sitk.Image:
    """Thick-slice input for the self-supervised pipeline: optional crop (array order k, j, i,
    as in the training configs: ``[[], [0, 280], []]``), then every ``keep_every``-th slice
    along the slice axis (coarsest spacing unless ``axis``) from slice 0. Geometry follows
    (SimpleITK slicing); written atomically to ``dst``."""
    image = read_volume(src)
    check_image(image)
    if crop is not None:
        image = image[tuple(slice(*c) if c else slice(None) for c in reversed(crop))]
    ax = detect_slice_axis(image.GetSpacing(), image.GetDirection(), axis)
    index = [slice(None)] * 3
    index[ax] = slice(None, None, keep_every)
    image = image[tuple(index)]
    write_volume(image, dst)
    return image
