"""Choose the noise-to-signal ratio of the B-spline + Wiener baseline on the VALIDATION volumes
only (the held-out qDESS rows of the training subject, knee FAIR, brain MNI152; never a test
volume): every candidate on every Gaussian and box case at x2/x3/x4, the heldout protocol's
128 x 128 centre crops, all slices; the candidate with the best mean PSNR wins. Prints the
configuration and a markdown table (written to docs/evaluation/wiener_nsr.md by default).

Usage: python scripts/choose_wiener_nsr.py [DATA] [OUT.md]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from prepare_heldout import main as prepare_heldout  # noqa: E402

from sainr.acquisition import Acquisition  # noqa: E402
from sainr.evaluation.baselines import bspline_interpolate, slice_profile_psf, wiener_deconvolve  # noqa: E402
from sainr.evaluation.cases import load_case, simulate  # noqa: E402
from sainr.evaluation.metrics import psnr  # noqa: E402

CANDIDATES = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)
FACTORS = (2.0, 3.0, 4.0)
PROFILES = ("gaussian", "box")
CROP = 128


def main(data: str = "../shared/data", out: str = "docs/evaluation/wiener_nsr.md") -> None:
    config = [
        "- validation volumes: knee qDESS (training subject, held-out rows 300-415), knee "
        "FAIR T1 1 mm, brain MNI152 2009a (a 152-subject average); slice axis as "
        "scripts/prepare_heldout.py + sainr evaluate choose it",
        f"- {CROP}x{CROP} in-plane centre crops, all slices; profiles {', '.join(PROFILES)}, "
        "thickness = spacing; factors " + ", ".join(f"x{f:g}" for f in FACTORS),
        "- per case: cubic B-spline onto the thin grid, then the Wiener filter with the true "
        "profile for each candidate K; PSNR as sainr evaluate (MAX = truth max)",
        "- candidates K: " + ", ".join(f"{k:g}" for k in CANDIDATES) + "; choice: best mean PSNR",
    ]
    print("\n".join(config))
    rows = []
    with tempfile.TemporaryDirectory() as held:
        prepare_heldout(data, held)
        for path in sorted(Path(held).glob("*.nii.gz")):
            case = load_case(path, None, CROP)
            for profile in PROFILES:
                for factor in FACTORS:
                    acq = Acquisition(factor, 1.0, profile)
                    lr, grid, truth = simulate(case.hr, acq)
                    thin = bspline_interpolate(lr, grid)
                    psf = slice_profile_psf(profile, acq.width)
                    scores = [psnr(thin, truth)]
                    scores += [psnr(wiener_deconvolve(thin, psf, k), truth) for k in CANDIDATES]
                    rows.append((case.name, profile, factor, scores))
                    print(case.name, profile, f"x{factor:g}", " ".join(f"{v:.2f}" for v in scores))
    means = np.mean([r[3] for r in rows], axis=0)
    best = CANDIDATES[int(np.argmax(means[1:]))]
    header = ["volume", "profile", "factor", "B-spline", *(f"K={k:g}" for k in CANDIDATES)]
    table = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for name, profile, factor, scores in rows:
        cells = [name, profile, f"×{factor:g}", *(f"{v:.2f}" for v in scores)]
        table.append("| " + " | ".join(cells) + " |")
    table.append("| **mean** | | | " + " | ".join(f"**{v:.2f}**" for v in means) + " |")
    text = (
        "# Noise-to-signal ratio of the B-spline + Wiener baseline\n\n"
        "Chosen on the validation volumes only (`scripts/choose_wiener_nsr.py`); the test "
        "volumes were not looked at.\n\n## Configuration\n\n" + "\n".join(config) + "\n\n"
        "## PSNR (dB)\n\n" + "\n".join(table) + f"\n\n**Chosen: K = {best:g}** "
        "(`sainr.evaluation.baselines.WIENER_NSR`).\n"
    )
    Path(out).write_text(text, encoding="utf-8")
    print(f"chosen K = {best:g}; wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
