"""Time one checkout of the core with one fixed procedure, for before/after tables.

The same procedure for any version of the code on PYTHONPATH (it uses only sainr.evaluation.bench's timing
functions that older versions have too, so not ``best_sainr``): SimpleITK linear and B-spline to
the thin-slice grid (best of 3), then SA-INR end to end (second of two runs; `sainr bench` now
takes the best of 3 after a warm-up), on the bundled sample and on the sample resized in-plane
to 384 x 384; one JSON line per volume on stdout.

    git worktree add --detach /tmp/before OLD_COMMIT
    PYTHONPATH=/tmp/before/SAINRSlicer python scripts/bench_compare.py before default fp32
    PYTHONPATH=SAINRSlicer python scripts/bench_compare.py after default fp32
"""

import json
import sys

import SimpleITK as sitk
import torch

import sainr
from sainr.evaluation.bench import resize_in_plane, sample_path, time_sainr, time_sitk
from sainr.io.read import read_volume
from sainr.planning import plan_grid
from sainr.runtime.weights import load_model


def main(label: str, weights: str, precision: str) -> None:
    model = load_model(weights)
    sample = read_volume(sample_path())
    axis = plan_grid(sample, 1.0).axis
    for name, image in (
        ("192x192x40", sample),
        ("384x384x40", resize_in_plane(sample, axis, 384)),
    ):
        grid = plan_grid(image, 1.0).output
        row = {"label": label, "sainr": sainr.__file__, "weights": weights}
        row |= {"precision": precision, "volume": name, "threads": torch.get_num_threads()}
        row["linear_s"] = time_sitk(image, grid, sitk.sitkLinear, 3)
        row["bspline_s"] = time_sitk(image, grid, sitk.sitkBSpline, 3)
        cpu = torch.device("cpu")
        time_sainr(image, 1.0, model, cpu, 2048, precision)  # warm-up
        row |= time_sainr(image, 1.0, model, cpu, 2048, precision)
        row["ratio"] = row["total_s"] / row["bspline_s"]
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
