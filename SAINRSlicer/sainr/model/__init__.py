"""SA-INR model: EDSR encoder, gating mask, LASA attention, MLP decoder."""

from .features import FeatureMap, Queries, SliceQueries, acquisition_tensor
from .sainr import SAINR, ModelConfig, QueryOutput, gating_disabled

__all__ = [
    "SAINR",
    "FeatureMap",
    "ModelConfig",
    "Queries",
    "QueryOutput",
    "SliceQueries",
    "acquisition_tensor",
    "gating_disabled",
]
