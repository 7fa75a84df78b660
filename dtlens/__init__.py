"""dtlens: hook-based interpretability for Decision Transformers.

Why do Decision Transformers initialised from language-pretrained GPT-2 fine-tune well on offline
RL, why do ImageGPT-initialised ones fail, and how do both differ from random init?
"""

__version__ = "0.1.0"

from dtlens.model import DecisionTransformer, DTConfig  # noqa: E402

__all__ = ["DTConfig", "DecisionTransformer", "__version__"]
