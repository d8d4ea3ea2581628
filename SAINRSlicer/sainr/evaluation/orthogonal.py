"""Three-orientation check on real acquisitions: no thin-slice truth is needed.

A session with orthogonal thick-slice stacks of the same anatomy (the prostate session PX0000:
axial, sagittal and coronal T2 TSE) lets one stack judge another. One stack (the *source*,
e.g. the sagittal one) is super-resolved along its slice axis; the result is then *imaged the
way another stack was acquired* (:func:`image_like`): resampled into that stack's grid (its
origin and real, oblique direction cosines) and averaged across each of its thick slices with a
slice profile of :mod:`sainr.acquisition`. Along the source's slice axis the acquired in-plane
image of the other stack is sharp, so a method that restores more of the source's through-plane
detail (without inventing or amplifying noise) matches it better. The comparison
(:func:`compare`) fits the intensities by linear least squares over a common foreground/overlap
region and reports the correlation and the PSNR after the fit: either one gain and offset
(``order`` 0), or (``order`` 2) a gain and an offset that vary quadratically with the position,
because each stack has its own coil shading (surface coils: the sensitivity falls with the
distance, differently for each slice orientation), which a single gain cannot absorb.

Every method is judged on the same region with the same imaging operator, so the operator's
own blur (interpolation, an assumed profile) is shared. Patient motion between the stacks is
not corrected: it lowers every method's score alike. :func:`orthogonal_stacks` makes the same
kind of session from a thin volume (truth known), to show that the check can see a gain.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..acquisition import Acquisition, acquire, lr_count, margin
from ..geometry import detect_slice_axis
from .baselines import WIENER_NSR, resample_slices, slice_profile_psf, wiener_deconvolve
from .metrics import foreground_mask, psnr

#: The imaging operator samples the source on a grid this fine (mm) along the target's slice
#: axis (at most; the step divides the target's slice spacing evenly).
FINE_MM = 0.5

#: A super-resolved source image from (source stack, target slice spacing in mm).
SuperResolve = Callable[[sitk.Image, float], sitk.Image]


def cropped_to_overlap(target: sitk.Image, source: sitk.Image) -> sitk.Image:
    """``target`` cut (a region of interest: geometry kept) to the bounding box of
    ``source``'s field of view in ``target``'s index space, so that imaging the source
    like the target does not work on voxels the source never saw."""
    size = np.asarray(source.GetSize())
    corners = [
        source.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner])
        for corner in np.array(np.meshgrid(*[(-0.5, n - 0.5) for n in size])).T.reshape(-1, 3)
    ]
    index = np.array([target.TransformPhysicalPointToContinuousIndex(p) for p in corners])
    lo = np.clip(np.floor(index.min(axis=0)).astype(int), 0, None)
    hi = np.minimum(np.ceil(index.max(axis=0)).astype(int) + 1, target.GetSize())
    if np.any(hi <= lo):
        raise ValueError("the source and target stacks do not overlap")
    return sitk.RegionOfInterest(target, [int(n) for n in hi - lo], [int(i) for i in lo])


def image_like(
    volume: sitk.Image,
    target: sitk.Image,
    thickness_mm: float,
    profile: str = "gaussian",
    fine_mm: float = FINE_MM,
    transform: sitk.Transform | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``volume`` imaged the way ``target`` was acquired: (values, coverage), both in
    ``target``'s array order (k, j, i).

    Each target voxel is the average of ``volume`` across a slice of ``thickness_mm`` along
    the target's slice normal (its index axis k, direction column 3) with the slice
    ``profile`` (``gaussian``: FWHM, ``box``: width; :func:`sainr.acquisition.weights`):
    ``volume`` is resampled (linear) onto a grid with the target's in-plane voxels and a fine
    step along k, then :func:`sainr.acquisition.acquire` forms the thick slices. Coverage is
    True where the whole profile lies inside ``volume``'s field of view. ``transform`` maps
    the target's physical points to ``volume``'s (e.g. :func:`register_rigid`: patient motion
    between the acquisitions); none = the scanner's common patient space."""
    size, spacing = target.GetSize(), target.GetSpacing()
    steps = max(1, math.ceil(spacing[2] / fine_mm - 1e-9))  # fine voxels per target slice
    acq = Acquisition(float(steps), thickness_mm / spacing[2], profile)
    pad = margin(acq)
    fine_size = [size[0], size[1], (size[2] - 1) * steps + 1 + 2 * pad]
    fine_spacing = [spacing[0], spacing[1], spacing[2] / steps]
    normal = np.asarray(target.GetDirection()).reshape(3, 3)[:, 2]
    origin = np.asarray(target.GetOrigin()) - pad * fine_spacing[2] * normal

    def onto_fine(image: sitk.Image, interpolator: int) -> np.ndarray:
        resampler = sitk.ResampleImageFilter()
        resampler.SetSize(fine_size)
        resampler.SetOutputSpacing(fine_spacing)
        resampler.SetOutputOrigin(origin.tolist())
        resampler.SetOutputDirection(target.GetDirection())
        resampler.SetInterpolator(interpolator)
        if transform is not None:
            resampler.SetTransform(transform)
        resampler.SetOutputPixelType(sitk.sitkFloat32)
        resampler.SetDefaultPixelValue(0.0)
        return sitk.GetArrayFromImage(resampler.Execute(sitk.Cast(image, sitk.sitkFloat32)))

    inside = sitk.Image(volume.GetSize(), sitk.sitkUInt8) + 1
    inside.CopyInformation(volume)
    values = acquire(onto_fine(volume, sitk.sitkLinear), acq, size[2], start=pad)
    covered = acquire(onto_fine(inside, sitk.sitkNearestNeighbor), acq, size[2], start=pad)
    return values, covered > 1 - 1e-6


