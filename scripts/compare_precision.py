"""Held-out PSNR of one model at several inference precisions, same cases, same run.

Every held-out volume (prepared by scripts/prepare_heldout.py) is cropped in-plane, reduced
along its slice axis by x2/x3/x4 with pure decimation and with contiguous Gaussian thick
slices, and reconstructed at each precision; one JSON line per case with the PSNR (dB) and
seconds per precision. Used for the int8 − fp32 figures of docs/benchmark.md.

    python scripts/compare_precision.py HELD_DIR [--weights default] [--crop 160]
        [--precisions fp32 int8]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sainr.evaluation.cases import load_case, simulate, simulated_acquisitions
from sainr.evaluation.metrics import psnr
from sainr.runtime.inference import super_resolve
from sainr.runtime.weights import load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("held", type=Path)
    p.add_argument("--weights", default="default")
    p.add_argument("--crop", type=int, default=160)
    p.add_argument("--precisions", nargs="+", default=["fp32", "int8"])
    args = p.parse_args()
    model = load_model(args.weights)
    cpu = torch.device("cpu")
    print(json.dumps({"weights": args.weights, "crop": args.crop, "threads": torch.get_num_threads(), "torch": torch.__version__}))  # fmt: skip
    for path in sorted(args.held.glob("*.nii.gz")):
        case = load_case(path, None, args.crop)
        for acq in simulated_acquisitions(("none", "gaussian"), (2.0, 3.0, 4.0), 1.0):
            lr, grid, truth = simulate(case.hr, acq)
            row = {"volume": case.name, "profile": acq.profile, "factor": acq.factor}
            for precision in args.precisions:
                start = time.perf_counter()
                pred, _ = super_resolve(
                    model, lr, grid, cpu, precision=precision, thickness=acq.relative_thickness
                )
                row[precision] = round(psnr(pred, truth), 4)
                row[f"{precision}_s"] = round(time.perf_counter() - start, 2)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
