"""``sainr synthesize INPUTS --vae RUN/vae.pt --out FOLDER``: thin-slice volumes by latent
interpolation of the slice VAE (:func:`sainr.train.selfsup.synthesis.synthesize`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import SainrError
from ..io.read import volume_suffix
from ..train.selfsup.synthesis import MODES, synthesize
from ..train.selfsup.vae_training import load_vae


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``sainr synthesize``."""
    p.add_argument("inputs", type=Path, nargs="+", help="thick-slice volumes")
    p.add_argument(
        "--vae", type=Path, required=True, help="checkpoint of `sainr train-vae` (OUT/vae.pt)"
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output folder: <name>.nii.gz, _checks.json, _reformat.png",
    )
    p.add_argument(
        "--factor", type=int, default=4, help="m: synthetic slice spacing = input spacing / m"
    )
    p.add_argument(
        "--mode",
        choices=MODES,
        default="residual",
        help="residual: real slices + the VAE's non-linear change (default); latent: all decoded",
    )
    p.add_argument(
        "--axis", type=int, choices=(0, 1, 2), help="slice axis (default: coarsest spacing)"
    )
    p.add_argument("--device", default="auto", help="auto (CUDA if usable, else CPU), cpu, cuda")
    p.add_argument("--no-preview", action="store_true", help="skip the reformatted-plane PNG")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Synthesize a thin-slice volume per input into ``--out``, refusing to overwrite an
    input."""
    vae = load_vae(args.vae)
    for src in args.inputs:
        if not src.exists():
            raise SainrError(f"input not found: {src}; check the path")
    args.out.mkdir(parents=True, exist_ok=True)
    for src in args.inputs:
        name = src.name[: len(src.name) - len(volume_suffix(src) or "")] + ".nii.gz"
        if (args.out / name).exists() and os.path.samefile(args.out / name, src):
            raise SainrError(f"the output {args.out / name} is the input; choose another --out")
        checks = synthesize(
            src,
            args.out / name,
            vae,
            args.factor,
            args.mode,
            args.axis,
            args.device,
            not args.no_preview,
        )
        print(
            f"{src.name}: {checks['slices_in']} slices at {checks['spacing_in']:.4g} mm -> "
            f"{checks['slices_out']} at {checks['spacing_out']:.4g} mm ({checks['mode']}); "
            f"(a) reconstruction PSNR {checks['recon_psnr']:.2f} dB, (b) decimated PSNR "
            f"{checks['decimated_psnr']:.2f} dB, change vs linear "
            f"{checks['change_vs_linear_pct']:.2f} % -> {args.out / name}",
            flush=True,
        )
    return 0
