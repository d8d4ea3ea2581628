"""Which precision a run uses, and the float settings training and inference share: autocast
and the encoder's memory layout.

Light on purpose: training and adaptation import this, and it loads no backend (they live in
:mod:`.backends` and are imported only when inference runs) and no allocator tuning.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext

import torch

from .backends import REGISTRY, load_backend, registration
from .device import cpu_features

#: What ``--precision`` accepts: auto and every registered backend.
PRECISIONS = ("auto", *REGISTRY)

_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}

#: Inputs thinner than this train in fp32 on the CPU even where bf16 was asked for: oneDNN's
#: bf16 weight gradients of two-slice inputs come out NaN on AVX-512 BF16 CPUs without AMX
#: (AMD Zen 4), which turns every weight NaN after one step.
MIN_BF16_SLICES = 3

#: Channels per block of oneDNN's x86 CPU kernels (8 fp32 values fill an AVX2 register): a
#: width that is not a multiple costs about what the next multiple does.
CPU_CHANNEL_BLOCK = 8


def resolve_precision(device: torch.device, precision: str, training: bool = False) -> str:
    """'auto' = fp16 on CUDA; on the CPU :func:`cpu_auto` of its features; fp32 on other
    devices. Training (test-time adaptation) runs fp32 where inference would run an
    inference-only precision (int8). Explicit choices pass through once checked against the
    device (and, for inference, this torch build)."""
    if precision == "auto":
        return _auto(device, training)
    entry = registration(precision)
    if not entry.runs_on(device.type):
        usable = [name for name, r in REGISTRY.items() if r.runs_on(device.type)]
        places = " or ".join(d.upper() for d in entry.devices or ())
        raise ValueError(
            f"{precision} runs on the {places} only; use auto, {', '.join(usable)} on this device"
        )
    if training:
        return precision if entry.trains else "fp32"
    if not load_backend(precision).available():
        raise ValueError(f"this PyTorch build cannot run {precision}; use auto or fp32")
    return precision


def cpu_auto(features: Mapping[str, object], training: bool, int8_available: bool) -> str:
    """The precision 'auto' stands for on a CPU with these :func:`~.device.cpu_features`.

    AMX tiles make bf16 the fastest (docs/benchmark.md). AVX-512 BF16 dot products without AMX
    (AMD Zen 4, Intel Cooper Lake) do half the multiply-adds per instruction of the VNNI int8
    ones the same CPUs have, so inference runs int8 there too, as on every other x86 CPU;
    training needs gradients, so it takes bf16 where there is bf16 hardware, else fp32. fp32
    where this torch build lacks the int8 kernels."""
    if features.get("amx"):
        return "bf16"
    if training or not int8_available:
        return "bf16" if features.get("avx512_bf16") else "fp32"
    return "int8"


def training_precision(
    device: torch.device,
    precision: str,
    slices: int,
    features: Mapping[str, object] | None = None,
) -> tuple[str, str]:
    """The float precision to train (or adapt) with on inputs ``slices`` thick, and why it is
    not ``precision`` ("" when it is). bf16 on the CPU falls back to fp32 where the CPU
    (:func:`~.device.cpu_features`, or ``features``) has no bf16 units, since emulated bf16
    runs far slower than fp32 (docs/benchmark.md), and below :data:`MIN_BF16_SLICES`."""
    if precision != "bf16" or device.type != "cpu":
        return precision, ""
    found = cpu_features() if features is None else features
    if not (found.get("amx") or found.get("avx512_bf16")):
        return "fp32", "this CPU has no bf16 units, and emulated bf16 is far slower"
    if slices < MIN_BF16_SLICES:
        return "fp32", (
            f"patches of fewer than {MIN_BF16_SLICES} slices get NaN bf16 weight gradients "
            "on some CPUs"
        )
    return precision, ""


def _auto(device: torch.device, training: bool) -> str:
    """The precision 'auto' stands for on ``device`` (see :func:`resolve_precision`)."""
    if device.type == "cuda":
        return "fp16"
    if device.type != "cpu":
        return "fp32"
    return cpu_auto(cpu_features(), training, load_backend("int8").available())


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """Autocast for the encoder and the MLP at a resolved float ``precision`` (fp32 = none);
    attention, softmax and outputs stay fp32. Inference, training and adaptation share it."""
    dtype = _AUTOCAST.get(precision)
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def memory_format(device: torch.device, precision: str) -> torch.memory_format:
    """Channels-last 3D on the CPU at every precision and on CUDA at reduced precision: oneDNN
    and cuDNN run those 3D convolutions faster (fp32 on the CPU too, docs/benchmark.md), and
    the flattened (N, C) feature table becomes a view. CUDA fp32 keeps the default layout,
    where channels-last was never measured."""
    if device.type == "cuda" and precision == "fp32":
        return torch.contiguous_format
    return torch.channels_last_3d


def unblocked_widths(widths: Mapping[str, int]) -> str | None:
    """A note naming the ``widths`` (name -> channels or units) that are not a multiple of
    :data:`CPU_CHANNEL_BLOCK`, None when all are: a model cut to such a width runs on the
    CPU nearly as slowly as the next multiple (measured for the fast_slim and distil_pruned
    cuts, docs/training/distil.md), so it buys less speed than its size suggests."""
    odd = [f"{name} {n}" for name, n in widths.items() if n % CPU_CHANNEL_BLOCK]
    if not odd:
        return None
    return (
        f"{', '.join(odd)}: not a multiple of {CPU_CHANNEL_BLOCK}; the CPU kernels compute "
        "such widths as the next multiple, so they run slower than their size suggests"
    )
