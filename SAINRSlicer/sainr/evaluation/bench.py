"""``sainr bench``: SA-INR speed and memory against SimpleITK interpolation, in one run.

For each volume the same thin-slice grid is produced three ways — SimpleITK linear, SimpleITK
B-spline and SA-INR (end to end: normalise, encode, attend, decode, de-normalise) — and the
wall times (each the best of the same number of runs), their ratios, the time per SA-INR
stage (from module hooks), the gated fraction, peak memory and the configuration (threads,
device, dtype, torch version) are printed as a table and written as JSON. Stage times of the
gated run are compared with the same model forced to attend every query, which is what
gating is meant to save.
"""

from __future__ import annotations

import platform
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import SimpleITK as sitk
import torch
from torch import nn

from ..api import reduce_spacing
from ..errors import SainrError
from ..io.resources import resource_path
from ..model import SAINR, gating_disabled
from ..model.decoder import MLPDecoder
from ..model.edsr import EDSR3d
from ..model.gating import GatingMask
from ..model.lasa import LASA
from ..planning import plan_grid
from ..request import ReduceOptions
from ..runtime.device import cpu_features
from ..runtime.precision import resolve_precision

SAMPLE = "knee_qdess_sag_3mm.nii.gz"


def sample_path() -> Path:
    """The bundled sample volume (:mod:`sainr.io.resources`)."""
    try:
        return resource_path(f"Sample/{SAMPLE}")
    except FileNotFoundError:
        raise SainrError(
            "the bundled sample volume was not found; pass volumes to benchmark"
        ) from None


def resize_in_plane(image: sitk.Image, axis: int, size: int) -> sitk.Image:
    """Resample the in-plane axes to ``size`` voxels over the same extent (B-spline),
    keeping the slices: a knee-sized test volume made from the shipped sample."""
    new_size, new_spacing = list(image.GetSize()), list(image.GetSpacing())
    for a in range(3):
        if a != axis:
            new_spacing[a] = image.GetSpacing()[a] * image.GetSize()[a] / size
            new_size[a] = size
    return sitk.Resample(
        image,
        new_size,
        sitk.Transform(),
        sitk.sitkBSpline,
        image.GetOrigin(),
        new_spacing,
        image.GetDirection(),
        0.0,
        image.GetPixelID(),
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: The top-level stages timed, by float module class. A backend's lowered twin of one (e.g.
#: :mod:`sainr.model.edsr_int8`) names the class it stands in for as ``lowers`` and is timed
#: as that stage.
STAGES: dict[str, type[nn.Module]] = {
    "encoder": EDSR3d,
    "gate": GatingMask,
    "lasa": LASA,
    "decoder": MLPDecoder,
}


def _stage(module: nn.Module) -> str | None:
    """The stage ``module`` runs, or None for any other module."""
    kind = getattr(type(module), "lowers", type(module))
    return next((name for name, cls in STAGES.items() if issubclass(kind, cls)), None)


@contextmanager
def stage_timer(device: torch.device):
    """Accumulate forward time per top-level stage (encoder, gate, lasa, decoder) of every
    model that runs inside the block; int8 calibration counts with its stage."""
    totals: dict[str, float] = defaultdict(float)
    starts: dict[int, float] = {}

    def pre(module: nn.Module, _inputs) -> None:
        if _stage(module) is not None:
            _sync(device)
            starts[id(module)] = time.perf_counter()

    def post(module: nn.Module, _inputs, _output) -> None:
        name = _stage(module)
        if name is not None:
            _sync(device)
            totals[name] += time.perf_counter() - starts.pop(id(module))

    handles = [
        nn.modules.module.register_module_forward_pre_hook(pre),
        nn.modules.module.register_module_forward_hook(post),
    ]
    try:
        yield totals
    finally:
        for h in handles:
            h.remove()


def time_sitk(image: sitk.Image, out_geom, interpolator: int, repeats: int) -> float:
    """Best-of-``repeats`` time of SimpleITK resampling onto the thin-slice grid."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        sitk.Resample(
            image,
            out_geom.size,
            sitk.Transform(),
            interpolator,
            out_geom.origin,
            out_geom.spacing,
            out_geom.direction,
            0.0,
            image.GetPixelID(),
        )
        best = min(best, time.perf_counter() - t0)
    return best


def time_sainr(image, spacing, model, device, budget_mb, precision) -> dict[str, float]:
    """End-to-end SA-INR time with per-stage split and gated fraction."""
    with stage_timer(device) as stages:
        _sync(device)
        t0 = time.perf_counter()
        options = ReduceOptions(device=str(device), memory_mb=budget_mb, precision=precision)
        result = reduce_spacing(image, spacing, options, model=model)
        _sync(device)
        total = time.perf_counter() - t0
    return {
        "total_s": total,
        **{f"{k}_s": v for k, v in stages.items()},
        "gated_fraction": result.info["gated_fraction"],
    }


def best_sainr(image, spacing, model, device, budget_mb, precision, repeats: int) -> dict:
    """:func:`time_sainr`'s fastest of ``repeats`` runs after a warm-up run (allocator,
    kernels): the estimator the SimpleITK timings use, so the ratio compares like with like
    on a machine with noisy neighbours. Every run's total is kept (``runs_s``)."""
    time_sainr(image, spacing, model, device, budget_mb, precision)
    runs = [time_sainr(image, spacing, model, device, budget_mb, precision) for _ in range(repeats)]
    return {**min(runs, key=lambda r: r["total_s"]), "runs_s": [r["total_s"] for r in runs]}


