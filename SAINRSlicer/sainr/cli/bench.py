"""``sainr bench``: speed and memory of SA-INR against SimpleITK interpolation
(:mod:`sainr.evaluation.bench`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..evaluation.bench import (
    SAMPLE,
    bench_volume,
    configuration,
    describe_cpu,
    format_table,
    resize_in_plane,
    sample_path,
)
from ..io.files import write_atomically
from ..io.read import read_volume
from ..planning import plan_grid
from ..runtime.device import choose_device
from ..runtime.weights import load_model
from .common import add_precision_argument


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``sainr bench``."""
    p.add_argument(
        "inputs",
        nargs="*",
        type=Path,
        help="volumes (default: the bundled sample, as is and resized in-plane to --in-plane)",
    )
    p.add_argument("--spacing", type=float, default=1.0, help="target slice spacing (mm)")
    p.add_argument("--in-plane", type=int, default=384, help="in-plane size of the resized sample")
    p.add_argument("--weights", default=None, help="model name or checkpoint (default: default)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--memory-mb", type=float, default=2048)
    add_precision_argument(p)
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="best-of for every timing (SimpleITK and SA-INR, after one SA-INR warm-up run)",
    )
    p.add_argument(
        "--no-ungated",
        dest="ungated",
        action="store_false",
        help="skip timing the model with every query attended (minutes on a CPU)",
    )
    p.add_argument("--json", type=Path, help="write the results here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Time SA-INR against SimpleITK on the inputs (default: the bundled sample, as is and
    resized in-plane) and print (and with ``--json`` write) the table."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = choose_device(args.device)
    model = load_model(args.weights)
    if args.inputs:
        volumes = [(p.name, read_volume(p)) for p in args.inputs]
    else:
        sample = read_volume(sample_path())
        axis = plan_grid(sample, args.spacing).axis
        volumes = [
            (SAMPLE, sample),
            (f"{SAMPLE} resized to {args.in_plane}²", resize_in_plane(sample, axis, args.in_plane)),
        ]
    config = configuration(model, device, args.weights or "default", args.precision)
    print("configuration: " + json.dumps(config))
    if device.type == "cpu":
        print(describe_cpu(config))
    rows = [
        bench_volume(
            n,
            img,
            args.spacing,
            model,
            device,
            args.memory_mb,
            args.precision,
            args.repeats,
            args.ungated,
        )
        for n, img in volumes
    ]
    print(format_table(rows))
    if args.json is not None:
        text = json.dumps({"configuration": config, "results": rows}, indent=2)
        write_atomically(
            args.json, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), ".json"
        )
    return 0
