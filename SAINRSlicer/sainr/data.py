"""Training data: HR volumes -> (LR patch, thin-slice queries, targets, acquisition).

Each batch draws a slice profile and a factor, each patch a slice thickness
(:class:`sainr.degradation.AcquisitionSampler`); the LR is acquired from an HR crop cut with a
margin along the slice axis (:func:`sainr.degradation.acquire`), so edge slices average real
neighbours. Optional augmentations: random gamma/scale of the HR (LR and target together) and
Gaussian noise on the LR. Each volume is normalised once with the same robust scale as
inference, and its gradient-magnitude target for the gating mask (top 20 %) is computed once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from torch.utils.data import Dataset

from .degradation import Acquisition, AcquisitionSampler, acquire, lr_count, margin
from .geometry import MIN_ANISOTROPY, slice_count, slice_grid
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
    g = [(np.roll(padded, -1, a) - np.roll(padded, 1, a))[1:-1, 1:-1, 1:-1] / 2 for a in range(3)]
    mag = np.sqrt(g[0] ** 2 + g[1] ** 2 + g[2] ** 2 + 1e-6)
    return mag > np.quantile(mag, 1 - top)


def usable_axes(spacing: tuple[float, ...], in_plane: bool = False) -> tuple[int, ...]:
    """Slice axes to train on: all three for near-isotropic volumes, else the native
    (coarsest) one, with its in-plane axes too when ``in_plane`` (their fine spacing shows
    thin-slice detail that the native axis lacks; the native axis is listed first)."""
    native = int(np.argmax(spacing))
    if max(spacing) < MIN_ANISOTROPY * min(spacing):
        return (0, 1, 2)
    return (native, *(a for a in range(3) if a != native)) if in_plane else (native,)


def load_volume(
    path: str | Path, crop: tuple[slice, slice, slice] | None = None, in_plane: bool = False
) -> Volume:
    """Read, optionally crop (array order k, j, i), normalise and precompute the gate target;
    ``in_plane`` also samples the in-plane axes of an anisotropic volume as slice axes."""
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    if crop is not None:
        array = array[crop]
    scaled = robust_scale(array).normalize(array)
    spacing = tuple(float(s) for s in image.GetSpacing())
    axes = usable_axes(spacing, in_plane)
    return Volume(Path(path).name, scaled, spacing, gradient_target(scaled), axes)


@dataclass(frozen=True)
class PatchSpec:
    """How training patches are cut, degraded (:mod:`sainr.degradation`) and augmented."""

    lr_slices: int = 17
    size: int = 64
    queries: int = 4096
    factors: tuple[float, ...] = (2, 3, 4, 2.5, 3.3)
    profiles: tuple[str, ...] = ("none",)  # none | gaussian | box, drawn per batch
    profile_weights: tuple[float, ...] = (1.0,)
    thickness: tuple[float, float] = (1.0, 1.0)  # relative slice thickness, uniform range
    intensity: float = 0.0  # probability of a random gamma (0.7-1.4) and scale (0.8-1.25)
    noise: float = 0.0  # largest std of Gaussian noise added to the LR (normalised units)
    min_foreground: float = 0.05

    @property
    def sampler(self) -> AcquisitionSampler:
        return AcquisitionSampler(
            tuple(self.factors),
            tuple(self.profiles),
            tuple(self.profile_weights),
            (float(self.thickness[0]), float(self.thickness[1])),
        )


class PatchDataset(Dataset):
    """Item i is a random patch drawn with a generator seeded by (seed, i): deterministic,
    so a resumed run or a DistributedSampler shard sees the same stream. Consecutive items
    in blocks of ``batch_size`` share one profile and factor, so a batch has one LR slice
    count; the thickness varies per item."""

    def __init__(
        self,
        volumes: list[Volume],
        spec: PatchSpec,
        length: int,
        batch_size: int = 1,
        seed: int = 0,
    ) -> None:
        self.volumes, self.spec, self.length, self.seed = volumes, spec, length, seed
        self.batch_size = batch_size
        self.sampler = spec.sampler

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        batch_rng = np.random.default_rng((self.seed, index // self.batch_size))
        profile = self.sampler.profile(batch_rng)
        factor = self.sampler.factor(profile, batch_rng)
        rng = np.random.default_rng((self.seed, index))
        acq = self.sampler.acquisition(profile, factor, rng)
        return sample_patch(self.volumes, self.spec, acq, rng)


def _crop(
    vol: Volume, axis: int, spec: PatchSpec, n_hr: int, pad: int, rng
) -> tuple[np.ndarray, np.ndarray, int]:
    """Random HR crop with the slice axis first and ``pad`` extra slices on each side (fewer
    only when the volume is too short for both), retrying on background; returns (crop, gate,
    lead) with ``lead`` the extra slices before the patch proper."""
    arr = np.moveaxis(vol.array, 2 - axis, 0)
    gate = np.moveaxis(vol.gate_target, 2 - axis, 0)
    n_hr = min(n_hr, arr.shape[0])
    shape = (n_hr, spec.size, spec.size)
    room = arr.shape[0] - n_hr >= 2 * pad  # then every patch gets its full margin
    lows = (pad if room else 0, 0, 0)
    highs = [max(a - b, 0) for a, b in zip(arr.shape, shape)]
    highs[0] -= pad if room else 0
    for _ in range(20):
        start = [int(rng.integers(lo, hi + 1)) for lo, hi in zip(lows, highs)]
        region = tuple(slice(s, s + n) for s, n in zip(start, shape))
        if (arr[region] > 0.1).mean() >= spec.min_foreground:
            break
    lo = max(start[0] - pad, 0)
    hi = min(start[0] + n_hr + pad, arr.shape[0])
    padded = (slice(lo, hi), region[1], region[2])
    return arr[padded], gate[region], start[0] - lo


def _patch_axes(vol: Volume, size: int) -> list[int]:
    """The volume's slice axes whose in-plane extent holds a ``size`` x ``size`` patch."""
    fits = [a for a in vol.axes if min(np.delete(vol.array.shape, 2 - a)) >= size]
    if not fits:
        raise ValueError(f"{vol.name} is smaller than a {size} x {size} patch in every plane")
    return fits


