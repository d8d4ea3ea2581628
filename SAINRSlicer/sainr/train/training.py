"""Supervised SA-INR training: patches acquired with slice profiles, L1 + gating loss, DDP-ready.

Loss per batch: L1(pred, HR) + gamma * BCE(sigmoid(logit), G) + (theta - mean(M))^2, with G the
top-20 % gradient target and M the straight-through mask; gamma halves 40 times over the run
(the paper's "every 50 of 2000 epochs"). With a ``teacher`` (distillation), plus
distil * L1(pred, teacher's value) on the same queries of the same patch, the teacher frozen
and evaluated per batch. Adam with step decay at fixed fractions of the run or
a cosine schedule, both defined on the planned total ``steps``, so a run split over sessions
(``--max-minutes``, then the same command again) follows one schedule.

Runs on one CPU, one GPU, or many via ``torchrun`` (DistributedDataParallel + DistributedSampler;
gloo on CPU, NCCL on CUDA). Rank 0 writes ``last.pt`` every few minutes and at the end, the
best-by-validation ``best.pt``, ``history.csv`` and ``history.png``. Restarting the same command
resumes from ``last.pt`` with the same model, optimizer, scheduler, step and data stream.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Subset
from torch.utils.data.distributed import DistributedSampler

from ..acquisition import Acquisition, acquire, lr_count
from ..evaluation.baselines import bspline_interpolate, linear_interpolate
from ..evaluation.metrics import psnr
from ..geometry import slice_grid
from ..io.files import sha256, write_atomically
from ..model import SAINR, ModelConfig, QueryOutput
from ..runtime.inference import Plan, super_resolve
from ..runtime.precision import autocast, memory_format, training_precision, unblocked_widths
from ..runtime.weights import load_model, resolve, save_checkpoint
from .data import PatchDataset, PatchSpec, Volume, collate, load_volume
from .prune import narrowed


@dataclass
class TrainConfig:
    """Everything that defines a run; stored in every checkpoint."""

    # {"path", "crop"?, "axes"?, "weight"?, "slice_thickness"?}: see load_volumes
    data: list[dict[str, Any]] = field(default_factory=list)
    val: list[dict[str, Any]] = field(default_factory=list)
    model: dict[str, Any] = field(default_factory=dict)
    patch: dict[str, Any] = field(default_factory=dict)
    steps: int = 20000
    batch: int = 2
    lr: float = 3e-4
    schedule: str = "step"  # step (decay at milestones) | cosine (warm-up, then to lr_floor)
    milestones: tuple[float, ...] = (0.5, 0.75, 0.9)
    lr_decay: float = 0.5
    warmup: int = 200
    lr_floor: float = 0.02  # cosine ends at lr x lr_floor
    in_plane_axes: bool = False  # also use the in-plane axes of anisotropic volumes
    theta: float = 0.2
    gamma: float = 1.0
    gamma_halvings: int = 40
    val_every: int = 500
    val_factors: tuple[float, ...] = (2, 3, 4)
    # validation acquisitions (thickness = spacing); "gaussian@1.25": the model told 1.25 x it
    val_profiles: tuple[str, ...] = ("none",)
    val_size: int = 96
    log_every: int = 50
    checkpoint_minutes: float = 3.0
    #: model name or checkpoint to warm-start from (a wider one: its strongest channels)
    init: str = ""
    #: residual blocks of ``init`` the model keeps, in order (a shallower cut); empty: all
    init_blocks: tuple[int, ...] = ()
    # distillation: a shipped model name or checkpoint whose values on the same queries the
    # student also learns, with weight ``distil``; validation also reports the teacher's PSNR
    teacher: str = ""
    distil: float = 0.0
    ema: float = 0.0  # decay per step of the weights' moving average (validated, exported); 0: off
    seed: int = 0
    amp: str = "none"  # none | bf16 | fp16 (CUDA)
    # patch-making processes: items are seeded by their index, so the stream (and an exact
    # resume) does not depend on it; on a GPU the augmentations would otherwise starve it
    workers: int = 0

    @classmethod
    def load(cls, path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
        """TOML file (optional) plus ``key=value`` overrides (``model.channels=32``)."""
        raw: dict[str, Any] = tomllib.loads(Path(path).read_text(encoding="utf-8")) if path else {}
        for item in overrides:
            key, _, value = item.partition("=")
            target = raw
            *parents, leaf = key.strip().split(".")
            for p in parents:
                target = target.setdefault(p, {})
            target[leaf] = json.loads(value) if value[:1] in "[{0123456789-tf" else value
        known = {f.name for f in fields(cls)}
        if set(raw) - known:
            raise ValueError(f"unknown training config keys: {sorted(set(raw) - known)}")
        cfg = cls(**raw)
        PatchSpec(**cfg.patch).sampler  # noqa: B018 (checks profiles, weights, factors)
        for name in cfg.val_profiles:
            _val_profile(name)
        if not cfg.data:
            raise ValueError("no training volumes: give at least one [[data]] entry")
        for entry in cfg.data + cfg.val:
            unknown = set(entry) - _ENTRY_KEYS
            if unknown:
                raise ValueError(f"unknown keys {sorted(unknown)} in data entry {entry}")
            if "path" not in entry:
                raise ValueError(f"data entry {entry} has no path")
        blocks = ModelConfig.from_dict(cfg.model).blocks
        if cfg.init_blocks and (not cfg.init or len(cfg.init_blocks) != blocks):
            raise ValueError(
                f"init_blocks {list(cfg.init_blocks)} needs an init model and {blocks} entries "
                "(the model's blocks)"
            )
        if cfg.schedule not in ("step", "cosine"):
            raise ValueError(f"schedule must be step or cosine, got {cfg.schedule!r}")
        if not (math.isfinite(cfg.distil) and cfg.distil >= 0):
            raise ValueError(f"distil must be a weight >= 0, got {cfg.distil!r}")
        if cfg.distil and not cfg.teacher:
            raise ValueError("distil > 0 needs a teacher (a shipped model name or checkpoint)")
        return cfg

    def missing_volumes(self, data_root: str | Path) -> list[Path]:
        """The ``[[data]]`` / ``[[val]]`` files that are not under ``data_root``, checked before
        a run starts so that a wrong root is a one-line error, not a failure minutes in."""
        paths = [Path(data_root) / entry["path"] for entry in self.data + self.val]
        return [p for p in paths if not p.is_file()]

    def lr_factor(self, step: int) -> float:
        """Learning-rate multiplier at ``step`` of the whole planned run (``steps``), so a run
        split over sessions follows one schedule."""
        if self.schedule == "step":
            return self.lr_decay ** sum(step >= int(f * self.steps) for f in self.milestones)
        if step < self.warmup:
            return (step + 1) / self.warmup
        done = min((step - self.warmup) / max(self.steps - self.warmup, 1), 1.0)
        return self.lr_floor + (1 - self.lr_floor) * 0.5 * (1 + math.cos(math.pi * done))


def sainr_loss(
    res: QueryOutput,
    target: torch.Tensor,
    gate: torch.Tensor,
    gated: bool,
    gamma: float,
    theta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, L1 part) of a batch of query outputs against HR targets: L1 + gamma * BCE(logit,
    gradient target) + (theta - mean mask)^2, the gate terms only for a ``gated`` model.
    Shared by training and per-volume adaptation so that both optimise the same objective."""
    l1 = (res.value.float() - target).abs().mean()
    loss = l1
    if gated:
        bce = torch.nn.functional.binary_cross_entropy_with_logits(res.mask_logit.float(), gate)
        loss = loss + gamma * bce + (theta - res.mask.float().mean()) ** 2
    return loss, l1


