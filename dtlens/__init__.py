"""dtlens: hook-based interpretability for Decision Transformers.

Why do Decision Transformers initialised from language-pretrained GPT-2 fine-tune well on offline
RL, why do ImageGPT-initialised ones fail, and how do both differ from random init?

`import dtlens` loads neither torch nor transformer_lens: the exports below load on first use.
"""

from dtlens.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {"DTConfig": "dtlens.model.config", "DecisionTransformer": "dtlens.model.dt"}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = ["DTConfig", "DecisionTransformer", "__version__"]
