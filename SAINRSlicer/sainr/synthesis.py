"""Stage I of self-supervised SA-INR: synthetic thin-slice volumes from real thick-slice ones.

Without thin-slice ground truth (method note §5, after Xuan et al. 2021), a 2D VAE
(:mod:`sainr.model.vae`) learns the in-plane slices of the real thick-slice volumes (the only
sharp planes they have). A volume with slice spacing c_L then gets m - 1 new slices between
slices i and i + 1 by decoding the lerp of their posterior means, (1 - t) mu_i + t mu_{i+1},
at t = k / m: a synthetic volume at c_L / m whose slice j m lies exactly at input slice j.
Stage II is the supervised trainer, unchanged, on those volumes.

Two modes:

- ``latent`` (the paper's): every output slice is decode(lerp(mu_i, mu_{i+1}, t)).
- ``residual`` (default, our design): lerp(real_i, real_{i+1}, t) + decode(lerp(mu_i,
  mu_{i+1}, t)) - lerp(decode(mu_i), decode(mu_{i+1}), t). The VAE contributes only the
  non-linear anatomical change it sees between the slices; its blur and reconstruction error
  cancel, so the real slices come back exactly (t = 0) with their sharpness.

Intensities use the robust per-volume scale of :mod:`sainr.intensity`; the output is float32 in
the input's units (interpolated values are not integers). Each synthesis writes the volume, its
sanity checks as JSON ((a) reconstruction PSNR of the real slices, (b) PSNR of the synthetic
volume decimated by m against the real slices, exact in residual mode) and (c) a PNG of a
plane across the slices, for spotting morphing. ``train_vae`` resumes from ``OUT/vae.pt``.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from .errors import SainrError, SpacingError, WeightsError
from .geometry import axis_label, detect_slice_axis
from .inference import autocast, choose_device
from .intensity import IntensityScale, robust_scale
from .io import read_volume, volume_suffix, write_atomically, write_volume
from .metrics import psnr
from .model.vae import SliceVAE, VAEConfig, kl_divergence
from .validation import check_image, check_values

Tensorish = np.ndarray | torch.Tensor
VAE_FORMAT = "sainr-vae-v1"
CHECKPOINT = "vae.pt"
MODES = ("residual", "latent")
#: Training crops with less than this fraction of voxels above FOREGROUND are redrawn (up to
#: 20 times), so the VAE does not spend its steps on air.
MIN_FOREGROUND = 0.05
FOREGROUND = 0.1
#: Slices per encoder/decoder call at synthesis (bounds memory on large slices).
CHUNK = 8


# --- data -----------------------------------------------------------------------------------


@dataclass
class SliceStack:
    """A volume's in-plane slices (slice axis first), normalised, and how to undo it."""

    name: str
    slices: np.ndarray  # float32 (n, H, W), normalised
    scale: IntensityScale
    axis: int  # index axis (i, j, k) the slices are stacked along


def volume_slices(image: sitk.Image, axis: int | None = None) -> tuple[np.ndarray, int]:
    """(slices (n, H, W) float32 in the input's units, slice index axis) of a checked
    ``image`` (3D scalar, >= 2 slices, contrast); the slice axis is the coarsest one unless
    given."""
    check_image(image)
    ax = detect_slice_axis(image.GetSpacing(), image.GetDirection(), axis)
    array = np.asarray(check_values(sitk.GetArrayViewFromImage(image)), dtype=np.float32)
    return np.ascontiguousarray(np.moveaxis(array, 2 - ax, 0)), ax


def slice_stack(image: sitk.Image, name: str, axis: int | None = None) -> SliceStack:
    """The in-plane slices of ``image``, normalised with the robust volume scale."""
    slices, ax = volume_slices(image, axis)
    scale = robust_scale(slices)
    return SliceStack(name, scale.normalize(slices), scale, ax)


def load_stacks(paths: Sequence[str | os.PathLike], axis: int | None = None) -> list[SliceStack]:
    """Read and check every volume before any work starts."""
    if not paths:
        raise SainrError("no input volumes given; pass the thick-slice volumes to train on")
    return [slice_stack(read_volume(p), Path(p).name, axis) for p in paths]


