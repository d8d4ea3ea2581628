"""ECLARE (Remedios et al., PyPI ``eclare``) as a method: a benchmark-only dependency that the
extension never imports, run in a subprocess of this interpreter and resampled from its "same
field of view" output onto the thin-slice grid."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ..errors import SainrError
from ..geometry import EPS, Geometry, SliceGrid
from .baselines import resample_to
from .methods import Method, lr_spacing
from .settings import EvaluationSettings

#: ECLARE's command line (``run-eclare``) through this interpreter, so that the ``eclare``
#: found by :func:`require_eclare` is the one that runs.
_ECLARE_MAIN = "import sys; from eclare.main import main; main(sys.argv[1:])"


@dataclass(frozen=True)
class EclareOptions:
    """ECLARE's budget and device (its --n-patches, --batch-size and --gpu-id)."""

    patches: int
    batch_size: int
    gpu_id: int = -1

    @classmethod
    def of(cls, settings: EvaluationSettings, device: torch.device) -> EclareOptions:
        """The ECLARE budget of ``settings``, on ``device``'s GPU (or the CPU)."""
        if settings.eclare_patches < 1 or settings.eclare_batch_size < 1:
            raise SainrError("--eclare-patches and --eclare-batch-size must be >= 1")
        gpu = (device.index or 0) if device.type == "cuda" else -1
        return cls(settings.eclare_patches, settings.eclare_batch_size, gpu)

    @property
    def steps(self) -> int:
        return math.ceil(self.patches / self.batch_size)


def require_eclare() -> str:
    """ECLARE's version; a :class:`SainrError` when this environment does not have it."""
    if importlib.util.find_spec("eclare") is None:
        raise SainrError(
            "--eclare needs the ECLARE package, which is not installed in this environment "
            f"({sys.executable}). It is a benchmark-only dependency of the evaluation, never of "
            "the extension: install it into a separate environment (scripts/compare_eclare.sh "
            "sets up .venv-bench with 'pip install torch==2.13.0 eclare') and run "
            "'sainr evaluate --eclare' from there"
        )
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("eclare")
    except PackageNotFoundError:
        return "unknown version"


def eclare_method(options: EclareOptions) -> Method:
    """ECLARE as a method; refuses (before any case runs) when it is not installed."""
    require_eclare()
    return Method(
        "ECLARE",
        lambda lr, grid, spacing, told: (
            run_eclare(lr, grid, spacing, told.thickness, options),
            None,
        ),
    )


def eclare_thickness(
    spacing: tuple[float, float, float], grid: SliceGrid, thickness: float
) -> float:
    """The simulated LR's slice thickness in ECLARE's units (finest in-plane voxels):
    ``thickness`` x the LR spacing r c_S (profile known, so ECLARE's ESPRESO estimate is
    skipped)."""
    return thickness * lr_spacing(grid, spacing)[0] / min(spacing[1], spacing[2])


def write_lr_nifti(lr: np.ndarray, spacing: tuple[float, float, float], path: Path) -> Path:
    """``lr`` (S, H, W) as a NIfTI with voxel spacing ``spacing`` (mm along S, H, W): index axis
    k = S, as ECLARE expects (it takes the coarsest axis as the slice axis)."""
    if spacing[0] <= max(spacing[1], spacing[2]) * (1 + EPS):
        raise SainrError(
            f"ECLARE needs the slice axis to be the coarsest: LR spacing {spacing[0]:g} mm vs "
            f"in-plane {spacing[1]:g}×{spacing[2]:g} mm (use a larger factor)"
        )
    image = sitk.GetImageFromArray(np.ascontiguousarray(lr, dtype=np.float32))
    image.SetSpacing((spacing[2], spacing[1], spacing[0]))
    sitk.WriteImage(image, str(path))
    return path


def run_eclare(
    lr: np.ndarray,
    grid: SliceGrid,
    spacing: tuple[float, float, float],
    thickness: float,
    options: EclareOptions,
) -> np.ndarray:
    """Train and run ECLARE on one simulated LR volume (a subprocess with this interpreter and
    torch's thread count) and return its output on the thin-slice grid."""
    spacing_lr = lr_spacing(grid, spacing)
    with tempfile.TemporaryDirectory(prefix="sainr-eclare-") as tmp:
        src = write_lr_nifti(lr, spacing_lr, Path(tmp) / "lr.nii.gz")
        cmd = [
            sys.executable,
            "-c",
            _ECLARE_MAIN,
            "--in-fpath",
            str(src),
            "--out-dir",
            tmp,
            "--n-patches",
            str(options.patches),
            "--batch-size",
            str(options.batch_size),
            "--relative-slice-thickness",
            f"{eclare_thickness(spacing, grid, thickness):.6g}",
            "--gpu-id",
            str(options.gpu_id),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        out_path = Path(tmp) / "lr_eclare.nii.gz"
        if proc.returncode != 0 or not out_path.exists():
            tail = (proc.stdout + proc.stderr)[-3000:]
            raise SainrError(f"ECLARE failed (exit {proc.returncode}):\n{tail}")
        out = sitk.ReadImage(str(out_path))
        volume = sitk.GetArrayFromImage(out).astype(np.float32)
    if volume.shape[1:] != lr.shape[1:]:
        raise SainrError(f"ECLARE returned in-plane {volume.shape[1:]}, expected {lr.shape[1:]}")
    return same_fov_onto_grid(volume, spacing_lr[0] / out.GetSpacing()[2], grid)


def same_fov_positions(n_in: int, n_out: int, ratio: float) -> np.ndarray:
    """Where ``n_out`` samples that resample ``n_in`` samples ``ratio`` times more densely
    with the same field of view lie, in input-sample units.

    Radifox's "same FOV" resize, which ECLARE uses for its upsampling (and its training
    pairs): input sample i is a cell [i − ½, i + ½]; the n_out output cells of width 1/ratio
    are centred on the input's field of view, sample k at the centre of cell k:
    −½ + (n_in − n_out/ratio)/2 + (k + ½)/ratio. For n_out = n_in · ratio the fields of view
    coincide; the first output sample lies (ratio − 1)/2 output samples before input sample 0.
    """
    return -0.5 + (n_in - n_out / ratio) / 2 + (np.arange(n_out) + 0.5) / ratio


def same_fov_onto_grid(volume: np.ndarray, ratio: float, grid: SliceGrid) -> np.ndarray:
    """``volume`` (N, H, W), the ``grid.n_lr`` acquired slices resampled ``ratio`` times more
    densely with the same field of view (:func:`same_fov_positions`), resampled by cubic
    B-spline (as the B-spline baseline) onto the thin slices of ``grid`` (thin slice j at
    acquired-slice position j / r). The thin positions are evenly spaced, so this is one
    SimpleITK resampling with output spacing ratio / r starting at output index −p_0 · ratio
    (p_0: the first output sample's position); in-plane the grid is unchanged."""
    n, h, w = volume.shape
    p0 = float(same_fov_positions(grid.n_lr, n, ratio)[0])
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume, dtype=np.float32))
    geom = Geometry(
        (w, h, grid.n_hr),
        (1.0, 1.0, ratio / grid.factor),
        (0.0, 0.0, -p0 * ratio),
        (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    )
    return sitk.GetArrayFromImage(resample_to(image, geom, "bspline"))