def bench_volume(
    name, image, spacing, model, device, budget_mb, precision, repeats, ungated: bool = True
) -> dict:
    """One row of the table; ``ungated`` also times the model with every query attended
    (minutes on a CPU: LASA on all queries)."""
    out_geom = plan_grid(image, spacing).output
    row = {
        "volume": name,
        "size": list(image.GetSize()),
        "spacing_in": list(image.GetSpacing()),
        "size_out": list(out_geom.size),
        "linear_s": time_sitk(image, out_geom, sitk.sitkLinear, repeats),
        "bspline_s": time_sitk(image, out_geom, sitk.sitkBSpline, repeats),
    }
    row["sainr"] = best_sainr(image, spacing, model, device, budget_mb, precision, repeats)
    if ungated and model.gate is not None:
        with gating_disabled(model):
            row["sainr_ungated"] = time_sainr(image, spacing, model, device, budget_mb, precision)
    row["ratio_bspline"] = row["sainr"]["total_s"] / row["bspline_s"]
    row["ratio_linear"] = row["sainr"]["total_s"] / row["linear_s"]
    row["peak_rss_mb"] = peak_rss_mb()
    if device.type == "cuda":
        row["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return row


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (``resource`` is Unix-only; on
    Windows the same number comes from the process' memory counters)."""
    try:
        import resource
    except ImportError:
        return _windows_peak_working_set() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _windows_peak_working_set() -> int:
    """PeakWorkingSetSize of this process, in bytes (GetProcessMemoryInfo, psapi)."""
    import ctypes
    from ctypes import wintypes

    class Counters(ctypes.Structure):
        _fields_ = [("cb", wintypes.DWORD), ("PageFaultCount", wintypes.DWORD)] + [
            (name, ctypes.c_size_t)
            for name in (
                "PeakWorkingSetSize",
                "WorkingSetSize",
                "QuotaPeakPagedPoolUsage",
                "QuotaPagedPoolUsage",
                "QuotaPeakNonPagedPoolUsage",
                "QuotaNonPagedPoolUsage",
                "PagefileUsage",
                "PeakPagefileUsage",
            )
        ]

    current = ctypes.windll.kernel32.GetCurrentProcess
    current.restype = wintypes.HANDLE
    query = ctypes.windll.psapi.GetProcessMemoryInfo
    query.argtypes = [wintypes.HANDLE, ctypes.POINTER(Counters), wintypes.DWORD]
    counters = Counters(cb=ctypes.sizeof(Counters))
    query(current(), ctypes.byref(counters), counters.cb)
    return counters.PeakWorkingSetSize


def configuration(model: SAINR, device: torch.device, weights: str, precision: str) -> dict:
    """What the timings depend on: software, threads, device, the CPU's features (they
    decide the precision ``auto`` picks) and the model."""
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "cpu_features": cpu_features(),
        "precision": resolve_precision(device, precision),
        "weights": weights,
        "model": model.config.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def describe_cpu(config: dict) -> str:
    """One line: the CPU, the features that decide the precision, and the precision chosen."""
    f = config["cpu_features"]
    yes = {True: "yes", False: "no"}
    return (
        f"cpu: {config['device_name']}; vector ISA {f['isa']}, AVX-512 BF16 {yes[f['avx512_bf16']]}, "
        f"AMX {yes[f['amx']]}, VNNI {yes[f['vnni']]} -> precision {config['precision']}"
    )


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo, else what ``platform`` knows)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def format_table(rows: list[dict]) -> str:
    head = (
        "| volume | size in → out | linear s | B-spline s | SA-INR s | ×B-spline | encoder s "
        "| LASA s | decoder s | gated | LASA s ungated | peak RSS MB |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        s, u = r["sainr"], r.get("sainr_ungated")
        ungated = f"{u['lasa_s']:.2f}" if u else "—"  # not timed (--no-ungated) or no gate
        lines.append(
            f"| {r['volume']} | {'×'.join(map(str, r['size']))} → {'×'.join(map(str, r['size_out']))} "
            f"| {r['linear_s']:.2f} | {r['bspline_s']:.2f} | {s['total_s']:.2f} | {r['ratio_bspline']:.1f} "
            f"| {s.get('encoder_s', 0):.2f} | {s.get('lasa_s', 0):.2f} | {s.get('decoder_s', 0):.2f} "
            f"| {100 * s['gated_fraction']:.0f} % | {ungated} "
            f"| {r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)
