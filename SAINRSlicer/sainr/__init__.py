"""SAINRSlicer core: reduce MRI slice spacing with SA-INR (no Slicer, Qt or VTK imports)."""

from .api import ReduceResult, plan_reduction, reduce_spacing
from .errors import SainrError

__version__ = "0.1.0"
__all__ = ["ReduceResult", "SainrError", "__version__", "plan_reduction", "reduce_spacing"]
