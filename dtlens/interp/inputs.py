"""What the interp tools share: a batch as model inputs, eval mode, the last state token, the
residual stream at every layer, token labels and the attrs of a run's result."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from dtlens.data.windows import Batch
from dtlens.errors import DtlensError
from dtlens.model.dt import DecisionTransformer
from dtlens.train.run import Run

TOKEN_LETTERS = ("R", "s", "a")


def model_args(model: DecisionTransformer, batch: Batch) -> tuple[Tensor, ...]:
    """(states, actions, returns_to_go, timesteps, attention_mask) on the model's device."""
    if len(batch) == 0:
        raise DtlensError("the batch is empty")
    b = batch.to(model.device)
    return b.states, b.actions, b.returns_to_go, b.timesteps, b.attention_mask


def last_state_position(batch: Batch) -> int:
    """The token position where the last timestep's action is read out: s_{K-1}, 3K - 2."""
    return 3 * batch.timesteps.shape[1] - 2


@contextmanager
def eval_mode(*models: DecisionTransformer) -> Iterator[None]:
    """Dropout off for the duration (the permanent dropout hooks follow the mode)."""
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(models, modes, strict=True):
            m.train(mode)


def residual_stream(
    model: DecisionTransformer, batch: Batch
) -> Float[Tensor, "batch layer position d_model"]:
    """The residual stream before the final norm after 0..n_layers blocks (layer 0: the token
    embeddings), in eval mode."""
    names = ["backbone.blocks.0.hook_resid_pre"]
    names += [f"backbone.blocks.{i}.hook_resid_post" for i in range(model.cfg.n_layers)]
    cache: dict[str, Tensor] = {}

    def save(x: Tensor, hook) -> None:
        cache[hook.name] = x

    with torch.no_grad(), eval_mode(model), model.hooks(fwd_hooks=[(n, save) for n in names]):
        model.hidden_states(*model_args(model, batch))
    return torch.stack([cache[n] for n in names], dim=1)


def token_labels(batch: Batch) -> list[list[str]]:
    """Per sample, per token position: `R_t`, `s_t`, `a_t` (t = the episode timestep), or `pad`
    at left padding."""
    steps = batch.timesteps.cpu().numpy()
    mask = batch.attention_mask.cpu().numpy().astype(bool)
    return [
        [
            f"{TOKEN_LETTERS[p % 3]}_{steps[s, p // 3]}" if mask[s, p // 3] else "pad"
            for p in range(3 * steps.shape[1])
        ]
        for s in range(len(steps))
    ]


def run_attrs(run: Run, epoch: int) -> dict[str, str | int]:
    t = run.train_config
    return {"run": run.name, "epoch": epoch, "init": t.init, "dataset": t.dataset}


def as_numpy(x: Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy()


@torch.no_grad()
def last_actions(model: DecisionTransformer, batch: Batch) -> Tensor:
    """The model's action at the last timestep in eval mode, (B, act_dim)."""
    with eval_mode(model):
        return model(*model_args(model, batch))[:, -1]