def warm_start(model: SAINR, source: SAINR) -> None:
    """Copy ``source``'s weights into ``model`` of the same architecture, where ``model`` may
    have more decoder inputs (conditioning): their weights start at zero, so the warm-started
    model first predicts exactly what ``source`` does and training adds what the new inputs
    explain. Modules that ``model`` switched off (``lasa`` or ``gating`` false: the LASA
    ablation) are left out of the copy; the rest then computes exactly what ``source`` does
    for the queries its gate sends around the attention."""
    target = model.state_dict()
    for key, value in source.state_dict().items():
        if getattr(model, key.split(".")[0], True) is None:  # attention or gate switched off
            continue
        have = target.get(key)
        if have is None:
            raise ValueError(f"cannot warm-start: {key} has no counterpart in the new model")
        grown_inputs = (
            value.ndim == 2 and have.shape[0] == value.shape[0] and have.shape[1] > value.shape[1]
        )
        if have.shape != value.shape and not grown_inputs:
            raise ValueError(
                f"cannot warm-start: {key} is {tuple(value.shape)}, "
                f"the new model needs {tuple(have.shape)}"
            )
        have.zero_()
        have[tuple(slice(0, n) for n in value.shape)] = value
    missing = set(target) - set(source.state_dict())
    if missing:
        raise ValueError(f"cannot warm-start: the source has no {sorted(missing)}")
    model.load_state_dict(target)


