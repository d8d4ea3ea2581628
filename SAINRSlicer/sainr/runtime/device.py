"""Which device runs a model, and what the CPU offers: the facts precision selection
(:mod:`.precision`) reads. Light: no backend and no allocator tuning comes with it."""

from __future__ import annotations

import torch

from ..errors import DeviceError


def choose_device(name: str = "auto") -> torch.device:
    """'auto' = CUDA when usable, else CPU; an explicit unavailable device is an error."""
    name = name.lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError("CUDA was requested but no usable GPU is visible; use --device cpu")
        try:
            device = torch.device(name)
        except RuntimeError as exc:
            raise DeviceError(f"unknown device {name!r}; use cuda or cuda:N") from exc
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"{name} was requested but only {torch.cuda.device_count()} GPU(s) are visible"
            )
        return device
    if name == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise DeviceError("MPS was requested but is not available; use --device cpu")
        return torch.device("mps")
    raise DeviceError(f"unknown device {name!r}; use auto, cpu, cuda or mps")


def cpu_features() -> dict[str, str | bool]:
    """What decides the CPU precision and its int8 codes: torch's vector ISA level, the bf16
    units and VNNI (AVX-512 or AVX int8 dot products)."""
    return {
        "isa": torch.backends.cpu.get_cpu_capability(),
        "amx": _cpu_probe("_is_amx_tile_supported"),
        "avx512_bf16": _cpu_probe("_is_avx512_bf16_supported"),
        "vnni": _cpu_probe("_is_vnni_supported"),
    }


def _cpu_probe(name: str) -> bool:
    """A ``torch.cpu`` feature probe; False where this torch build lacks it."""
    probe = getattr(torch.cpu, name, None)
    return bool(probe and probe())
