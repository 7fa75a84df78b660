"""Activations TransformerLens lacks, registered in this one place.

ImageGPT uses `quick_gelu`, x * sigmoid(1.702 x) (HF's QuickGELUActivation). TransformerLens
looks activations up by name in `SUPPORTED_ACTIVATIONS`, so adding the name there is all it needs.
"""

import torch
from transformer_lens.utilities.activation_functions import SUPPORTED_ACTIVATIONS


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def register_activations() -> None:
    SUPPORTED_ACTIVATIONS.setdefault("quick_gelu", quick_gelu)


register_activations()
