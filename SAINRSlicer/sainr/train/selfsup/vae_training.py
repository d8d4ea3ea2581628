"""Training the in-plane slice VAE (:mod:`sainr.model.vae`) on the slices of real thick-slice
volumes, with checkpoints that resume (``OUT/vae.pt``)."""

from __future__ import annotations

import math
import os
import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import SainrError, WeightsError
from ...io.files import write_atomically
from ...model.vae import SliceVAE, VAEConfig, kl_divergence
from ...runtime.device import choose_device
from ...runtime.precision import autocast
from .slices import load_stacks, sample_crops

VAE_FORMAT = "sainr-vae-v1"

CHECKPOINT = "vae.pt"


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
    log(
        f"VAE {sum(p.numel() for p in vae.parameters())} parameters on {dev}; "
        + ", ".join(f"{s.name} ({len(s.slices)} slices, axis {'ijk'[s.axis]})" for s in stacks)
    )

    def checkpoint() -> None:
        state = {
            "format": VAE_FORMAT,
            "config": vae_cfg.to_dict(),
            "train": asdict(cfg),
            "inputs": [s.name for s in stacks],
            "state_dict": vae.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "elapsed": elapsed,
            "rng": torch.get_rng_state(),
        }
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
            log(
                f"step {step}/{cfg.steps}  l1 {l1m:.4f}  kl {klm:.3f}  beta {beta_at(step, cfg):.1e}  "
                f"lr {lr_at(step, cfg):.1e}  {elapsed / 60:.1f} min"
            )
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
