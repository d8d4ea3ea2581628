"""Image-quality metrics as SA-INR reports them: PSNR, 3D SSIM and S3 sharpness.

- PSNR: MAX = ground-truth maximum, MSE over the whole volume, prediction clipped to [0, MAX].
  With a mask (:func:`foreground_mask`: the tissue, not the air around it), the MSE is taken
  over the masked voxels only and MAX stays the whole truth's maximum, so that a volume with
  much background does not look better than one filled with tissue.
- SSIM: scikit-image's 3D SSIM with its defaults (7-voxel uniform window, sample covariance),
  data range L = max(gt) - min(gt). scikit-image is an evaluation extra, imported on use.
- S3 (Vu & Chandler): per-pixel sqrt(spectral sharpness S1 * spatial sharpness S2), slice score
  = mean of the top 1 %, computed the way the official SA-INR evaluator does (block sizes,
  overlaps, contrast gate, "last block wins" painting). The radial spectrum sum over 360
  orientations is one matrix product with a precomputed bilinear polar sampling instead of 360
  image rotations, so values differ slightly from the official script's double-warped ones.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

S3_PAD = 8
S1_BLOCK, S1_STRIDE = 64, 48  # 25 % overlap
S2_BLOCK, S2_STRIDE = 8, 4  # 50 % overlap
S3_TOP_FRACTION = 0.01
_ANGLES = 360
#: Foreground: voxels above this fraction of the truth's FOREGROUND_PERCENTILE-th percentile.
FOREGROUND_FRACTION = 0.1
#: A high percentile rather than the maximum, so that a few bright voxels (vessels, fat,
#: artefacts) do not move the threshold.
FOREGROUND_PERCENTILE = 99.0


def psnr(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """10 log10(MAX^2 / MSE), MAX = max(truth); prediction clipped to [0, MAX] first.

    ``mask`` (boolean, the truth's shape) restricts the MSE to its voxels (foreground PSNR);
    MAX is still the maximum of the whole truth."""
    peak = float(truth.max())
    pred = np.clip(pred.astype(np.float64), 0.0, peak)
    error = (pred - truth.astype(np.float64)) ** 2
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != truth.shape:
            raise ValueError(f"mask shape {mask.shape} differs from the truth's {truth.shape}")
        if not mask.any():
            raise ValueError("the mask selects no voxel")
        error = error[mask]
    mse = float(np.mean(error))
    return float("inf") if mse == 0 else 10.0 * np.log10(peak**2 / mse)


def foreground_mask(truth: np.ndarray) -> np.ndarray:
    """The tissue: voxels brighter than FOREGROUND_FRACTION of the truth's
    FOREGROUND_PERCENTILE-th percentile (a robust maximum). Air and the dark background of
    a scan fall below it; the threshold is the truth's, so every method is scored on the
    same voxels."""
    truth = np.asarray(truth, dtype=np.float64)
    level = FOREGROUND_FRACTION * float(np.percentile(truth, FOREGROUND_PERCENTILE))
    return truth > level


def ssim(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean 3D SSIM (scikit-image defaults: 7-voxel uniform window), L = max(gt) - min(gt).

    The prediction is clipped to the truth's [min, max] first, as PSNR clips to [0, MAX].
    Every axis needs at least 7 voxels.
    """
    from skimage.metrics import structural_similarity

    truth = truth.astype(np.float64)
    lo, hi = float(truth.min()), float(truth.max())
    pred = np.clip(pred.astype(np.float64), lo, hi)
    return float(structural_similarity(truth, pred, data_range=hi - lo, win_size=7))


def block_starts(size: int, block: int, stride: int) -> np.ndarray:
    """Block origins along one axis: 0, stride, 2 stride, ... then one flush with the end."""
    starts = list(range(0, max(size - block, 0), stride))
    starts.append(max(size - block, 0))
    return np.asarray(starts)


def _owner(size: int, starts: np.ndarray, block: int) -> np.ndarray:
    """For each pixel, the last block (in scan order) that covers it: blocks painted in
    order overwrite earlier ones, as in the official evaluator."""
    owner = np.zeros(size, dtype=np.int64)
    for i, s in enumerate(starts):
        owner[s : s + block] = i
    return owner


def _paint(
    values: np.ndarray,
    starts_y: np.ndarray,
    starts_x: np.ndarray,
    block: int,
    shape: tuple[int, int],
) -> np.ndarray:
    """Per-pixel map from per-block values (n_y, n_x), later blocks overwriting earlier ones."""
    return values[_owner(shape[0], starts_y, block)[:, None], _owner(shape[1], starts_x, block)]


@lru_cache(maxsize=4)
def polar_sampling(n: int) -> np.ndarray:
    """(n/2, n*n) matrix: row r sums bilinear samples of a centred n x n spectrum at radius r
    over 360 one-degree orientations, i.e. the official evaluator's radial profile."""
    c = n // 2
    radius = np.arange(c, dtype=np.float64)[:, None]
    theta = np.deg2rad(np.arange(_ANGLES, dtype=np.float64))[None, :]
    y, x = c + radius * np.sin(theta), c + radius * np.cos(theta)
    y0, x0 = np.floor(y).astype(np.int64), np.floor(x).astype(np.int64)
    fy, fx = y - y0, x - x0
    weights = np.zeros((c, n * n))
    rows = np.broadcast_to(np.arange(c)[:, None], y.shape)
    for dy, dx, w in (
        (0, 0, (1 - fy) * (1 - fx)),
        (0, 1, (1 - fy) * fx),
        (1, 0, fy * (1 - fx)),
        (1, 1, fy * fx),
    ):
        yy, xx = np.clip(y0 + dy, 0, n - 1), np.clip(x0 + dx, 0, n - 1)
        np.add.at(weights, (rows, yy * n + xx), w)
    return weights


def spectral_slope(block: np.ndarray) -> float:
    """alpha of |F(f)| ~ f^-alpha for a square block: radial profile from its peak outward,
    least-squares line of log magnitude vs log f with f uniform on (0, 0.5]."""
    n = block.shape[0]
    magnitude = np.abs(np.fft.fftshift(np.fft.fft2(block)))
    profile = polar_sampling(n) @ magnitude.reshape(-1)
    tail = profile[int(np.argmax(profile)) :]
    if len(tail) < 3:
        return 0.0
    f = np.linspace(0.0, 0.5, len(tail))[1:]
    slope = np.polyfit(np.log(f), np.log(np.maximum(tail[1:], 1e-12)), 1)[0]
    return float(-slope)


def _has_contrast(block: np.ndarray) -> bool:
    """Official contrast gate on display luminance of [0, 1] intensities."""
    lum = (0.7656 + 0.0364 * 255.0 * block) ** 2.2
    return bool(lum.mean() > 2 and lum.max() - lum.min() > 5)


def s1_map(padded: np.ndarray) -> np.ndarray:
    """Spectral sharpness: 1 - 1/(1 + exp(-3 (alpha - 2))) per 64 x 64 block (0 without contrast)."""
    ys = block_starts(padded.shape[0], S1_BLOCK, S1_STRIDE)
    xs = block_starts(padded.shape[1], S1_BLOCK, S1_STRIDE)
    values = np.zeros((len(ys), len(xs)))
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            block = padded[y : y + S1_BLOCK, x : x + S1_BLOCK]
            if _has_contrast(block):
                alpha = spectral_slope(block)
                values[i, j] = 1.0 - 1.0 / (1.0 + math.exp(-3.0 * (alpha - 2.0)))
    return _paint(values, ys, xs, S1_BLOCK, padded.shape)


def s2_map(padded: np.ndarray) -> np.ndarray:
    """Spatial sharpness: per 8 x 8 block, the largest total variation of its 2 x 2 windows."""
    a, b = padded[:-1, :-1], padded[:-1, 1:]
    c, d = padded[1:, :-1], padded[1:, 1:]
    tv = 0.25 * (np.abs(a - b) + np.abs(a - c) + np.abs(b - d) + np.abs(c - d))
    ys = block_starts(padded.shape[0], S2_BLOCK, S2_STRIDE)
    xs = block_starts(padded.shape[1], S2_BLOCK, S2_STRIDE)
    windows = sliding_window_view(tv, (S2_BLOCK - 1, S2_BLOCK - 1))
    values = windows[ys[:, None], xs[None, :]].max(axis=(-2, -1))
    return _paint(values, ys, xs, S2_BLOCK, padded.shape)


def s3_sharpness(slice2d: np.ndarray) -> float:
    """S3 score of a 2D slice with intensities in about [0, 1]: mean of the top 1 % of
    sqrt(S1 S2) after an 8-pixel reflect pad is removed.

    As in the official evaluator the top-1 % count is taken from the padded size. Slices whose
    padded side would be shorter than one 64-pixel S1 block get a wider reflect pad on that
    side (our extension; the official script needs slices of at least 48 pixels).
    """
    img = np.asarray(slice2d, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"S3 needs a 2D slice, got shape {img.shape}")
    pads = [max(S3_PAD, math.ceil((S1_BLOCK - n) / 2)) for n in img.shape]
    padded = np.pad(img, [(p, p) for p in pads], mode="reflect")
    core = (slice(pads[0], pads[0] + img.shape[0]), slice(pads[1], pads[1] + img.shape[1]))
    s3 = np.sqrt(s1_map(padded)[core] * s2_map(padded)[core])
    count = math.ceil(S3_TOP_FRACTION * (img.shape[0] + 2 * S3_PAD) * (img.shape[1] + 2 * S3_PAD))
    return float(np.sort(s3, axis=None)[-count:].mean())


def slice_subset(n: int, max_slices: int | None) -> np.ndarray:
    """Up to ``max_slices`` slice indices evenly spread over 0..n-1 (all when None)."""
    if max_slices is None or max_slices >= n:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, max(max_slices, 1))).astype(np.int64))


def s3_volume(vol: np.ndarray, axis: int, max_slices: int | None = None) -> float:
    """Mean S3 over the slices ``vol.take(i, axis)`` for ``slice_subset(n, max_slices)``."""
    idx = slice_subset(vol.shape[axis], max_slices)
    return float(np.mean([s3_sharpness(np.take(vol, int(i), axis=axis)) for i in idx]))