_ENTRY_KEYS = {"path", "crop", "axes", "weight", "slice_thickness"}


def load_volumes(entries: list[dict[str, Any]], root: Path, in_plane: bool = False) -> list[Volume]:
    """Load ``[[data]]`` / ``[[val]]`` entries: ``path`` (relative to ``root``), ``crop`` (array
    ranges k, j, i), ``axes`` (all | native | in-plane | index axes; default from ``in_plane``),
    ``weight`` (sampling weight) and ``slice_thickness`` (native slices, mm; default spacing)."""
    out = []
    for e in entries:
        crop = tuple(slice(*c) if c else slice(None) for c in e["crop"]) if e.get("crop") else None
        out.append(
            load_volume(
                root / e["path"],
                crop,
                in_plane,
                axes=e.get("axes"),
                weight=float(e.get("weight", 1.0)),
                slice_thickness=e.get("slice_thickness"),
            )
        )
    return out


def _val_profile(name: str) -> tuple[str, float]:
    """("gaussian", 1.25) for ``"gaussian@1.25"`` (the model told 1.25 x the true thickness,
    to track how much a wrong value costs); ("box", 1.0) for ``"box"``."""
    profile, _, told = name.partition("@")
    Acquisition(2.0, 1.0, profile)  # checks the profile name
    error = float(told) if told else 1.0
    if not (math.isfinite(error) and error > 0):
        raise ValueError(f"bad told-thickness factor in validation profile {name!r}")
    return profile, error


def moving_average(model: SAINR, decay: float, ckpt: dict[str, Any] | None) -> AveragedModel | None:
    """Exponential moving average of ``model``'s weights (``decay`` per step; None for 0),
    resumed from ``ckpt`` when it holds one, else starting from the current weights. At a
    high learning rate single steps scatter the held-out PSNR (docs/training/thick.md);
    validation and export (:func:`sainr.runtime.weights.build_model`) use the average."""
    if not decay:
        return None
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    if ckpt is not None and "ema_state_dict" in ckpt:
        ema.module.load_state_dict(ckpt["ema_state_dict"])
        ema.n_averaged.fill_(ckpt["ema_updates"])
    return ema


def load_teacher(
    name: str, device: torch.device, layout: torch.memory_format
) -> tuple[SAINR | None, dict[str, str]]:
    """The distillation teacher ``name`` (a shipped model, checksum-verified, or a checkpoint
    file; its weight average where it kept one), frozen in eval mode on ``device``, and its
    record {"name", "sha256"} for the student's checkpoints; (None, {}) without one. In eval
    mode its gate is deterministic and draws no random numbers, so the student's random
    stream (and an exact resume) is the same with and without a teacher."""
    if not name:
        return None, {}
    teacher = load_model(name).to(device)
    teacher.requires_grad_(False)
    teacher.encoder.to(memory_format=layout)
    return teacher, {"name": name, "sha256": sha256(resolve(name)[0])}


