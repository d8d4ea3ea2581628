"""``sainr train-vae INPUTS --out RUN``: stage I of self-supervised training, the in-plane
slice VAE (:func:`sainr.train.selfsup.vae_training.train_vae`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..model.vae import VAEConfig
from ..train.selfsup.vae_training import VAETrainConfig, train_vae


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``sainr train-vae``."""
    d = VAETrainConfig()
    p.add_argument(
        "inputs",
        type=Path,
        nargs="+",
        help="thick-slice volumes (their in-plane slices are the data)",
    )
    p.add_argument(
        "--out", type=Path, required=True, help="run folder; OUT/vae.pt (the same command resumes)"
    )
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--crop", type=int, default=d.crop, help="square training crop (pixels)")
    p.add_argument(
        "--lr", type=float, default=d.lr, help="Adam learning rate (cosine decay to 5 %%)"
    )
    p.add_argument("--beta", type=float, default=d.beta, help="KL weight after the warm-up")
    p.add_argument("--warmup", type=int, default=d.warmup, help="steps of linear beta warm-up")
    p.add_argument(
        "--widths",
        type=int,
        nargs="+",
        default=list(VAEConfig.widths),
        help="channels per stride-2 stage",
    )
    p.add_argument("--latent", type=int, default=VAEConfig.latent, help="latent channels")
    p.add_argument(
        "--amp",
        choices=("none", "bf16"),
        default=d.amp,
        help="bf16 autocast (CPUs with AMX or AVX-512 BF16, GPUs)",
    )
    p.add_argument(
        "--axis",
        type=int,
        choices=(0, 1, 2),
        help="slice axis of every input (default: coarsest spacing)",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA if usable, else CPU), cpu, cuda")
    p.add_argument("--max-minutes", type=float, help="stop (with a checkpoint) after this long")
    p.add_argument("--checkpoint-minutes", type=float, default=d.checkpoint_minutes)
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--seed", type=int, default=d.seed)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train (or resume) the slice VAE as the options say."""
    cfg = VAETrainConfig(
        model={"widths": list(args.widths), "latent": args.latent},
        steps=args.steps,
        batch=args.batch,
        crop=args.crop,
        lr=args.lr,
        beta=args.beta,
        warmup=args.warmup,
        checkpoint_minutes=args.checkpoint_minutes,
        log_every=args.log_every,
        seed=args.seed,
        amp=args.amp,
    )
    train_vae(
        args.inputs,
        args.out,
        cfg,
        axis=args.axis,
        max_minutes=args.max_minutes,
        device=args.device,
        log=lambda msg: print(msg, flush=True),
    )
    return 0
