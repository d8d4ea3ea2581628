"""``sainr evaluate``: SA-INR against interpolation on HR volumes with simulated thick slices
(:mod:`sainr.evaluation`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..evaluation.baselines import WIENER_NSR
from ..evaluation.run import run as evaluate
from ..evaluation.settings import DEFAULT_FACTORS, DEFAULT_PROFILES, EvaluationSettings
from ..runtime.inference import DEFAULT_BUDGET_MB
from .common import add_precision_argument


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``sainr evaluate``."""
    p.add_argument("volumes", type=Path, nargs="*", help="HR volumes (the ground truth)")
    p.add_argument("--out", type=Path, help="output folder (results.csv, results.md, figures)")
    p.add_argument(
        "--factors",
        type=float,
        nargs="+",
        default=list(DEFAULT_FACTORS),
        help="slice-spacing factors to simulate (default 2 2.5 3 4)",
    )
    p.add_argument(
        "--profiles",
        nargs="+",
        choices=DEFAULT_PROFILES,
        default=list(DEFAULT_PROFILES),
        help="slice profiles to simulate (default: none gaussian box; none = pure "
        "decimation, integer factors only)",
    )
    p.add_argument(
        "--figures",
        nargs="*",
        choices=DEFAULT_PROFILES,
        metavar="PROFILE",
        help="write figures for these profiles only (default: every simulated one; "
        "none given: no figures)",
    )
    p.add_argument(
        "--thickness",
        type=float,
        default=1.0,
        metavar="T",
        help="slice thickness / LR spacing of the gaussian and box profiles "
        "(default 1: contiguous thick slices)",
    )
    p.add_argument(
        "--axis",
        type=_axis_arg,
        nargs="+",
        metavar="AXIS",
        help="slice axis 0|1|2|auto, one for all volumes or one per volume "
        "(auto: the coarsest axis, k for near-isotropic volumes)",
    )
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=WEIGHTS",
        help="SA-INR model to evaluate (repeatable; default: the shipped "
        "'default' model when one is installed)",
    )
    p.add_argument(
        "--no-estimated",
        dest="estimated",
        action="store_false",
        help="skip the rows of each model told the slice thickness estimated from the image "
        "(sainr.thickness) instead of the true one",
    )
    p.add_argument(
        "--wiener-nsr",
        type=float,
        default=WIENER_NSR,
        metavar="K",
        help="noise-to-signal ratio of the B-spline + Wiener baseline (default: the value "
        "chosen on the validation volumes, docs/evaluation/wiener_nsr.md)",
    )
    p.add_argument(
        "--note",
        action="append",
        default=[],
        metavar="TEXT",
        help="a line for the report's configuration (repeatable), e.g. the volumes' roles",
    )
    p.add_argument(
        "--no-ungated",
        dest="ungated",
        action="store_false",
        help="skip the ungated runs (LASA on every query) of gated models",
    )
    p.add_argument(
        "--network-only",
        action="store_true",
        help="also run each model (told the true thickness) without the data consistency "
        "step, to see what that step adds",
    )
    p.add_argument(
        "--crop",
        type=int,
        metavar="N",
        help="in-plane centre crop (N x N voxels); the slice thickness is still estimated "
        "from the whole volume, as a user's run would",
    )
    p.add_argument(
        "--estimate-on-crop",
        action="store_true",
        help="estimate the slice thickness from the cropped LR instead, as older reports did",
    )
    p.add_argument(
        "--max-slices",
        type=int,
        default=16,
        metavar="N",
        help="S3 is averaged over N planes containing the slice axis (default 16)",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA if usable, else CPU), cpu, cuda")
    p.add_argument("--memory-mb", type=float, default=DEFAULT_BUDGET_MB, help="inference budget")
    add_precision_argument(p)  # auto differs between CPUs: name one to compare machines
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--flops",
        action="store_true",
        help="print GMACs per 256x256x2 slab (paper's Table III accounting) and stop",
    )
    p.add_argument(
        "--adapt-steps",
        type=int,
        default=0,
        metavar="N",
        help="also run each model fine-tuned on each case's own LR for N steps "
        "(sainr.train.adapt; time includes the adaptation)",
    )
    p.add_argument(
        "--adapt-models",
        nargs="+",
        metavar="NAME",
        help="models to adapt with --adapt-steps (default: all)",
    )
    p.add_argument(
        "--eclare",
        action="store_true",
        help="also run ECLARE (pip package 'eclare', benchmark environments only), "
        "trained per case on the LR's in-plane data",
    )
    p.add_argument(
        "--eclare-patches",
        type=int,
        default=2048,
        metavar="N",
        help="ECLARE training patches per case (its --n-patches; default 2048, "
        "ECLARE's own default is 1000000)",
    )
    p.add_argument(
        "--eclare-batch-size",
        type=int,
        default=8,
        metavar="B",
        help="ECLARE batch size (its --batch-size; default 8, ECLARE's 128); "
        "training steps = ceil(patches / B)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate as the options say."""
    evaluate(
        EvaluationSettings(
            volumes=tuple(args.volumes),
            out=args.out,
            factors=tuple(args.factors),
            profiles=tuple(args.profiles),
            figures=None if args.figures is None else tuple(args.figures),
            thickness=args.thickness,
            axis=tuple(args.axis or ()),
            models=tuple(args.model),
            estimated=args.estimated,
            wiener_nsr=args.wiener_nsr,
            notes=tuple(args.note),
            ungated=args.ungated,
            network_only=args.network_only,
            crop=args.crop,
            estimate_on_crop=args.estimate_on_crop,
            max_slices=args.max_slices,
            device=args.device,
            memory_mb=args.memory_mb,
            precision=args.precision,
            threads=args.threads,
            flops=args.flops,
            adapt_steps=args.adapt_steps,
            adapt_models=None if args.adapt_models is None else tuple(args.adapt_models),
            eclare=args.eclare,
            eclare_patches=args.eclare_patches,
            eclare_batch_size=args.eclare_batch_size,
        )
    )
    return 0


def _axis_arg(text: str) -> int | None:
    """0, 1, 2 or None for 'auto'."""
    if text == "auto":
        return None
    if text in ("0", "1", "2"):
        return int(text)
    raise argparse.ArgumentTypeError(f"axis must be 0, 1, 2 or auto, got {text!r}")
