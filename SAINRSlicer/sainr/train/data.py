"""Training data: HR volumes -> (LR patch, thin-slice queries, targets, acquisition).

Each batch draws a slice profile and a factor, each patch a slice thickness
(:class:`sainr.train.degradation.AcquisitionSampler`); the LR is acquired from an HR crop cut with a
margin along the slice axis (:func:`sainr.acquisition.acquire`), so edge slices average real
neighbours. Optional augmentations (all off by default, each a small function below, each drawn
from the item's own generator so that a resumed run sees the same stream): random gamma/scale,
a piecewise-monotone contrast map, a smooth multiplicative bias field and a small elastic
deformation of the HR (LR and target change together), Gaussian and Rician noise on the LR.
Each volume is normalised once with the same robust scale as inference, and its
gradient-magnitude target for the gating mask (top 20 %) is computed once.

Per volume, the config may name its slice axes (``"in-plane"`` for real thick-slice scans whose
native axis has no thin-slice truth), a sampling weight, and the native slice thickness, which
enters the thickness the model is told (:meth:`sainr.acquisition.Acquisition.told`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..acquisition import Acquisition, acquire, lr_count, margin
from ..geometry import MIN_ANISOTROPY, slice_count, slice_grid
from ..intensity import robust_scale
from ..model import Queries
from .degradation import AcquisitionSampler, slice_scales

GATE_TOP_FRACTION = 0.2


@dataclass
class Volume:
    """A normalised HR training volume (array in (k, j, i) order) and its gating target."""

    name: str
    array: np.ndarray  # float32, normalised
    spacing: tuple[float, float, float]  # (i, j, k) mm
    gate_target: np.ndarray  # bool, top-20 % gradient magnitude
    axes: tuple[int, ...]  # index axes usable as slice axis
    weight: float = 1.0  # relative probability of drawing this volume for a patch
    native_axis: int = -1  # index axis of the native slices of an anisotropic volume; -1: none
    native_width: float = 0.0  # native slice thickness along native_axis, in its voxels

    def native_width_along(self, axis: int) -> float:
        """Native slice thickness (HR voxels) blurring the HR along ``axis``: only the native
        axis of an anisotropic volume has one; near-isotropic and in-plane axes are the
        reference (0)."""
        return self.native_width if axis == self.native_axis else 0.0


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


def resolve_axes(
    spacing: tuple[float, ...], axes: str | list[int] | None, in_plane: bool = False
) -> tuple[int, ...]:
    """A volume's slice axes (index axes i, j, k = 0, 1, 2) from its config entry: None for
    :func:`usable_axes` (with ``in_plane``), ``"all"``, ``"native"``, ``"in-plane"`` (only the
    in-plane axes of an anisotropic volume: a real thick-slice scan has no thin-slice truth
    along its native axis) or an explicit list."""
    if axes is None:
        return usable_axes(spacing, in_plane)
    anisotropic = max(spacing) >= MIN_ANISOTROPY * min(spacing)
    native = int(np.argmax(spacing))
    if axes == "all":
        return (0, 1, 2)
    if axes in ("native", "in-plane"):
        if not anisotropic:
            raise ValueError(f"axes = {axes!r} needs an anisotropic volume, spacing {spacing}")
        return (native,) if axes == "native" else tuple(a for a in range(3) if a != native)
    if isinstance(axes, str) or not axes or any(a not in (0, 1, 2) for a in axes):
        raise ValueError(f"axes must be all, native, in-plane or index axes 0-2, got {axes!r}")
    return tuple(int(a) for a in axes)


def load_volume(
    path: str | Path,
    crop: tuple[slice, slice, slice] | None = None,
    in_plane: bool = False,
    axes: str | list[int] | None = None,
    weight: float = 1.0,
    slice_thickness: float | None = None,
) -> Volume:
    """Read, optionally crop (array order k, j, i), normalise and precompute the gate target;
    ``in_plane`` also samples the in-plane axes of an anisotropic volume as slice axes unless
    ``axes`` names them (:func:`resolve_axes`). ``weight`` is the volume's sampling weight;
    ``slice_thickness`` (mm, default = the native spacing: contiguous slices) is the native
    slice thickness of an anisotropic volume, told to the model on top of the simulated one."""
    if not (math.isfinite(weight) and weight > 0):
        raise ValueError(f"a volume's weight must be positive, got {weight}")
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    if crop is not None:
        array = array[crop]
    scaled = robust_scale(array).normalize(array)
    spacing = tuple(float(s) for s in image.GetSpacing())
    native, width = -1, 0.0
    if max(spacing) >= MIN_ANISOTROPY * min(spacing):
        native = int(np.argmax(spacing))
        width = (slice_thickness or spacing[native]) / spacing[native]
    return Volume(
        Path(path).name,
        scaled,
        spacing,
        gradient_target(scaled),
        resolve_axes(spacing, axes, in_plane),
        float(weight),
        native,
        width,
    )


@dataclass(frozen=True)
class PatchSpec:
    """How training patches are cut, degraded (:mod:`sainr.acquisition`) and augmented."""

    lr_slices: int = 17
    size: int = 64
    queries: int = 4096
    factors: tuple[float, ...] = (2, 3, 4, 2.5, 3.3)
    profiles: tuple[str, ...] = ("none",)  # none | gaussian | box | sinc, drawn per batch
    profile_weights: tuple[float, ...] = (1.0,)
    thickness: tuple[float, float] = (1.0, 1.0)  # relative slice thickness, uniform range
    jitter: float = 0.0  # per-slice width spread around the nominal thickness (relative)
    label_noise: float = 0.0  # told thickness off by up to this fraction (multiplicative)
    misread_share: float = 0.0  # share of patches whose label the student is shown misread
    misread: tuple[float, float] = (1.0, 1.0)  # range of that misreading (log-uniform factor)
    intensity: float = 0.0  # probability of a random gamma (0.7-1.4) and scale (0.8-1.25)
    contrast: float = 0.0  # probability of a random piecewise-monotone intensity map
    bias: float = 0.0  # largest amplitude of the log bias field (0: off)
    elastic: float = 0.0  # largest elastic displacement in HR voxels (0: off)
    noise: float = 0.0  # largest std of Gaussian noise added to the LR (normalised units)
    rician: float = 0.0  # largest std of the complex noise whose magnitude is the LR (0: off)
    min_foreground: float = 0.05

    @property
    def sampler(self) -> AcquisitionSampler:
        return AcquisitionSampler(
            tuple(self.factors),
            tuple(self.profiles),
            tuple(self.profile_weights),
            (float(self.thickness[0]), float(self.thickness[1])),
            float(self.jitter),
            float(self.label_noise),
            float(self.misread_share),
            (float(self.misread[0]), float(self.misread[1])),
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
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    """Random HR crop with the slice axis first and ``pad`` extra slices on each side (fewer
    only when the volume is too short for both), retrying on background; returns (crop, gate,
    valid, lead) with ``lead`` the extra slices before the patch proper. A plane smaller than
    the patch (the in-plane axes of a thick-slice scan with few slices) is zero-padded, and
    ``valid`` marks its real voxels (None when all are real)."""
    arr = np.moveaxis(vol.array, 2 - axis, 0)
    gate = np.moveaxis(vol.gate_target, 2 - axis, 0)
    valid = None
    grow = [(0, 0), (0, max(spec.size - arr.shape[1], 0)), (0, max(spec.size - arr.shape[2], 0))]
    if grow[1][1] or grow[2][1]:
        valid = np.pad(np.ones(arr.shape, bool), grow)
        arr, gate = np.pad(arr, grow), np.pad(gate, grow)
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
    return arr[padded], gate[region], None if valid is None else valid[region], start[0] - lo


def _patch_axes(vol: Volume, size: int) -> list[int]:
    """The volume's slice axes whose in-plane extent holds a ``size`` x ``size`` patch; all
    of them (zero-padded by :func:`_crop`) when none does: the in-plane axes of a thick-slice
    scan with fewer slices than the patch is wide."""
    fits = [a for a in vol.axes if min(np.delete(vol.array.shape, 2 - a)) >= size]
    return fits or list(vol.axes)


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


def _smooth_field(shape: tuple[int, ...], nodes: int, amplitude: float, rng) -> np.ndarray:
    """A smooth random field of ``shape``: uniform values in +-``amplitude`` on a coarse grid of
    ``nodes`` per axis, trilinearly upsampled (cheap, and smooth at the patch's scale)."""
    coarse = rng.uniform(-amplitude, amplitude, (nodes, nodes, nodes)).astype(np.float32)
    field = F.interpolate(
        torch.from_numpy(coarse)[None, None], size=shape, mode="trilinear", align_corners=True
    )
    return field[0, 0].numpy()


def bias_field(hr: np.ndarray, strength: float, rng) -> np.ndarray:
    """Multiply the HR by a smooth positive field exp(b), b within +-a with a drawn from
    [0, ``strength``] (receive-coil shading): the model should not take slow intensity changes
    for structure. Applied before the acquisition, so LR and target share it."""
    field = _smooth_field(hr.shape, 3, float(rng.uniform(0, strength)), rng)
    return (hr * np.exp(field)).astype(np.float32)


def contrast_map(hr: np.ndarray, rng, segments: int = 4) -> np.ndarray:
    """A random piecewise-linear, increasing intensity map over [0, max]: each of ``segments``
    equal intensity ranges gets its own slope (a gamma per tissue range, as between sequences
    and scanners), rescaled to keep the maximum; negative values are left as they are."""
    top = float(max(hr.max(), 1e-6))
    xs = np.linspace(0.0, top, segments + 1)
    slopes = np.exp(rng.uniform(np.log(0.6), np.log(1.6), segments))
    ys = np.concatenate([[0.0], np.cumsum(slopes * np.diff(xs))])
    ys *= top / ys[-1]
    return np.where(hr > 0, np.interp(hr, xs, ys), hr).astype(np.float32)


def elastic(arrays: tuple[np.ndarray, ...], strength: float, rng) -> tuple[np.ndarray, ...]:
    """The same small smooth deformation of all ``arrays`` (same shape; HR first, then masks):
    displacements up to a drawn fraction of ``strength`` HR voxels per axis on a coarse grid,
    trilinearly upsampled; one linear resampling of all arrays together, masks (bool)
    thresholded at 1/2. Anatomy differs in shape between subjects more than a few training
    volumes can show."""
    shape = arrays[0].shape
    amp = float(rng.uniform(0, strength))
    coarse = rng.uniform(-amp, amp, (3, 4, 4, 4)).astype(np.float32)  # (z, y, x) in voxels
    disp = F.interpolate(
        torch.from_numpy(coarse)[None], size=shape, mode="trilinear", align_corners=True
    )[0]
    # grid_sample wants (x, y, z) in [-1, 1] (align_corners=True: -1 and 1 at the end voxels)
    units = torch.tensor([2 / max(n - 1, 1) for n in shape], dtype=torch.float32)
    disp = (disp * units[:, None, None, None]).flip(0).permute(1, 2, 3, 0)
    identity = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]])[None]
    grid = F.affine_grid(identity, [1, 1, *shape], align_corners=True) + disp[None]
    stack = np.stack([np.asarray(a, dtype=np.float32) for a in arrays])
    warped = F.grid_sample(
        torch.from_numpy(stack)[None], grid, padding_mode="border", align_corners=True
    )[0].numpy()
    return tuple(w > 0.5 if a.dtype == bool else w.astype(a.dtype) for w, a in zip(warped, arrays))


