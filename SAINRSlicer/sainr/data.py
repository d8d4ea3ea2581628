"""Training data: HR volumes -> (LR patch, thin-slice queries, targets) by slice decimation.

LR is made from an HR volume by keeping every k-th slice along a slice axis (SA-INR's
"slice spacing" degradation), optionally after blurring along that axis with a slice profile
(Gaussian or boxcar of a given thickness) to mimic thick acquisitions. Non-integer factors r
sample the HR linearly at positions 0, r, 2r, ... Each volume is normalised once with the same
robust scale as inference, and its gradient-magnitude target for the gating mask (top 20 %) is
computed once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from torch.utils.data import Dataset

from .geometry import MIN_ANISOTROPY
from .intensity import robust_scale
from .model import Queries

GATE_TOP_FRACTION = 0.2


@dataclass
class Volume:
    """A normalised HR training volume (array in (k, j, i) order) and its gating target."""

    name: str
    array: np.ndarray  # float32, normalised
    spacing: tuple[float, float, float]  # (i, j, k) mm
    gate_target: np.ndarray  # bool, top-20 % gradient magnitude
    axes: tuple[int, ...]  # index axes usable as slice axis


def gradient_target(volume: np.ndarray, top: float = GATE_TOP_FRACTION) -> np.ndarray:
    """True where the central-difference gradient magnitude is in the top ``top`` fraction."""
    padded = np.pad(volume, 1, mode="edge")
    g = [
        (np.roll(padded, -1, a) - np.roll(padded, 1, a))[1:-1, 1:-1, 1:-1] / 2 for a in range(3)
    ]
    mag = np.sqrt(g[0] ** 2 + g[1] ** 2 + g[2] ** 2 + 1e-6)
    return mag > np.quantile(mag, 1 - top)


def usable_axes(spacing: tuple[float, ...]) -> tuple[int, ...]:
    """All three axes for near-isotropic volumes, else only the native (coarsest) one."""
    if max(spacing) < MIN_ANISOTROPY * min(spacing):
        return (0, 1, 2)
    return (int(np.argmax(spacing)),)


def load_volume(path: str | Path, crop: tuple[slice, slice, slice] | None = None) -> Volume:
    """Read, optionally crop (array order k, j, i), normalise and precompute the gate target."""
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    if crop is not None:
        array = array[crop]
    scaled = robust_scale(array).normalize(array)
    spacing = tuple(float(s) for s in image.GetSpacing())
    return Volume(Path(path).name, scaled, spacing, gradient_target(scaled), usable_axes(spacing))


def slice_profile(thickness: float, kind: str) -> np.ndarray:
    """Normalised 1D kernel (in HR voxels) of a slice with the given thickness (FWHM)."""
    if kind == "gaussian":
        sigma = thickness / (2 * math.sqrt(2 * math.log(2)))
        half = max(int(math.ceil(3 * sigma)), 1)
        x = np.arange(-half, half + 1, dtype=np.float64)
        kernel = np.exp(-0.5 * (x / max(sigma, 1e-6)) ** 2)
    elif kind == "boxcar":
        half = int(math.floor(thickness / 2))
        kernel = np.ones(2 * half + 1)
        frac = (thickness - (2 * half + 1)) / 2
        if frac > 0:
            kernel = np.concatenate([[frac], kernel, [frac]])
    else:
        raise ValueError(f"unknown slice profile {kind!r} (gaussian or boxcar)")
    return (kernel / kernel.sum()).astype(np.float32)


def blur_slices(hr: np.ndarray, thickness: float, kind: str = "gaussian") -> np.ndarray:
    """Blur along axis 0 with a slice profile; edges replicated, mean intensity preserved."""
    if thickness <= 1:
        return hr
    kernel = slice_profile(thickness, kind)
    half = len(kernel) // 2
    padded = np.pad(hr, [(half, half)] + [(0, 0)] * (hr.ndim - 1), mode="edge")
    out = np.zeros_like(hr)
    for i, w in enumerate(kernel):
        out += w * padded[i : i + hr.shape[0]]
    return out


def decimate(hr: np.ndarray, factor: float, n_lr: int) -> np.ndarray:
    """``n_lr`` LR slices at HR positions 0, r, 2r, ... along axis 0 (linear between slices)."""
    pos = np.arange(n_lr) * factor
    lo = np.minimum(np.floor(pos + 1e-6).astype(int), hr.shape[0] - 1)
    hi = np.minimum(lo + 1, hr.shape[0] - 1)
    t = (pos - lo).astype(np.float32)[:, None, None]
    return hr[lo] * (1 - t) + hr[hi] * t


@dataclass(frozen=True)
class PatchSpec:
    """How training patches are cut and degraded."""

    lr_slices: int = 12
    size: int = 48
    queries: int = 4096
    factors: tuple[float, ...] = (1, 2, 3, 4, 2.5, 3.3)
    profile: str = "none"  # none | gaussian | boxcar
    thickness: float = 1.0  # slice thickness as a multiple of the LR spacing
    min_foreground: float = 0.05


class PatchDataset(Dataset):
    """Item i is a random patch drawn with a generator seeded by (seed, i): deterministic,
    so a resumed run or a DistributedSampler shard sees the same stream. Consecutive items
    in blocks of ``batch_size`` share one factor, so a batch has one LR slice count."""

    def __init__(
        self, volumes: list[Volume], spec: PatchSpec, length: int, batch_size: int = 1, seed: int = 0
    ) -> None:
        self.volumes, self.spec, self.length, self.seed = volumes, spec, length, seed
        self.batch_size = batch_size

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        batch_rng = np.random.default_rng((self.seed, index // self.batch_size))
        factor = float(batch_rng.choice(self.spec.factors))
        return sample_patch(self.volumes, self.spec, factor, np.random.default_rng((self.seed, index)))


def _crop(vol: Volume, axis: int, spec: PatchSpec, n_hr: int, rng) -> tuple[np.ndarray, ...]:
    """Random HR crop with the slice axis first (retrying on background)."""
    arr = np.moveaxis(vol.array, 2 - axis, 0)
    gate = np.moveaxis(vol.gate_target, 2 - axis, 0)
    shape = (n_hr, spec.size, spec.size)
    for _ in range(20):
        start = [int(rng.integers(0, max(a - b, 0) + 1)) for a, b in zip(arr.shape, shape)]
        region = tuple(slice(s, s + n) for s, n in zip(start, shape))
        hr = arr[region]
        if (hr > 0.1).mean() >= spec.min_foreground:
            break
    return hr, gate[region]


def _augment(arrays: tuple[np.ndarray, ...], rng) -> tuple[np.ndarray, ...]:
    """Same random in-plane flips / transpose for all arrays (slice axis first)."""
    if rng.random() < 0.5:
        arrays = tuple(a[:, ::-1] for a in arrays)
    if rng.random() < 0.5:
        arrays = tuple(a[:, :, ::-1] for a in arrays)
    if rng.random() < 0.5:
        arrays = tuple(a.transpose(0, 2, 1) for a in arrays)
    return tuple(np.ascontiguousarray(a) for a in arrays)


def sample_patch(
    volumes: list[Volume], spec: PatchSpec, factor: float, rng: np.random.Generator
) -> dict[str, torch.Tensor]:
    """One LR patch (1, S, P, P) with ``spec.queries`` random thin-slice queries and targets."""
    vol = volumes[int(rng.integers(len(volumes)))]
    axis = int(rng.choice(vol.axes))
    n_hr = int(math.floor((spec.lr_slices - 1) * factor + 1e-6)) + 1
    n_hr = min(n_hr, vol.array.shape[2 - axis])
    n_lr = int(math.floor((n_hr - 1) / factor + 1e-6)) + 1
    hr, gate = _augment(_crop(vol, axis, spec, n_hr, rng), rng)
    degraded = hr
    if spec.profile != "none":
        degraded = blur_slices(hr, spec.thickness * factor, spec.profile)
    lr = decimate(degraded, factor, n_lr)
    n_hr = min(hr.shape[0], int(math.floor((n_lr - 1) * factor + 1e-6)) + 1)
    flat = rng.choice(n_hr * hr.shape[1] * hr.shape[2], size=spec.queries, replace=True)
    j, y, x = np.unravel_index(flat, (n_hr, hr.shape[1], hr.shape[2]))
    pos = j / factor
    lower = np.minimum(np.floor(pos + 1e-6).astype(np.int64), n_lr - 1)
    t = np.clip(pos - lower, 0, None).astype(np.float32)
    return {
        "lr": torch.from_numpy(lr[None].astype(np.float32)),
        "s": torch.from_numpy(lower),
        "y": torch.from_numpy(y.astype(np.int64)),
        "x": torch.from_numpy(x.astype(np.int64)),
        "t": torch.from_numpy(t),
        "target": torch.from_numpy(hr[j, y, x].astype(np.float32)),
        "gate": torch.from_numpy(gate[j, y, x].astype(np.float32)),
    }


def collate(items: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, Queries, dict]:
    """Stack patches; crop all to the smallest LR slice count (dropping queries that would
    need a cropped slice) when volumes were too short for the full patch."""
    n_s = min(it["lr"].shape[1] for it in items)
    lr = torch.stack([it["lr"][:, :n_s] for it in items])
    keep = [(it["s"] < n_s - 1) | ((it["s"] == n_s - 1) & (it["t"] == 0)) for it in items]
    b = torch.cat([torch.full((int(k.sum()),), i, dtype=torch.long) for i, k in enumerate(keep)])
    cat = {key: torch.cat([it[key][k] for it, k in zip(items, keep)]) for key in items[0]
           if key != "lr"}  # fmt: skip
    q = Queries(b=b, s=cat["s"], y=cat["y"], x=cat["x"], t=cat["t"])
    return lr, q, {"target": cat["target"], "gate": cat["gate"]}
