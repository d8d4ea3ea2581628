"""SAINRSlicer core: reduce MRI slice spacing with SA-INR (no Slicer, Qt or VTK imports).

The public API is imported lazily, so torch-free submodules (``sainr.geometry``,
``sainr.errors``, ``sainr.planning``, ``sainr.protocol``, ``sainr.request``) can be used without importing torch (the Slicer panel's geometry preview).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"
__all__ = [
    "ReduceOptions",
    "ReduceResult",
    "ReductionPlan",
    "SainrError",
    "Target",
    "__version__",
    "plan_reduction",
    "reduce_spacing",
]

_LAZY = {
    "ReduceOptions": ".request",
    "ReduceResult": ".api",
    "ReductionPlan": ".planning",
    "Target": ".request",
    "plan_reduction": ".planning",
    "reduce_spacing": ".api",
    "SainrError": ".errors",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
