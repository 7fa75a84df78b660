"""DTConfig, DecisionTransformer, backbone builders, HF converters, block surgery, checkpoints."""

from dtlens.lazy import lazy_exports

_EXPORTS = {
    "BackboneConfig": "dtlens.model.config",
    "DTConfig": "dtlens.model.config",
    "TOKEN_TYPES": "dtlens.model.dt",
    "DecisionTransformer": "dtlens.model.dt",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