def sample_crops(
    stacks: list[SliceStack], crop: int, batch: int, rng: np.random.Generator
) -> np.ndarray:
    """(batch, 1, crop, crop) random in-plane crops (volume, then slice, uniformly), with
    random flips and transposes; slices smaller than ``crop`` are edge-padded."""
    out = np.empty((batch, 1, crop, crop), dtype=np.float32)
    for b in range(batch):
        stack = stacks[int(rng.integers(len(stacks)))]
        plane = stack.slices[int(rng.integers(len(stack.slices)))]
        if min(plane.shape) < crop:
            plane = np.pad(plane, [(0, max(crop - n, 0)) for n in plane.shape], mode="edge")
        for _ in range(20):
            y, x = (int(rng.integers(0, n - crop + 1)) for n in plane.shape)
            patch = plane[y : y + crop, x : x + crop]
            if (patch > FOREGROUND).mean() >= MIN_FOREGROUND:
                break
        if rng.random() < 0.5:
            patch = patch[::-1]
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        if rng.random() < 0.5:
            patch = patch.T
        out[b, 0] = patch
    return out


# --- training -------------------------------------------------------------------------------


@dataclass
class VAETrainConfig:
    """Everything that defines a VAE run; stored in its checkpoint."""

    model: dict[str, Any] = field(default_factory=dict)  # VAEConfig fields
    steps: int = 2000
    batch: int = 8
    crop: int = 128
    lr: float = 1e-3
    beta: float = 5e-4  # KL weight (per latent element vs per-pixel L1)
    warmup: int = 500  # beta ramps linearly from 0 over this many steps
    checkpoint_minutes: float = 3.0
    log_every: int = 50
    seed: int = 0
    amp: str = "none"  # none | bf16


def beta_at(step: int, cfg: VAETrainConfig) -> float:
    """KL weight at ``step``: linear warm-up from 0 (pure auto-encoder first, so the latent
    carries the anatomy before the prior smooths it)."""
    return cfg.beta * min(1.0, step / cfg.warmup) if cfg.warmup > 0 else cfg.beta


