"""Decision Transformer on a TransformerLens backbone: configs, builders, checkpoints."""

from dtlens.model.config import BackboneConfig, DTConfig
from dtlens.model.dt import TOKEN_TYPES, DecisionTransformer

__all__ = ["BackboneConfig", "DTConfig", "DecisionTransformer", "TOKEN_TYPES"]
