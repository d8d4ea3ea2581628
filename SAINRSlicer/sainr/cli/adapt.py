"""``sainr adapt INPUT --spacing MM|--factor F|--isotropic --out WEIGHTS.pt``: fine-tune the
model on one volume's own in-plane detail (:mod:`sainr.train.adapt`), save the weights, and
optionally reduce the volume with them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..api import reduce_spacing
from ..io.outputs import destination, write_volume
from ..model import SAINR
from ..protocol import PROGRESS_TAG
from ..request import ReduceOptions
from ..runtime.device import choose_device
from ..runtime.weights import open_weights
from ..train.adapt import (
    AdaptConfig,
    Adapted,
    adapt_to_image,
    check_budget,
    check_weights_output,
    save_adapted,
)
from .common import (
    CheckedInput,
    add_run_arguments,
    add_target_arguments,
    checked_input,
    options_of,
    progress_printer,
    target_of,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``sainr adapt``."""
    p.add_argument("input", type=Path, help="volume file (.nii.gz/.nrrd/.mha) or DICOM folder")
    add_target_arguments(p)
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="WEIGHTS.pt",
        help="write the adapted weights here (use with sainr reduce --weights)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=AdaptConfig.steps,
        help="optimizer steps (default 200); the time grows with them",
    )
    p.add_argument("--minutes", type=float, help="also stop after this many minutes")
    p.add_argument(
        "--weights",
        default=None,
        help="model to start from: shipped name or checkpoint (default: default)",
    )
    p.add_argument(
        "--reduce", type=Path, metavar="OUTPUT", help="also reduce the input with the adapted model"
    )
    p.add_argument("--seed", type=int, default=AdaptConfig.seed, help="patch and noise stream")
    add_run_arguments(p)
    p.set_defaults(func=run)


def adapt_with_progress(
    name: str,
    checked: CheckedInput,
    model: SAINR,
    options: ReduceOptions,
    config: AdaptConfig,
    progress_mode: str,
    tag: str,
) -> Adapted:
    """Adapt ``model`` to the checked input ``name`` with its plan, on the run's device
    (``options``), showing progress as ``progress_mode`` says (``<tag> done total`` lines
    with ``lines``)."""
    update, close = progress_printer(progress_mode, f"adapting {name}", "step", tag)
    try:
        return adapt_to_image(
            model.to(choose_device(options.device)),
            checked.image,
            checked.plan,
            options,
            config,
            progress=update,
            log=lambda msg: print(msg, file=sys.stderr),
        )
    finally:
        close()


def run(args: argparse.Namespace) -> int:
    """Check everything, adapt, save the weights, optionally reduce."""
    check_budget(args.steps, args.minutes)
    check_weights_output(args.out, args.weights)
    if args.reduce is not None:
        destination(args.reduce, (args.input,))
    target, options = target_of(args), options_of(args)
    choose_device(options.device)  # an unavailable device fails before any work
    weights = open_weights(args.weights)
    checked = checked_input(args.input, None, target, options, weights.trained_thickness)
    model = weights.build()
    config = AdaptConfig(steps=args.steps, minutes=args.minutes, seed=args.seed)
    name = args.input.name
    adapted = adapt_with_progress(
        name, checked, model, options, config, args.progress, PROGRESS_TAG
    )
    save_adapted(adapted, args.out, args.weights, name)
    print(f"{name}: adapted {adapted.steps_done} steps -> {args.out}", file=sys.stderr)
    if args.reduce is not None:
        update, close = progress_printer(args.progress, name)
        try:
            result = reduce_spacing(
                checked.image,
                options=options,
                plan=checked.plan,
                model=adapted.model,
                progress=update,
            )
        finally:
            close()
        write_volume(result.image, args.reduce)
        print(
            f"{name}: {result.info['slices_out']} slices at "
            f"{result.info['spacing_out']:.4g} mm -> {args.reduce}",
            file=sys.stderr,
        )
    return 0