def check_same_teacher(ckpt: dict[str, Any], record: dict[str, str]) -> None:
    """Refuse to resume a run with another teacher than the one its checkpoint was distilled
    from (e.g. a teacher checkpoint that went on training since): one run, one target."""
    before = ckpt.get("meta", {}).get("teacher") or {}
    if before.get("sha256") != record.get("sha256"):
        raise ValueError(
            f"this run was distilled from {before.get('name') or 'no teacher'} "
            f"(SHA-256 {before.get('sha256', '-')[:12]}), the config names "
            f"{record.get('name') or 'no teacher'} (SHA-256 {record.get('sha256', '-')[:12]}); "
            "give the same teacher file, or start a new run in another folder"
        )


def batch_loss(
    net: torch.nn.Module,
    batch: tuple,
    teacher: SAINR | None,
    cfg: TrainConfig,
    gamma: float,
    device: torch.device,
    precision: str,
) -> tuple[torch.Tensor, dict[str, float]]:
    """(loss, its parts) of one batch (LR, queries, targets, on ``device``): :func:`sainr_loss`
    plus, with a ``teacher`` and ``distil`` > 0, distil x L1 between the student's and the
    teacher's values on the same queries, the teacher told the same acquisition (slice
    thickness included; when the student is shown a misread thickness, the teacher is told
    the unmisread one). Only the values are matched: the student's gate keeps the gradient
    target the teacher's gate was trained on, and attends where its own smaller attention needs
    it. Parts: "l1" (to HR), "mask" (attended fraction), "distil" (to the teacher; 0 without)."""
    lr_batch, q, tgt = batch
    acquisition = tgt["acquisition"]
    with autocast(device, precision):
        res = net(lr_batch, q, acquisition)
    gated = getattr(net, "module", net).gate is not None
    loss, l1 = sainr_loss(res, tgt["target"], tgt["gate"], gated, gamma, cfg.theta)
    distil = torch.zeros(())
    if teacher is not None and cfg.distil:
        with torch.no_grad(), autocast(device, precision):
            taught = teacher(lr_batch, q, tgt["taught"]).value.float()
        distil = (res.value.float() - taught).abs().mean()
        loss = loss + cfg.distil * distil
    parts = {"l1": l1.item(), "mask": res.mask.float().mean().item(), "distil": distil.item()}
    return loss, parts


def teacher_columns(
    scores: dict[str, float], teacher: dict[str, float], profiles: tuple[str, ...], factors
) -> dict[str, float]:
    """History columns that compare a validation with the teacher's on the same rows: the
    teacher's PSNR per row (``teacher_<row>``), the mean student - teacher PSNR per profile
    (``teacher_gap_<profile>``) and over all rows (``teacher_gap``); {} without a teacher."""
    if not teacher:
        return {}
    out = {f"teacher_{k[5:]}": v for k, v in teacher.items() if k.startswith("psnr_")}
    for profile in profiles:
        keys = [f"psnr_{_score_key(profile, f)}" for f in factors]
        out[f"teacher_gap_{profile}"] = float(np.mean([scores[k] - teacher[k] for k in keys]))
    gaps = [scores[k] - v for k, v in teacher.items() if k.startswith("psnr_")]
    out["teacher_gap"] = float(np.mean(gaps))
    return out