#: Intensity fits: 0 = one gain and offset; 2 = gain and offset quadratic in the position.
FIT_ORDERS = (0, 2)


def register_rigid(target: sitk.Image, volume: sitk.Image, seed: int = 0) -> sitk.Euler3DTransform:
    """The rigid transform (target point -> ``volume`` point) that best aligns ``volume`` with
    the acquired ``target`` (correlation, linear interpolation, random samples with a fixed
    seed, from the identity): the patient's motion between the two acquisitions. Estimate it
    once, on one method's result, and apply it to every method, so that all are compared
    after the same alignment."""
    fixed = sitk.Cast(target, sitk.sitkFloat32)
    size = np.asarray(fixed.GetSize(), dtype=np.float64)
    initial = sitk.Euler3DTransform()
    initial.SetCenter(fixed.TransformContinuousIndexToPhysicalPoint(((size - 1) / 2).tolist()))
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsCorrelation()
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.1, seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-3, numberOfIterations=200, relaxationFactor=0.5
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetInitialTransform(initial, inPlace=False)
    found = reg.Execute(fixed, sitk.Cast(volume, sitk.sitkFloat32))
    out = sitk.Euler3DTransform()
    out.SetCenter(initial.GetCenter())
    out.SetParameters(sitk.CompositeTransform(found).GetNthTransform(0).GetParameters())
    return out


@dataclass(frozen=True)
class Score:
    """Agreement of an imaged result with an acquired stack over a region: the correlation
    of the fitted values with the acquired ones (Pearson's r of imaged and acquired for a
    single gain), the PSNR after the fit (MAX = the acquired region's maximum), the mean
    gain and the number of voxels."""

    correlation: float
    psnr: float
    gain: float
    voxels: int


def _position_terms(region: np.ndarray, order: int) -> list[np.ndarray]:
    """1, then the standardised voxel coordinates of ``region`` and their products up to
    ``order`` (0 or 2; order 1 stops at the coordinates)."""
    coords = [c.astype(np.float64) for c in np.nonzero(region)]
    coords = [(c - c.mean()) / (c.std() or 1.0) for c in coords]
    terms = [np.ones_like(coords[0])]
    if order >= 1:
        terms += coords
    if order >= 2:
        terms += [a * b for n, a in enumerate(coords) for b in coords[n:]]
    return terms


