"""Activations TransformerLens lacks or computes slowly, registered in this one place.

ImageGPT uses `quick_gelu`, x * sigmoid(1.702 x) (HF's QuickGELUActivation). TransformerLens
looks activations up by name in `SUPPORTED_ACTIVATIONS` when it builds a block, so adding the name
there is all it needs. Its `gelu_new` (GPT-2's) is replaced there by the same formula computed in
place where autograd does not need the intermediates (eval-mode forward passes through the
hooked blocks, e.g. captures): the same bits, one temporary tensor instead of seven.
"""

import numpy as np
import torch
from transformer_lens.utilities.activation_functions import SUPPORTED_ACTIVATIONS, gelu_new

SQRT_2_OVER_PI = np.sqrt(2.0 / np.pi)  # a numpy float64, as in TransformerLens's gelu_new


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    if not torch.is_grad_enabled():
        return torch.mul(x, 1.702).sigmoid_().mul_(x)
    return x * torch.sigmoid(1.702 * x)


def gelu_new_in_place(x: torch.Tensor) -> torch.Tensor:
    """TransformerLens's `gelu_new`, bit for bit (NaN stays NaN): 0.5 x (1 + tanh(sqrt(2/pi) (x +
    0.044715 x^3))), each operation rounded as there; in place when no autograd needs them."""
    if torch.is_grad_enabled():  # autograd keeps the intermediates
        return gelu_new(x)
    t = torch.pow(x, 3.0).mul_(0.044715).add_(x).mul_(SQRT_2_OVER_PI).tanh_().add_(1.0)
    return t.mul_(x * 0.5)  # in-place methods (no out=): torch.func.vmap batches them


def register_activations() -> None:
    SUPPORTED_ACTIVATIONS.setdefault("quick_gelu", quick_gelu)
    SUPPORTED_ACTIVATIONS["gelu_new"] = gelu_new_in_place


register_activations()