def validate(
    model: SAINR,
    volumes: list[Volume],
    factors,
    size: int,
    precision: str = "fp32",
    profiles: tuple[str, ...] = ("none",),
) -> dict[str, float]:
    """PSNR of SA-INR, linear and B-spline interpolation on centre crops along the native slice
    axis, acquired with each profile (thickness = spacing; decimation for "none") and the model
    told that thickness (with the native slices' own, :meth:`Acquisition.told`) or, for
    ``"profile@e"``, e times it; mean over volumes per profile and factor, the mean gain over
    the better interpolator per profile (``gain_<profile>``) and over all (``gain``)."""
    model.eval()
    scores: dict[str, list[float]] = {}
    device = next(model.parameters()).device
    for vol in volumes:
        hr = np.moveaxis(vol.array, 2 - vol.axes[0], 0)
        cy, cx = (max((n - size) // 2, 0) for n in hr.shape[1:])
        hr = hr[:, cy : cy + size, cx : cx + size]
        for name, k in ((p, k) for p in profiles for k in factors):
            profile, error = _val_profile(name)
            acq = Acquisition(float(k), 1.0, profile)
            lr = acquire(hr, acq, lr_count(hr.shape[0], acq.factor))
            grid = slice_grid(lr.shape[0], acq.factor, 1.0)
            truth = hr[: grid.n_hr]
            pred, _ = super_resolve(
                model,
                lr,
                grid,
                device,
                precision=precision,
                tile_plan=Plan(size, 0, 1 << 16),
                thickness=acq.told(vol.native_width_along(vol.axes[0])) * error,
            )
            key = _score_key(name, k)
            scores.setdefault(f"psnr_{key}", []).append(psnr(pred, truth))
            scores.setdefault(f"linear_{key}", []).append(psnr(linear_interpolate(lr, grid), truth))
            scores.setdefault(f"bspline_{key}", []).append(
                psnr(bspline_interpolate(lr, grid), truth)
            )
    model.train()
    out = {k: float(np.mean(v)) for k, v in scores.items()}
    for profile in profiles:
        gains = [
            out[f"psnr_{k}"] - max(out[f"linear_{k}"], out[f"bspline_{k}"])
            for k in (_score_key(profile, f) for f in factors)
        ]
        out[f"gain_{profile}"] = float(np.mean(gains))
    out["gain"] = float(np.mean([out[f"gain_{p}"] for p in profiles]))
    return out


def _score_key(profile: str, factor: float) -> str:
    """Validation column suffix: ``x3`` for decimation (the historic name), ``x3_gaussian``."""
    return f"x{factor:g}" if profile == "none" else f"x{factor:g}_{profile}"


def _dist_setup() -> tuple[int, int, torch.device]:
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    rank = dist.get_rank()
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return rank, dist.get_world_size(), torch.device("cuda", local)
    return rank, dist.get_world_size(), torch.device("cpu")


#: Learning-curve colours per validation profile (factors get lighter to darker).
_PROFILE_COLOURS = {
    "none": "tab:blue",
    "gaussian": "tab:red",
    "box": "tab:green",
    "sinc": "tab:purple",
}


def _best_interpolator(row: dict[str, Any], key: str) -> float:
    """The better of linear and B-spline in a history row (linear only in older runs)."""
    values = [float(row[f"{m}_{key}"]) for m in ("linear", "bspline") if row.get(f"{m}_{key}")]
    return max(values)


class History:
    """history.csv (one row per validation) and its PNG plot."""

    def __init__(self, out: Path) -> None:
        self.path, self.rows = out / "history.csv", []
        if self.path.is_file():
            with open(self.path, encoding="utf-8") as fh:
                self.rows = [dict(r) for r in csv.DictReader(fh)]

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        write_atomically(self.path, self._write_csv, ".csv")  # a kill never loses the history
        self.plot()

    def _write_csv(self, path: str) -> None:
        keys = list(dict.fromkeys(k for r in self.rows for k in r))
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, keys)
            writer.writeheader()
            writer.writerows(self.rows)

    def plot(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [int(r["step"]) for r in self.rows]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for key in self.rows[-1]:
            if key.startswith("psnr_x"):
                gain = [float(r[key]) - _best_interpolator(r, key[5:]) for r in self.rows]
                profile = key.partition("_")[2].partition("_")[2] or "none"
                ax.plot(
                    steps,
                    gain,
                    marker="o",
                    ms=3,
                    color=_PROFILE_COLOURS.get(profile.partition("@")[0]),
                    ls="--" if "@" in profile else "-",
                    alpha=0.35 + 0.15 * int(key[6]),
                    label=f"×{key[6:]}",
                )
        ax.axhline(0, color="gray", lw=0.8)
        ax.set_xlabel("training step")
        ax.set_ylabel("PSNR gain over interpolation (dB)")
        ax.set_title("held-out validation")
        ax.legend(fontsize=7, ncol=3)
        fig.tight_layout()
        fig.savefig(self.path.with_suffix(".png"), dpi=100)
        plt.close(fig)


def train(
    cfg: TrainConfig,
    out_dir: str | Path,
    data_root: str | Path = ".",
    max_minutes: float | None = None,
    log=print,
) -> dict[str, Any]:
    """Train (or resume) into ``out_dir``; returns the last validation scores."""
    rank, world, device = _dist_setup()
    out, root = Path(out_dir), Path(data_root)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = SAINR(ModelConfig.from_dict(cfg.model)).to(device)
    spec = PatchSpec(**cfg.patch)
    asked = "fp32" if cfg.amp == "none" else cfg.amp
    precision, why = training_precision(device, asked, spec.lr_slices)
    if why:
        log(f"training in {precision}, not {asked}: {why}")
    widths = unblocked_widths({"channels": model.config.channels, "hidden": model.config.hidden})
    if widths:
        log(f"model widths {widths}")
    layout = memory_format(device, precision)
    model.encoder.to(memory_format=layout)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda n: cfg.lr_factor(n))
    step, elapsed, best, rng_state = 0, 0.0, -math.inf, None
    last = out / "last.pt"
    ckpt: dict[str, Any] | None = None
    teacher, teacher_record = load_teacher(cfg.teacher, device, layout)
    if last.is_file():
        ckpt = torch.load(last, map_location=device, weights_only=True)
        check_same_teacher(ckpt, teacher_record)
        model.load_state_dict(ckpt["state_dict"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])  # the schedule itself comes from cfg
        step, elapsed, best = ckpt["step"], ckpt["elapsed"], ckpt["best"]
        rng_state = ckpt.get("rng")
        log(f"resumed from {last} at step {step}")
    elif cfg.init:
        source = load_model(cfg.init)
        widths = model.config.channels, model.config.hidden
        blocks = list(cfg.init_blocks) or None
        if (source.config.channels, source.config.hidden) != widths or blocks:
            source = narrowed(source, *widths, blocks)  # a student cut from its teacher
        warm_start(model, source.to(device))
        kept = f", blocks {blocks}" if blocks else ""
        log(f"started from {cfg.init} ({widths[0]} channels, {widths[1]} decoder units{kept})")
    ema = moving_average(model, cfg.ema, ckpt)
    train_vols = load_volumes(cfg.data, root, cfg.in_plane_axes)
    val_vols = load_volumes(cfg.val, root) if rank == 0 else []
    dataset = PatchDataset(
        train_vols, spec, cfg.steps * cfg.batch * world, cfg.batch * world, cfg.seed
    )
    remaining = Subset(dataset, range(step * cfg.batch * world, len(dataset)))
    sampler = DistributedSampler(remaining, world, rank, shuffle=False) if world > 1 else None
    loader = DataLoader(
        remaining, cfg.batch, sampler=sampler, collate_fn=collate, num_workers=cfg.workers
    )
    net = DistributedDataParallel(model) if world > 1 else model
    history = History(out) if rank == 0 else None
    halving = max(cfg.steps // cfg.gamma_halvings, 1)
    # the thicknesses the model learns, so that a reduction refuses others (sainr.runtime.weights)
    state = {
        "config": asdict(cfg),
        "thickness_range": spec.sampler.relative_range,
        "teacher": teacher_record,
    }

    def checkpoint(path: Path, **meta: Any) -> None:
        if rank == 0:
            averaged = {}
            if ema is not None:
                weights = ema.module.state_dict()
                averaged["ema_state_dict"] = {k: v.detach().cpu() for k, v in weights.items()}
                averaged["ema_updates"] = int(ema.n_averaged)
            save_checkpoint(
                model,
                path,
                meta={**state, **meta},
                optimizer=opt.state_dict(),
                scheduler=sched.state_dict(),
                step=step,
                elapsed=elapsed,
                best=best,
                rng=torch.get_rng_state(),
                **averaged,
            )

    scores: dict[str, float] = {}
    t0, last_save, running = time.time() - elapsed, time.time(), []
    started = time.time()
    model.train()

    def scored(net: SAINR) -> dict[str, float]:
        profiles = tuple(cfg.val_profiles)
        return validate(net, val_vols, cfg.val_factors, cfg.val_size, precision, profiles)

    taught: dict[str, float] = {}
    if rank == 0 and val_vols and teacher is not None:  # once per session: it never changes
        taught = scored(teacher)
        teacher.eval()  # validate() leaves a model in training mode
        log("  teacher " + "  ".join(f"{k} {v:.2f}" for k, v in taught.items()))

    def record() -> dict[str, float]:
        scores = scored(model if ema is None else ema.module)
        compared = teacher_columns(scores, taught, tuple(cfg.val_profiles), cfg.val_factors)
        history.add({"step": step, "minutes": round(elapsed / 60, 2), **scores, **compared})
        log("  val " + "  ".join(f"{k} {v:.2f}" for k, v in {**scores, **compared}.items()))
        return scores

    if rank == 0 and val_vols and step == 0:  # the starting point of the learning curve
        scores = record()
    batches = iter(loader)  # draws a loader seed from the global RNG: do it before restoring
    if rng_state is not None:  # gumbel noise of the gating mask continues where it stopped
        torch.set_rng_state(rng_state)
    for lr_batch, q, tgt in batches:
        lr_batch = lr_batch.to(device).contiguous(memory_format=layout)
        q = type(q)(*(getattr(q, f).to(device) for f in ("b", "s", "y", "x", "t")))
        tgt = {k: tgt[k].to(device) for k in ("target", "gate", "acquisition", "taught")}
        gamma = cfg.gamma * 0.5 ** (step // halving)
        loss, parts = batch_loss(net, (lr_batch, q, tgt), teacher, cfg, gamma, device, precision)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if ema is not None:
            ema.update_parameters(model)
        step += 1
        elapsed = time.time() - t0
        running.append((parts["l1"], parts["mask"], parts["distil"]))
        if rank == 0 and step % cfg.log_every == 0:
            l1m, mm, dm = np.mean(running, axis=0)
            taught_l1 = f"  distil {dm:.4f}" if cfg.distil else ""
            log(
                f"step {step}/{cfg.steps}  l1 {l1m:.4f}{taught_l1}  mask {mm:.3f}  "
                f"lr {sched.get_last_lr()[0]:.2e}  {elapsed / 60:.1f} min"
            )
            running = []
        if rank == 0 and val_vols and (step % cfg.val_every == 0 or step == cfg.steps):
            scores = record()
            if scores["gain"] > best:
                best = scores["gain"]
                checkpoint(out / "best.pt", val=scores)
        if time.time() - last_save > 60 * cfg.checkpoint_minutes:
            checkpoint(last)
            last_save = time.time()
        if max_minutes is not None and time.time() - started > 60 * max_minutes:
            log(f"time budget of {max_minutes} min reached at step {step}")
            break
    checkpoint(last)
    if world > 1:
        # tear down together: a rank that left while rank 0 still wrote the checkpoint
        # aborted in gloo's teardown ("terminate called without an active exception")
        dist.barrier()
        dist.destroy_process_group()
    return scores
