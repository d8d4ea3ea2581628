"""Inference backends, one per precision, behind one interface (:mod:`.base`).

Each backend module has a ``backend(precision) -> Backend`` function and is imported only when
its precision runs: training and adaptation resolve a precision from :data:`REGISTRY` but never
load a backend. Adding a precision is one module in this package and one line in
:data:`REGISTRY`.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Backend


@dataclass(frozen=True)
class Registration:
    """Where a precision's backend lives and what it can do, known without importing it."""

    #: module of this package whose ``backend(precision)`` runs the precision
    module: str
    #: device types it runs on (None: every device)
    devices: tuple[str, ...] | None = None
    #: whether a model can be trained in it; training asked for an inference-only precision
    #: runs fp32
    trains: bool = True

    def runs_on(self, device_type: str) -> bool:
        return self.devices is None or device_type in self.devices


#: precision name -> its backend
REGISTRY: dict[str, Registration] = {
    "fp32": Registration("floating"),
    "bf16": Registration("floating"),
    "fp16": Registration("floating"),
    "int8": Registration("int8", devices=("cpu",), trains=False),
}


def registration(precision: str) -> Registration:
    """The registration of ``precision``; a ValueError naming the known ones otherwise."""
    try:
        return REGISTRY[precision]
    except KeyError:
        known = ", ".join(REGISTRY)
        raise ValueError(f"unknown precision {precision!r}; use auto or one of {known}") from None


def load_backend(precision: str) -> Backend:
    """The backend that runs ``precision`` (its module is imported on first use)."""
    module = import_module(f"{__name__}.{registration(precision).module}")
    return module.backend(precision)
