"""Print the slice-thickness estimator's configuration and its error table (Markdown).

    python scripts/thickness_table.py [--data ../shared/data] [--only validation|training|in-plane|test]

Four parts, as in docs/thickness_estimation.md:

- validation (choices made on these): the bundled sample (truth 0.5), the Testing/Data
  crops, knee_fair_T_1mm, brain_mni152 and the knee qDESS rows 300-415, thick slices simulated
  along the native slice axis;
- training (choices made on these too): the knee qDESS rows 0-279 and brain_chris_t1, simulated
  the same way, and the real acquisitions knee_cubequant (3 mm every 1.5 mm) and brain_pd_fse
  (5 mm every 7 mm) with the thickness from their DICOM headers;
- in-plane (training volumes, choices may look at them): real thick-slice scans of the
  training set (knee_cubequant, the brains chris_pd, t2w and pd_fse) with each in-plane axis in
  turn as the simulated slice axis, the construction of the knee and prostate test rows: the
  other in-plane axis is the estimator's only sharp reference, and its point spread (frequency
  or phase encoding, zero filling) need not match that of the simulated axis;
- test (reported only, never used for a choice): brain_pycortexS1 (native axis), the knee MESE
  TE 25 and the prostate PX0001 volumes with an in-plane axis (their sharp direction) as the
  simulated slice axis, and the real MESE knees and prostate stacks (DICOM header thickness).

Simulations use the project's acquisition model (:mod:`sainr.acquisition`) at x2/x3/x4 with
pure decimation (truth 1 / factor) and Gaussian and box profiles of 0.5/1.0/1.5/2.0 x the new
spacing. The error is estimated / true - 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "SAINRSlicer"))

from sainr import thickness as T  # noqa: E402
from sainr.acquisition import Acquisition, acquire, lr_count  # noqa: E402

FACTORS = (2, 3, 4)
SIMULATED = (("none", 1.0),) + tuple(
    (p, t) for p in ("gaussian", "box") for t in (0.5, 1.0, 1.5, 2.0)
)
VALIDATION = (
    ("knee_fair_T_1mm", "knee_fair_T_1mm.nii.gz", None, 2),
    ("brain_mni152", "brain_mni152_2009a_sym_t1_1mm.nii.gz", None, 2),
    ("knee_qdess rows 300-415", "knee_qdess_echo1_sag_0p31x0p31x1p5.nii.gz", "rows", 2),
    ("Testing knee_fair crop", ROOT / "Testing/Data/knee_fair_crop_1mm.nii.gz", None, 2),
    ("Testing knee_qdess crop", ROOT / "Testing/Data/knee_qdess_crop_1p5mm.nii.gz", None, 2),
)
TRAINING = (
    ("knee_qdess rows 0-279", "knee_qdess_echo1_sag_0p31x0p31x1p5.nii.gz", "rows 0-279", 2),
    ("brain_chris_t1", "brain_chris_t1_0p88iso.nii.gz", None, 2),
)
IN_PLANE = tuple(
    (f"{name} ({'ij'[axis]}, in-plane)", file, None, axis)
    for name, file in (
        ("knee_cubequant", "knee_cubequant_t1rho_tsl1_sag_0p31x0p31x1p5_thk3.nii.gz"),
        ("brain_chris_pd", "brain_chris_pd_0p86x0p86x2p4.nii.gz"),
        ("brain_t2w", "brain_t2w_1x1x2.nii.gz"),
        ("brain_pd_fse", "brain_pd_fse_tra_0p86x0p86x7p0.nii.gz"),
    )
    for axis in (0, 1)
)
TEST = (
    ("brain_pycortexS1 (k)", "brain_pycortexS1_t1_1mm.nii.gz", None, 2),
    ("knee_mese_te25 (i, in-plane)", "knee_mese_te25_sag_0p62x0p62x4p0.nii.gz", None, 0),
    ("prostate_px0001 (i, in-plane)", "prostate_px0001_t2tse_tra_0p5x0p5x3p0.nii.gz", None, 0),
)
#: (name, file, thickness in mm from the DICOM header)
REAL_TRAINING = (
    (
        "knee_cubequant (3 mm every 1.5 mm)",
        "knee_cubequant_t1rho_tsl1_sag_0p31x0p31x1p5_thk3.nii.gz",
        3.0,
    ),
    ("brain_pd_fse (5 mm + 2 mm gap)", "brain_pd_fse_tra_0p86x0p86x7p0.nii.gz", 5.0),
)
REAL_TEST = (
    ("knee_mese_te6 (3 mm every 4 mm)", "knee_mese_te6_sag_0p62x0p62x4p0.nii.gz", 3.0),
    ("knee_mese_te25 (3 mm every 4 mm)", "knee_mese_te25_sag_0p62x0p62x4p0.nii.gz", 3.0),
    ("prostate_px0000 tra (3 mm)", "prostate_px0000_t2tse_tra_0p5x0p5x3p0.nii.gz", 3.0),
    ("prostate_px0000 cor (3 mm)", "prostate_px0000_t2tse_cor_0p6x0p6x3p0.nii.gz", 3.0),
    ("prostate_px0000 sag (3 mm every 3.6)", "prostate_px0000_t2tse_sag_0p56x0p56x3p6.nii.gz", 3.0),
    ("prostate_px0001 tra (3 mm)", "prostate_px0001_t2tse_tra_0p5x0p5x3p0.nii.gz", 3.0),
)
SAMPLE = ROOT / "Resources/Sample/knee_qdess_sag_3mm.nii.gz"


def load(data: Path, file: str | Path, crop: str | None) -> sitk.Image:
    image = sitk.ReadImage(str(file if isinstance(file, Path) else data / file))
    if crop == "rows":
        return image[:, 300:416, :]
    return image[:, 0:280, :] if crop == "rows 0-279" else image


def simulate(image: sitk.Image, axis: int, profile: str, factor: int, t: float) -> sitk.Image:
    """``image`` with slices ``factor`` x further apart along index axis ``axis``."""
    hr = np.moveaxis(sitk.GetArrayFromImage(image).astype(np.float32), 2 - axis, 0)
    lr = acquire(hr, Acquisition(factor, t, profile), lr_count(hr.shape[0], factor))
    out = sitk.GetImageFromArray(np.ascontiguousarray(np.moveaxis(lr, 0, 2 - axis)))
    spacing = list(image.GetSpacing())
    spacing[axis] *= factor
    out.SetSpacing(spacing)
    return out


def estimate(image: sitk.Image, axis: int) -> tuple[float, float]:
    """(estimate, seconds)."""
    start = time.perf_counter()
    value = T.estimate_relative_thickness(
        sitk.GetArrayViewFromImage(image), image.GetSpacing(), axis
    )
    return value, time.perf_counter() - start


def simulated_rows(data: Path, volumes) -> Iterator[tuple[str, str, float, float, float]]:
    for name, file, crop, axis in volumes:
        image = load(data, file, crop)
        for factor in FACTORS:
            for profile, t in SIMULATED:
                acq = Acquisition(factor, t, profile)
                value, secs = estimate(simulate(image, axis, profile, factor, t), axis)
                label = "decimated" if profile == "none" else f"{profile} {t:g}"
                yield name, f"x{factor} {label}", acq.relative_thickness, value, secs


def print_table(rows) -> list[tuple[str, float, float]]:
    """Print ``rows`` as a Markdown table; (acquisition, true, estimated) per row."""
    print("| volume | acquisition | true | estimated | error | s |")
    print("|---|---|---|---|---|---|")
    out = []
    for name, what, true, value, secs in rows:
        out.append((what, true, value))
        print(
            f"| {name} | {what} | {true:.2f} | {value:.2f} | {100 * (value / true - 1):+.0f} % "
            f"| {secs:.2f} |",
            flush=True,
        )
    return out


def summary(label: str, rows: list[tuple[str, float, float]]) -> None:
    """Median and mean |error|, rows within 30 %, and how gapped and contiguous input
    separate: decimated (and real gapped) rows read below 0.7x, contiguous ones (1.0x) at or
    above it."""
    e = np.abs(np.asarray([value / true - 1 for _, true, value in rows]))
    gapped = [v for what, t, v in rows if "decimated" in what or "every" in what and t < 0.9]
    contiguous = [v for _, t, v in rows if abs(t - 1) < 1e-6]
    print(
        f"\n{label}: {len(e)} rows, median |error| {100 * np.median(e):.0f} %, "
        f"mean {100 * e.mean():.0f} %, within 30 %: {int((e <= 0.3).sum())}/{len(e)}, "
        f"decimated read < 0.7x: {sum(v < 0.7 for v in gapped)}/{len(gapped)}, "
        f"contiguous (1.0x) read >= 0.7x: {sum(v >= 0.7 for v in contiguous)}/{len(contiguous)}\n"
    )


def real_rows(data: Path, volumes) -> list[tuple[str, str, float, float, float]]:
    rows = []
    for name, file, mm in volumes:
        image = sitk.ReadImage(str(data / file))
        value, secs = estimate(image, 2)
        rows.append((name, "as acquired", mm / image.GetSpacing()[2], value, secs))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = [ROOT.parent / "shared" / "data", ROOT.parents[1] / "shared" / "data"]  # a worktree
    p.add_argument("--data", type=Path, default=next((d for d in shared if d.is_dir()), shared[0]))
    p.add_argument("--only", choices=("validation", "training", "in-plane", "test"))
    args = p.parse_args()
    print(
        f"configuration: candidates {T.CANDIDATES[0]:.2f}-{T.CANDIDATES[-1]:.2f} "
        f"({len(T.CANDIDATES)}, geometric), reference profile {T.REFERENCE_PROFILE}, "
        f"edge quantiles {T.EDGE_QUANTILES} x rankings {T.RANKINGS} (geometric mean of the "
        f"matches), at most {T.MAX_LINES} in-plane lines per axis and {T.MAX_REAL_LINES} "
        f"through-plane lines, phases {len(T._PHASES)}, foreground {T.FOREGROUND_FRACTION} x "
        f"p99, noise from in-plane second differences (MAD) on {T._NOISE_SLICES} slices, seed "
        f"{T._SEED}; factors {FACTORS}, profiles {SIMULATED}\n"
    )
    if args.only in (None, "validation"):
        print("## validation (choices made on these)\n")
        sample = sitk.ReadImage(str(SAMPLE))
        value, secs = estimate(sample, 2)
        rows = [("bundled sample", "1.5 mm every 3 mm", 0.5, value, secs)]
        summary("validation", print_table([*rows, *simulated_rows(args.data, VALIDATION)]))
    if args.only in (None, "training"):
        print("## training (choices made on these too)\n")
        summary("training", print_table(simulated_rows(args.data, TRAINING)))
        print("### training: real acquisitions (header thickness)\n")
        summary("training real", print_table(real_rows(args.data, REAL_TRAINING)))
    if args.only in (None, "in-plane"):
        print("## training: in-plane axes of real thick-slice scans (choices may look at these)\n")
        summary("in-plane", print_table(simulated_rows(args.data, IN_PLANE)))
    if args.only in (None, "test"):
        print("## test (reported only)\n")
        summary("test", print_table(simulated_rows(args.data, TEST)))
        print("### test: real acquisitions (header thickness)\n")
        summary("test real", print_table(real_rows(args.data, REAL_TEST)))


if __name__ == "__main__":
    main()
