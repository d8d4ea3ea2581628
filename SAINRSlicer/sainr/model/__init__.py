"""SA-INR model: EDSR encoder, gating mask, LASA attention, MLP decoder."""

from .features import FeatureMap, Queries
from .sainr import SAINR, ModelConfig, QueryOutput, gating_disabled

__all__ = ["SAINR", "FeatureMap", "ModelConfig", "Queries", "QueryOutput", "gating_disabled"]