def rician_noise(lr: np.ndarray, sigma: float, rng) -> np.ndarray:
    """Magnitude of the LR plus complex Gaussian noise of std ``sigma`` per channel: the noise of
    magnitude MRI, which lifts a dark background to about 1.25 sigma (no zero mean to learn)."""
    real = lr + rng.normal(0, sigma, lr.shape)
    imag = rng.normal(0, sigma, lr.shape)
    return np.sqrt(real**2 + imag**2).astype(np.float32)


def _choose_volume(volumes: list[Volume], rng) -> Volume:
    """A volume drawn by its weight (uniform, with the historic draw, when all are equal)."""
    w = np.array([v.weight for v in volumes], dtype=np.float64)
    if np.all(w == w[0]):
        return volumes[int(rng.integers(len(volumes)))]
    return volumes[int(rng.choice(len(volumes), p=w / w.sum()))]


def sample_patch(
    volumes: list[Volume], spec: PatchSpec, acq: Acquisition, rng: np.random.Generator
) -> dict[str, torch.Tensor]:
    """One LR patch (1, S, P, P) acquired as ``acq`` says, with ``spec.queries`` random
    thin-slice queries, their targets and the acquisition rows (1 / r, relative thickness):
    "taught", the thickness a teacher is told (the native slices' thickness combined with
    ``acq``'s, then label noise), and "acquisition", the one the trained model is shown (the
    same, or misread: :meth:`AcquisitionSampler.shown`)."""
    vol = _choose_volume(volumes, rng)
    axis = int(rng.choice(_patch_axes(vol, spec.size)))
    n_hr = slice_count(spec.lr_slices, acq.factor)
    padded, gate, valid, lead = _crop(vol, axis, spec, n_hr, margin(acq), rng)
    masks = (gate,) if valid is None else (gate, valid)
    padded, *masks = _augment((padded, *masks), rng)
    if spec.elastic > 0:  # masks cover the patch proper: warp them on the HR's grid
        full = [np.zeros(padded.shape, bool) for _ in masks]
        for f, m in zip(full, masks):
            f[lead : lead + len(m)] = m
        padded, *full = elastic((padded, *full), spec.elastic, rng)
        masks = [f[lead : lead + len(m)] for f, m in zip(full, masks)]
    gate, valid = masks[0], (masks[1] if len(masks) > 1 else None)
    padded = _intensity(padded, spec, rng)
    if spec.contrast > 0 and rng.random() < spec.contrast:
        padded = contrast_map(padded, rng)
    if spec.bias > 0:
        padded = bias_field(padded, spec.bias, rng)
    n_lr = lr_count(min(n_hr, padded.shape[0] - lead), acq.factor)
    lr = acquire(padded, acq, n_lr, start=lead, scales=slice_scales(acq, n_lr, rng))
    if spec.noise > 0:
        lr = lr + rng.normal(0, rng.uniform(0, spec.noise), lr.shape).astype(np.float32)
    if spec.rician > 0:
        lr = rician_noise(lr, float(rng.uniform(0, spec.rician)), rng)
    hr = padded[lead:]
    grid = slice_grid(n_lr, acq.factor, 1.0)
    n_hr = min(hr.shape[0], grid.n_hr)
    if valid is None:
        flat = rng.choice(n_hr * hr.shape[1] * hr.shape[2], size=spec.queries, replace=True)
    else:  # queries only on real voxels, not on the zero padding
        real = np.flatnonzero(valid[lead : lead + n_hr])
        flat = real[rng.choice(len(real), size=spec.queries, replace=True)]
    j, y, x = np.unravel_index(flat, (n_hr, hr.shape[1], hr.shape[2]))
    lower = grid.lower[j]
    t = grid.frac[j].astype(np.float32)
    sampler = spec.sampler
    told = sampler.told(acq.told(vol.native_width_along(axis)), rng)
    return {
        "lr": torch.from_numpy(lr[None].astype(np.float32)),
        "acquisition": torch.tensor(
            [1.0 / acq.factor, sampler.shown(told, rng)], dtype=torch.float32
        ),
        "taught": torch.tensor([1.0 / acq.factor, told], dtype=torch.float32),
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
    holds the query targets and the (B, 2) acquisition rows: "acquisition" for the trained
    model, "taught" for a distillation teacher."""
    n_s = min(it["lr"].shape[1] for it in items)
    lr = torch.stack([it["lr"][:, :n_s] for it in items])
    keep = [(it["s"] < n_s - 1) | ((it["s"] == n_s - 1) & (it["t"] == 0)) for it in items]
    b = torch.cat([torch.full((int(k.sum()),), i, dtype=torch.long) for i, k in enumerate(keep)])
    per_query = ("s", "y", "x", "t", "target", "gate")
    cat = {key: torch.cat([it[key][k] for it, k in zip(items, keep)]) for key in per_query}
    q = Queries(b=b, s=cat["s"], y=cat["y"], x=cat["x"], t=cat["t"])
    rows = {key: torch.stack([it[key] for it in items]) for key in ("acquisition", "taught")}
    return lr, q, {"target": cat["target"], "gate": cat["gate"], **rows}