def compare(imaged: np.ndarray, acquired: np.ndarray, region: np.ndarray, order: int = 0) -> Score:
    """Fit ``acquired ≈ g(p) × imaged + o(p)`` over ``region`` by linear least squares, with
    ``g`` and ``o`` polynomials of degree ``order`` in the voxel position ``p`` (constants
    for 0), and score the fitted values against the acquired ones."""
    if order not in (0, 1, 2):
        raise ValueError(f"the fit order must be 0, 1 or 2, got {order}")
    x = imaged[region].astype(np.float64)
    y = acquired[region].astype(np.float64)
    terms = _position_terms(region, order)
    design = np.stack([x * t for t in terms] + terms, axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    fitted = design @ coef
    gain = design[:, : len(terms)] @ coef[: len(terms)] / np.where(x == 0, 1.0, x)
    return Score(
        correlation=float(np.corrcoef(fitted, y)[0, 1]),
        psnr=psnr(fitted, y),
        gain=float(np.mean(gain)) if order else float(coef[0]),
        voxels=int(region.sum()),
    )


def common_region(acquired: np.ndarray, coverages: list[np.ndarray]) -> np.ndarray:
    """Voxels inside every method's coverage and in the acquired stack's foreground
    (:func:`sainr.evaluation.metrics.foreground_mask`): one region for all methods."""
    region = foreground_mask(acquired)
    for cov in coverages:
        region &= cov
    return region


def interpolator(method: str) -> SuperResolve:
    """Linear or cubic B-spline interpolation of the source along its slice axis."""

    def run(source: sitk.Image, spacing_mm: float) -> sitk.Image:
        axis = detect_slice_axis(source.GetSpacing(), source.GetDirection())
        return resample_slices(source, axis, spacing_mm, method)

    return run


def bspline_wiener_image(
    thickness_mm: float, profile: str, nsr: float = WIENER_NSR
) -> SuperResolve:
    """B-spline along the slice axis, then Wiener deconvolution of a ``profile`` slice of
    ``thickness_mm`` (the profile a real acquisition has is assumed, not known)."""

    def run(source: sitk.Image, spacing_mm: float) -> sitk.Image:
        axis = detect_slice_axis(source.GetSpacing(), source.GetDirection())
        thin = resample_slices(source, axis, spacing_mm, "bspline")
        psf = slice_profile_psf(profile, thickness_mm / spacing_mm)
        array = wiener_deconvolve(sitk.GetArrayViewFromImage(thin), psf, nsr, axis=2 - axis)
        out = sitk.GetImageFromArray(array)
        out.CopyInformation(thin)
        return out

    return run


@dataclass(frozen=True)
class TargetResult:
    """One target stack: the scores per method, imaging profile and fit order."""

    name: str
    scores: dict[tuple[str, str, int], Score]  # (method, profile, fit order) -> score


def three_orientation_check(
    source: sitk.Image,
    targets: dict[str, sitk.Image],
    methods: dict[str, SuperResolve],
    spacing_mm: float,
    thickness_mm: dict[str, float],
    profiles: tuple[str, ...] = ("gaussian", "box"),
    log: Callable[[str], None] = lambda _msg: None,
    orders: tuple[int, ...] = FIT_ORDERS,
    register: str | None = None,
) -> tuple[list[TargetResult], dict[str, sitk.Image]]:
    """Super-resolve ``source`` to ``spacing_mm`` with every method, image each result like
    each target (its slice ``thickness_mm[name]``, each profile) and score it against the
    acquired target on one region per target and profile, with each intensity fit order.
    With ``register`` (a method's name), each target is scored a second time (as
    ``"<target>, registered"``) after a rigid alignment estimated on that method's result
    (:func:`register_rigid`) and applied to every method.
    Returns the per-target scores and the super-resolved images (one grid for all)."""
    results = {name: run(source, spacing_mm) for name, run in methods.items()}
    for name in methods:
        log(f"super-resolved: {name}")
    out = []
    for tname, target in targets.items():
        target = cropped_to_overlap(target, source)
        transforms: dict[str, sitk.Transform | None] = {tname: None}
        if register is not None:
            found = register_rigid(target, results[register])
            transforms[f"{tname}, registered"] = found
            log(f"{tname}: rigid alignment (rotation rad, translation mm) {found.GetParameters()}")
        acquired = sitk.GetArrayFromImage(target).astype(np.float32)
        for name, transform in transforms.items():
            scores: dict[tuple[str, str, int], Score] = {}
            for profile in profiles:
                imaged = {
                    m: image_like(img, target, thickness_mm[tname], profile, transform=transform)
                    for m, img in results.items()
                }
                region = common_region(acquired, [cov for _, cov in imaged.values()])
                for m, (values, _) in imaged.items():
                    for order in orders:
                        scores[(m, profile, order)] = compare(values, acquired, region, order)
                log(f"{name} {profile}: {int(region.sum())} voxels compared")
            out.append(TargetResult(name, scores))
    return out, results


def thick_stack(
    thin: sitk.Image, axis: int, spacing_mm: float, thickness_mm: float, profile: str
) -> sitk.Image:
    """A thick-slice stack acquired from ``thin`` along its index ``axis``: slices every
    ``spacing_mm`` centred on thin voxel 0, spacing_mm, ...; ``thickness_mm`` thick with
    ``profile`` (:func:`sainr.acquisition.acquire`). Same origin and direction cosines as
    ``thin``; only the spacing and size along ``axis`` change."""
    step = thin.GetSpacing()[axis]
    acq = Acquisition(spacing_mm / step, thickness_mm / spacing_mm, profile)
    hr = np.moveaxis(sitk.GetArrayFromImage(thin).astype(np.float32), 2 - axis, 0)
    lr = acquire(hr, acq, lr_count(hr.shape[0], acq.factor))
    out = sitk.GetImageFromArray(np.ascontiguousarray(np.moveaxis(lr, 0, 2 - axis)))
    out.SetOrigin(thin.GetOrigin())
    out.SetDirection(thin.GetDirection())
    spacing = list(thin.GetSpacing())
    spacing[axis] = spacing_mm
    out.SetSpacing(spacing)
    return out


def orthogonal_stacks(
    thin: sitk.Image,
    axes: dict[str, int],
    spacing_mm: dict[str, float],
    thickness_mm: dict[str, float],
    profile: str,
) -> dict[str, sitk.Image]:
    """A simulated session: one thick stack per named index axis of ``thin`` (truth known)."""
    return {
        name: thick_stack(thin, axis, spacing_mm[name], thickness_mm[name], profile)
        for name, axis in axes.items()
    }
