"""Activation patching: run a DT on `corrupted` inputs with one activation at a time replaced by
its value on `clean` inputs, and read how much of the action's clean-corrupted gap comes back.

Sites: each hook per block; per head for head-indexed hooks (`z`, `q`, `k`, `v`, `pattern`,
`attn_scores`); per token position when `positions` are given (the query position for
patterns). `donor` patches another model's activations (same shapes) into `model`: a pretrained
run's block activity into a random-init one. The recovered fraction of a site is
<patched - corrupted, clean - corrupted> / ||clean - corrupted||^2 over samples and action dims:
1 when the patched action equals the clean one, 0 when patching changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from dtlens.capture.hooks import HookKind, resolve_hooks
from dtlens.data.windows import Batch
from dtlens.errors import DtlensError
from dtlens.interp.inputs import as_numpy, eval_mode, last_actions, model_args
from dtlens.model.checkpoint import load_model
from dtlens.model.dt import DecisionTransformer
from dtlens.train.run import Run


@dataclass(frozen=True)
class Site:
    """One patched activation: a hook kind in one block (-1: not a block's) and the head and
    token position it covers (-1: all)."""

    kind: HookKind
    layer: int
    head: int = -1
    position: int = -1

    @property
    def hook(self) -> str:
        return self.kind.full_name(self.layer if self.kind.per_block else None)

    def index(self) -> tuple[slice | int, ...]:
        """The part of the activation (batch first) this site replaces."""
        dims = self.kind.dims
        idx: list[slice | int] = [slice(None)] * (1 + len(dims))
        if self.head >= 0:
            idx[1 + dims.index("head")] = self.head
        if self.position >= 0:
            idx[1 + dims.index("query" if "query" in dims else "position")] = self.position
        return tuple(idx)


def sites(
    model: DecisionTransformer, hooks: Sequence[str], positions: Sequence[int] | None = None
) -> list[Site]:
    """Every site of `hooks` (names as `dtlens.capture.hooks` takes them)."""
    kinds, layers = resolve_hooks(model, hooks)
    out = []
    for kind in kinds:
        if positions is not None and not {"position", "query"} & set(kind.dims):
            raise DtlensError(f"{kind.name} has no token position to patch per position")
        for layer in layers if kind.per_block else [-1]:
            n_heads = model.cfg.backbone.block(max(layer, 0)).n_heads  # mixed backbones: per block
            for head in range(n_heads) if "head" in kind.dims else [-1]:
                for position in [-1] if positions is None else positions:
                    out.append(Site(kind, layer, head, position))
    return out


def _shape(model: DecisionTransformer) -> tuple[int, ...]:
    """What any two models must share; head counts and MLP widths may differ (a GPT-2 donor
    into the paper's 1-head random init) as long as the patched activations' shapes agree."""
    c, b = model.cfg, model.cfg.backbone
    return (c.state_dim, c.act_dim, b.n_layers, b.d_model)


def _check(
    model: DecisionTransformer,
    donor: DecisionTransformer,
    clean: Batch,
    corrupted: Batch,
    positions: Sequence[int] | None,
) -> None:
    k = clean.timesteps.shape[1]
    if clean.timesteps.shape != corrupted.timesteps.shape:
        raise DtlensError(
            f"clean and corrupted batches differ in shape: {tuple(clean.timesteps.shape)} vs "
            f"{tuple(corrupted.timesteps.shape)}"
        )
    if positions is not None and not all(0 <= p < 3 * k for p in positions):
        raise DtlensError(f"positions must lie in [0, {3 * k}) for windows of {k} steps")
    if _shape(model) != _shape(donor):
        raise DtlensError(
            "the donor's activations do not fit the model: (state_dim, act_dim, n_layers, "
            f"d_model) {_shape(donor)} vs {_shape(model)}"
        )


@torch.no_grad()
def clean_run(
    donor: DecisionTransformer, clean: Batch, names: set[str]
) -> tuple[dict[str, Tensor], Tensor]:
    """`donor`'s activations of the hooks `names` on `clean`, and its action at the last
    timestep."""
    cache: dict[str, Tensor] = {}

    def save(x: Tensor, hook) -> None:
        cache[hook.name] = x.clone()

    with donor.hooks(fwd_hooks=[(n, save) for n in names]):
        action = donor(*model_args(donor, clean))[:, -1]
    return cache, action


@torch.no_grad()
def activation_patching(
    model: DecisionTransformer,
    clean: Batch,
    corrupted: Batch,
    hooks: Sequence[str],
    positions: Sequence[int] | None = None,
    donor: DecisionTransformer | None = None,
) -> xr.Dataset:
    """`action(site, sample, action_dim)`: `model`'s action at the last timestep on `corrupted`
    with one site's activation taken from `donor` (default: `model`) on `clean`;
    `clean_action` (the donor's on `clean`), `corrupted_action` and `recovered(site)`."""
    donor = model if donor is None else donor
    _check(model, donor, clean, corrupted, positions)
    todo = sites(model, hooks, positions)
    with eval_mode(model, donor), model.hooked_path(), donor.hooked_path():  # same numerics
        cache, clean_action = clean_run(donor, clean, {s.hook for s in todo})
        corrupted_action = last_actions(model, corrupted)
        patched = []
        for site in todo:
            idx, source = site.index(), cache[site.hook].to(model.device)

            def patch(x: Tensor, hook, idx=idx, source=source) -> Tensor:
                if x.shape != source.shape:
                    raise DtlensError(
                        f"{hook.name}: the donor's activation has shape {tuple(source.shape)}, "
                        f"the model's {tuple(x.shape)} (other head counts or MLP widths)"
                    )
                x = x.clone()
                x[idx] = source[idx]
                return x

            with model.hooks(fwd_hooks=[(site.hook, patch)]):
                patched.append(model(*model_args(model, corrupted))[:, -1])
    action = as_numpy(torch.stack(patched))
    clean_np, corrupted_np = as_numpy(clean_action), as_numpy(corrupted_action)
    return xr.Dataset(
        {
            "action": (("site", "sample", "action_dim"), action),
            "clean_action": (("sample", "action_dim"), clean_np),
            "corrupted_action": (("sample", "action_dim"), corrupted_np),
            "recovered": (("site",), recovered(action, clean_np, corrupted_np)),
        },
        coords={
            "site": np.arange(len(todo)),
            "hook": ("site", [s.kind.name for s in todo]),
            "layer": ("site", [s.layer for s in todo]),
            "head": ("site", [s.head for s in todo]),
            "position": ("site", [s.position for s in todo]),
            "sample": np.arange(len(clean)),
            "action_dim": np.arange(model.cfg.act_dim),
        },
    )


def recovered(action: np.ndarray, clean: np.ndarray, corrupted: np.ndarray) -> np.ndarray:
    """Per site, the projection of (patched - corrupted) on (clean - corrupted), as a fraction
    of the gap (NaN when there is no gap)."""
    gap = clean - corrupted
    norm = float((gap**2).sum())
    moved = ((action - corrupted) * gap).sum(axis=(1, 2))
    return moved / norm if norm > 0 else np.full(len(action), np.nan)


def corrupt_last_state(batch: Batch, seed: int = 0) -> Batch:
    """`batch` with each window's last state taken from another window (a seeded derangement
    when there are two windows or more)."""
    n = len(batch)
    shift = int(np.random.default_rng(seed).integers(1, n)) if n > 1 else 0
    states = batch.states.clone()
    states[:, -1] = batch.states[np.roll(np.arange(n), shift), -1]
    return Batch(states, batch.actions, batch.returns_to_go, batch.timesteps, batch.attention_mask)


def load_donor(source: str | Path, device: str = "cpu") -> DecisionTransformer:
    """A donor model on `device`: a run folder (its last checkpoint) or a dtlens checkpoint."""
    path = Path(source)
    if path.is_dir():
        return Run(path, device).load_model(-1)
    return load_model(path).to(device).eval()
