"""What several ``sainr`` commands share: their target and run options, progress display, and
reading an input with every check that needs no model.

Only the command modules of :mod:`sainr.cli` use this; the library below never sees argparse.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from ..io.read import dicom_slice_thickness, read_volume
from ..planning import ReductionPlan, plan_reduction
from ..protocol import PROGRESS_TAG
from ..request import ReduceOptions, Target
from ..runtime.precision import PRECISIONS
from ..thickness import DICOM_THICKNESS_KEY, NRRD_THICKNESS_KEY, nrrd_thicknesses


def progress_printer(
    mode: str, label: str, unit: str = "vox", tag: str = PROGRESS_TAG
) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """(callback, close) reporting progress as a tqdm bar counting ``unit`` or as
    ``<tag> done total`` lines (``PROGRESS`` for the reconstruction; adaptation inside a
    reduce run uses its own tag so that drivers tell the phases apart)."""
    if mode == "bar":
        try:
            from tqdm import tqdm
        except ImportError:  # Slicer's Python has no tqdm (PythonSlicer -m sainr ...)
            mode = "lines"
    if mode == "lines":

        def emit(done: int, total: int) -> None:
            print(f"{tag} {done} {total}", flush=True)

        return emit, lambda: None
    if mode == "none":
        return (lambda done, total: None), lambda: None
    bar = tqdm(total=1, desc=label, unit=unit, unit_scale=True, leave=False)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)  # redraws at most every mininterval

    return update, bar.close


def add_target_arguments(p: argparse.ArgumentParser) -> None:
    """``--spacing MM | --factor F | --isotropic`` (one required) and ``--axis``."""
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--spacing", type=float, metavar="MM", help="target slice spacing in mm")
    target.add_argument("--factor", type=float, help="reduce the slice spacing by this factor")
    target.add_argument(
        "--isotropic", action="store_true", help="target = the finest in-plane spacing"
    )
    p.add_argument(
        "--axis", type=int, choices=(0, 1, 2), help="slice axis (i, j, k); detected if omitted"
    )


def add_precision_argument(p: argparse.ArgumentParser) -> None:
    """``--precision``, the same choices and meaning for every command that runs a model."""
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto = fp16 autocast on CUDA; on the CPU bf16 with AMX, else int8 (oneDNN kernels, "
        "calibrated per volume), else fp32",
    )


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """How the model runs: device, precision, NaN handling, slice thickness, progress."""
    p.add_argument(
        "--device", default="auto", help="auto (CUDA if usable, else CPU), cpu, cuda, mps"
    )
    add_precision_argument(p)
    p.add_argument(
        "--nan-to-zero", action="store_true", help="replace NaN/Inf voxels by 0 instead of refusing"
    )
    p.add_argument(
        "--slice-thickness",
        type=thickness_argument,
        default=None,
        metavar="MM|auto",
        help="acquired slice thickness in mm; auto (default): the header's (DICOM SliceThickness, "
        "NRRD thicknesses), else estimated from the image. Values outside what the model was "
        "trained for are refused",
    )
    p.add_argument("--progress", choices=("bar", "lines", "none"), default="bar")


def thickness_argument(text: str) -> float | None:
    """``--slice-thickness``: ``auto`` (None: header, else estimate) or a number of mm."""
    if text.strip().lower() == "auto":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"give a thickness in mm or 'auto', not {text!r}"
        ) from None


def target_of(args: argparse.Namespace) -> Target:
    """The parsed target options as a :class:`~sainr.request.Target` (checked there)."""
    return Target(
        spacing=args.spacing,
        factor=args.factor,
        isotropic=args.isotropic,
        axis=args.axis,
        force=getattr(args, "force", False),  # sainr adapt has no --force
    )


def options_of(args: argparse.Namespace) -> ReduceOptions:
    """The parsed run options as :class:`~sainr.request.ReduceOptions` (checked there)."""
    return ReduceOptions(
        slice_thickness_mm=args.slice_thickness,
        device=args.device,
        precision=args.precision,
        memory_mb=getattr(args, "memory_mb", ReduceOptions.memory_mb),
        nan_policy="zero" if args.nan_to_zero else "refuse",
    )


@dataclass(frozen=True)
class CheckedInput:
    """An input read and planned: the image and its run's one plan
    (:func:`sainr.planning.plan_reduction`), which adaptation and the reduction use as made."""

    image: sitk.Image
    plan: ReductionPlan


def read_input(src: Path, series: str | None) -> sitk.Image:
    """Read ``src`` (one ``series`` of a DICOM folder), its reader's own messages silenced."""
    with native_stderr_silenced():
        return read_volume(src, series)


def checked_input(
    src: Path,
    series: str | None,
    target: Target,
    options: ReduceOptions,
    trained: tuple[float, float] | None = None,
) -> CheckedInput:
    """Read ``src`` (one ``series`` of a DICOM folder) and plan its run once, with every
    check that needs no model: grid, target, a given slice thickness (against the model's
    ``trained`` range), voxel values. Without a given thickness, a DICOM series'
    SliceThickness and an NRRD ``thicknesses`` field are put in the image's metadata first
    (:data:`sainr.thickness.DICOM_THICKNESS_KEY`), where the planning finds them."""
    image = read_input(src, series)
    if options.slice_thickness_mm is None:
        dicom_mm = dicom_slice_thickness(src, series)
        if dicom_mm is not None:
            image.SetMetaData(DICOM_THICKNESS_KEY, f"{dicom_mm:.17g}")
        if (nrrd := nrrd_thicknesses(src)) is not None:
            image.SetMetaData(NRRD_THICKNESS_KEY, nrrd)
    return CheckedInput(image, plan_reduction(image, target, options, trained))


@contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Discard what C++ code (MetaIO, VNL) prints on stderr meanwhile: the CLI's stderr holds
    only its own lines; the failure itself still arrives as an exception."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