def _augment(arrays: tuple[np.ndarray, ...], rng) -> tuple[np.ndarray, ...]:
    """Same random in-plane flips / transpose for all arrays (slice axis first)."""
    if rng.random() < 0.5:
        arrays = tuple(a[:, ::-1] for a in arrays)
    if rng.random() < 0.5:
        arrays = tuple(a[:, :, ::-1] for a in arrays)
    if rng.random() < 0.5:
        arrays = tuple(a.transpose(0, 2, 1) for a in arrays)
    return tuple(np.ascontiguousarray(a) for a in arrays)


def _intensity(hr: np.ndarray, spec: PatchSpec, rng) -> np.ndarray:
    """Random gamma and scale of the normalised HR (contrast and brightness of other
    scanners and sequences); LR and target change together."""
    if rng.random() >= spec.intensity:
        return hr
    gamma, scale = np.exp(rng.uniform(np.log(0.7), np.log(1.4))), np.exp(rng.uniform(-0.22, 0.22))
    return (scale * np.maximum(hr, 0) ** gamma).astype(np.float32)


def sample_patch(
    volumes: list[Volume], spec: PatchSpec, acq: Acquisition, rng: np.random.Generator
) -> dict[str, torch.Tensor]:
    """One LR patch (1, S, P, P) acquired as ``acq`` says, with ``spec.queries`` random
    thin-slice queries, their targets and the acquisition row (1 / r, relative thickness)."""
    vol = volumes[int(rng.integers(len(volumes)))]
    axis = int(rng.choice(_patch_axes(vol, spec.size)))
    n_hr = slice_count(spec.lr_slices, acq.factor)
    padded, gate, lead = _crop(vol, axis, spec, n_hr, margin(acq), rng)
    padded, gate = _augment((padded, gate), rng)
    padded = _intensity(padded, spec, rng)
    n_lr = lr_count(min(n_hr, padded.shape[0] - lead), acq.factor)
    lr = acquire(padded, acq, n_lr, start=lead)
    if spec.noise > 0:
        lr = lr + rng.normal(0, rng.uniform(0, spec.noise), lr.shape).astype(np.float32)
    hr = padded[lead:]
    grid = slice_grid(n_lr, acq.factor, 1.0)
    n_hr = min(hr.shape[0], grid.n_hr)
    flat = rng.choice(n_hr * hr.shape[1] * hr.shape[2], size=spec.queries, replace=True)
    j, y, x = np.unravel_index(flat, (n_hr, hr.shape[1], hr.shape[2]))
    lower = grid.lower[j]
    t = grid.frac[j].astype(np.float32)
    return {
        "lr": torch.from_numpy(lr[None].astype(np.float32)),
        "acquisition": torch.tensor(
            [1.0 / acq.factor, acq.relative_thickness], dtype=torch.float32
        ),
        "s": torch.from_numpy(lower),
        "y": torch.from_numpy(y.astype(np.int64)),
        "x": torch.from_numpy(x.astype(np.int64)),
        "t": torch.from_numpy(t),
        "target": torch.from_numpy(hr[j, y, x].astype(np.float32)),
        "gate": torch.from_numpy(gate[j, y, x].astype(np.float32)),
    }


def collate(items: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, Queries, dict]:
    """Stack patches; crop all to the smallest LR slice count (dropping queries that would
    need a cropped slice) when volumes were too short for the full patch. The third element
    holds the query targets and the (B, 2) acquisition rows."""
    n_s = min(it["lr"].shape[1] for it in items)
    lr = torch.stack([it["lr"][:, :n_s] for it in items])
    keep = [(it["s"] < n_s - 1) | ((it["s"] == n_s - 1) & (it["t"] == 0)) for it in items]
    b = torch.cat([torch.full((int(k.sum()),), i, dtype=torch.long) for i, k in enumerate(keep)])
    per_query = ("s", "y", "x", "t", "target", "gate")
    cat = {key: torch.cat([it[key][k] for it, k in zip(items, keep)]) for key in per_query}
    q = Queries(b=b, s=cat["s"], y=cat["y"], x=cat["x"], t=cat["t"])
    acquisition = torch.stack([it["acquisition"] for it in items])
    return lr, q, {"target": cat["target"], "gate": cat["gate"], "acquisition": acquisition}