def lr_at(step: int, cfg: VAETrainConfig) -> float:
    """Cosine decay to 5 % of ``cfg.lr``: a pure function of the step, so resuming (or
    extending ``steps``) needs no scheduler state."""
    progress = min(step / max(cfg.steps, 1), 1.0)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
        raise WeightsError(
            f"cannot read the VAE checkpoint {path} ({exc}); train it again"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != VAE_FORMAT:
        raise WeightsError(f"{path} is not a VAE checkpoint of `sainr train-vae`")
    return ckpt


def load_vae(path: str | os.PathLike) -> SliceVAE:
    """The VAE of a ``train-vae`` checkpoint, in evaluation mode."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"VAE checkpoint not found: {path}; train one with `sainr train-vae`")
    ckpt = _read_checkpoint(path)
    vae = SliceVAE(VAEConfig.from_dict(ckpt["config"]))
    vae.load_state_dict(ckpt["state_dict"])
    return vae.eval()


def train_vae(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    cfg: VAETrainConfig | None = None,
    *,
    axis: int | None = None,
    max_minutes: float | None = None,
    device: str = "auto",
    log: Callable[[str], None] = print,
) -> dict[str, float]:
    """Train (or resume from ``OUT/vae.pt``) the slice VAE on random in-plane crops of the
    thick-slice ``inputs``: Adam on L1 + beta KL. Returns the last logged means."""
    cfg = cfg or VAETrainConfig()
    if cfg.amp not in ("none", "bf16"):
        raise SainrError(f"unknown amp mode {cfg.amp!r}; use none or bf16")
    try:
        vae_cfg = VAEConfig.from_dict(cfg.model)
    except (ValueError, TypeError) as exc:
        raise SainrError(f"bad VAE model options: {exc}") from exc
    stacks = load_stacks(inputs, axis)
    dev = choose_device(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / CHECKPOINT
    torch.manual_seed(cfg.seed)
    vae = SliceVAE(vae_cfg).to(dev)
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.lr)
    step, elapsed = 0, 0.0
    if path.is_file():
        ckpt = _read_checkpoint(path)
        if VAEConfig.from_dict(ckpt["config"]) != vae_cfg:
            raise SainrError(
                f"{path} holds a VAE with {ckpt['config']}, not {vae_cfg.to_dict()}; "
                "use the same model options or another --out"
            )
        vae.load_state_dict(ckpt["state_dict"])
        opt.load_state_dict(ckpt["optimizer"])
        step, elapsed = ckpt["step"], ckpt["elapsed"]
        torch.set_rng_state(ckpt["rng"])
        log(f"resumed from {path} at step {step}")
    log(f"VAE {sum(p.numel() for p in vae.parameters())} parameters on {dev}; "
        + ", ".join(f"{s.name} ({len(s.slices)} slices, axis {'ijk'[s.axis]})" for s in stacks))  # fmt: skip

    def checkpoint() -> None:
        state = {"format": VAE_FORMAT, "config": vae_cfg.to_dict(), "train": asdict(cfg),
                 "inputs": [s.name for s in stacks], "state_dict": vae.state_dict(),
                 "optimizer": opt.state_dict(), "step": step, "elapsed": elapsed,
                 "rng": torch.get_rng_state()}  # fmt: skip
        write_atomically(path, lambda tmp: torch.save(state, tmp), ".tmp")

    t0, started, last_save = time.time() - elapsed, time.time(), time.time()
    running: list[tuple[float, float]] = []
    summary: dict[str, float] = {"step": step}
    vae.train()
    while step < cfg.steps:
        batch = sample_crops(stacks, cfg.crop, cfg.batch, np.random.default_rng((cfg.seed, step)))
        x = torch.from_numpy(batch).to(dev)
        with autocast(dev, "fp32" if cfg.amp == "none" else cfg.amp):
            res = vae(x)
        l1 = (res.recon.float() - x).abs().mean()
        kl = kl_divergence(res.mu.float(), res.logvar.float())
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        opt.zero_grad(set_to_none=True)
        (l1 + beta_at(step, cfg) * kl).backward()
        opt.step()
        step += 1
        elapsed = time.time() - t0
        running.append((l1.item(), kl.item()))
        if step % cfg.log_every == 0 or step == cfg.steps:
            l1m, klm = np.mean(running, axis=0)
            summary = {"step": step, "l1": float(l1m), "kl": float(klm)}
            log(f"step {step}/{cfg.steps}  l1 {l1m:.4f}  kl {klm:.3f}  beta {beta_at(step, cfg):.1e}  "
                f"lr {lr_at(step, cfg):.1e}  {elapsed / 60:.1f} min")  # fmt: skip
            running = []
        if time.time() - last_save > 60 * cfg.checkpoint_minutes:
            checkpoint()
            last_save = time.time()
        if max_minutes is not None and time.time() - started > 60 * max_minutes:
            log(f"time budget of {max_minutes} min reached at step {step}")
            break
    checkpoint()
    log(f"wrote {path} (step {step})")
    return summary


# --- synthesis ------------------------------------------------------------------------------


@torch.no_grad()
def _encode(vae: SliceVAE, slices: np.ndarray, device: torch.device) -> torch.Tensor:
    """Posterior means (n, latent, h, w) of slices (n, H, W), on the CPU."""
    mus = [vae.encode(torch.from_numpy(slices[s : s + CHUNK, None]).to(device))[0].cpu()
           for s in range(0, len(slices), CHUNK)]  # fmt: skip
    return torch.cat(mus).float()


@torch.no_grad()
def _decode(
    vae: SliceVAE, z: torch.Tensor, size: tuple[int, int], device: torch.device
) -> np.ndarray:
    """Slices (n, H, W) decoded from latents (n, latent, h, w)."""
    out = [vae.decode(z[s : s + CHUNK].to(device), size)[:, 0].float().cpu()
           for s in range(0, len(z), CHUNK)]  # fmt: skip
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
    linear = np.concatenate([lerp_pairs(real, np.arange(factor, dtype=np.float32) / factor)
                             .reshape(-1, real.shape[1]), real[-1:]])  # fmt: skip
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
    return {k: str(v) if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in checks.items()}  # fmt: skip


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
    write_atomically(report, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), report.suffix)
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
