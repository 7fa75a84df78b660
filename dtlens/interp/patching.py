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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from dtlens.capture.hooks import HookKind, resolve_hooks
from dtlens.data.windows import Batch
from dtlens.diagnostics.contract import Diagnostic, Finding, Table
from dtlens.errors import DtlensError
from dtlens.interp.inputs import as_numpy, eval_mode, last_actions, model_args, run_attrs
from dtlens.model.checkpoint import load_model
from dtlens.model.dt import DecisionTransformer
from dtlens.plotting import grouped_bars, panels, save_figure
from dtlens.train.run import Run

#: What the reproduction patches across runs: each block's attention and MLP output.
BLOCK_OUTPUTS = ("attn_out", "mlp_out")
#: Probe windows it patches on (the first of the recipient's), to keep `make demo` short.
CROSS_SAMPLES = 50


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


def site_label(hook: str, layer: int, head: int, position: int) -> str:
    parts = [f"L{layer}" if layer >= 0 else "", f"H{head}" if head >= 0 else ""]
    return "".join(parts) + f" {hook}" + (f" @{position}" if position >= 0 else "")


def labels(ds: xr.Dataset) -> list[str]:
    coords = (ds[c].values for c in ("hook", "layer", "head", "position"))
    return [
        site_label(str(h), int(b), int(hd), int(p)) for h, b, hd, p in zip(*coords, strict=True)
    ]


def compute_patching(
    run: Run,
    donor: str | Path | None = None,
    epoch: int = -1,
    samples: int | None = None,
    hooks: Sequence[str] = ("attn_out", "mlp_out", "z"),
    positions: bool = False,
    seed: int = 0,
) -> xr.Dataset:
    """Patching on `run`'s checkpoint `epoch` over its probe windows. Without a donor: clean =
    the windows, corrupted = the same windows with the last state of another window (seeded).
    With a donor (a run folder or checkpoint): the donor's activations on the same windows."""
    (epoch,) = run.resolve_epochs([epoch])
    model, batch = run.load_model(epoch), run.windows(samples)
    at = list(range(3 * batch.timesteps.shape[1])) if positions else None
    if donor is None:
        ds = activation_patching(model, batch, corrupt_last_state(batch, seed), hooks, at)
        setup = {"corrupted": f"last state from another window (seed {seed})", "donor": ""}
    else:
        donor_model = load_donor(donor, run.device)
        ds = activation_patching(model, batch, batch, hooks, at, donor=donor_model)
        setup = {"corrupted": "none (same windows)", "donor": str(donor)}
    return ds.assign_attrs(setup | run_attrs(run, epoch))


def plot_patching(ds: xr.Dataset, path: str | Path) -> Path:
    """Recovered fraction per site: bars, or layer x position maps per hook when per position."""
    per_position = bool((ds["position"].values >= 0).any())
    if not per_position:
        fig, axes = panels(1, 1, size=(max(4.0, 0.3 * ds.sizes["site"]), 3.2))
        axes[0, 0].bar(labels(ds), ds["recovered"].values, color="C0")
        axes[0, 0].tick_params(axis="x", rotation=90, labelsize=7)
        axes[0, 0].set(ylabel="fraction of the gap recovered")
    else:
        hooks = list(dict.fromkeys(ds["hook"].values))
        fig, axes = panels(len(hooks), 1, size=(7.0, 2.4))
        for ax, hook in zip(axes[:, 0], hooks, strict=True):
            part = ds.isel(site=ds["hook"].values == hook)
            rows = [
                f"{b} {h}" for b, h in zip(part["layer"].values, part["head"].values, strict=True)
            ]
            names = list(dict.fromkeys(rows))
            grid = np.full((len(names), int(part["position"].max()) + 1), np.nan)
            for row, position, value in zip(
                rows, part["position"].values, part["recovered"].values, strict=True
            ):
                grid[names.index(row), position] = value
            image = ax.imshow(grid, aspect="auto", cmap="RdBu", vmin=-1, vmax=1)
            ax.set_yticks(
                range(len(names)), [site_label("", *map(int, n.split()), -1) for n in names]
            )
            ax.set(title=hook, xlabel="position (R, s, a per step)")
            fig.colorbar(image, ax=ax)
    fig.suptitle(
        f"activation patching of {ds.attrs.get('run', '')}, epoch {ds.attrs.get('epoch', '')}",
        fontsize=10,
    )
    return save_figure(fig, path)


def summary(ds: xr.Dataset) -> Table:
    gap = float(np.sqrt(((ds["clean_action"] - ds["corrupted_action"]) ** 2).mean()))
    order = np.argsort(-np.abs(np.nan_to_num(ds["recovered"].values)))[:20]
    names = labels(ds)
    rows = [[names[i], float(ds["recovered"].values[i])] for i in order]
    title = (
        f"activation patching of {ds.attrs.get('run', '')} (epoch {ds.attrs.get('epoch', '')}; "
        f"corrupted: {ds.attrs.get('corrupted', '')}; donor: {ds.attrs.get('donor') or 'itself'}"
        f"; RMS gap {gap:.3g}), top sites"
    )
    return Table(title, ["site", "recovered fraction"], rows)


def _cross_pairs(runs: Mapping[tuple[str, int], Run]) -> list[tuple[int, dict[str, Run], Run]]:
    """Per seed with a random and a language run: the recipient (random, seed) and its donors:
    the language run of the same seed and, as a control, the random run of the next seed (none
    with a single seed)."""
    seeds = sorted(seed for role, seed in runs if role == "random")
    pairs = []
    for i, seed in enumerate(seeds):
        if ("language", seed) not in runs:
            continue
        donors = {"language": runs[("language", seed)]}
        if len(seeds) > 1:
            donors["random"] = runs[("random", seeds[(i + 1) % len(seeds)])]
        pairs.append((seed, donors, runs[("random", seed)]))
    if not pairs:
        raise DtlensError("cross-run patching needs a language and a random run of one seed")
    return pairs


def compute_cross_patching(
    runs: Mapping[tuple[str, int], Run], samples: int | None = CROSS_SAMPLES
) -> xr.Dataset:
    """Each block's attention and MLP output of a donor run patched into a random-init run on
    the recipient's first `samples` probe windows (at most the probe): donors are the language
    run of the same seed and (control) another seed's random run. `recovered(donor, seed, site)`."""
    pairs, parts = _cross_pairs(runs), []
    for _, donors, recipient in pairs:
        n = None if samples is None else min(samples, recipient.train_config.probe_size)
        model, batch = recipient.load_model(-1), recipient.windows(n)
        per_donor = [
            activation_patching(model, batch, batch, BLOCK_OUTPUTS, donor=d.load_model(-1))[
                ["recovered"]
            ]
            for d in donors.values()
        ]
        parts.append(xr.concat(per_donor, dim=xr.DataArray(list(donors), dims="donor")))
    seeds = [seed for seed, _, _ in pairs]
    ds = xr.concat(parts, dim=xr.DataArray(seeds, dims="seed"))
    return ds.assign_attrs(hooks=",".join(BLOCK_OUTPUTS), recipient="random")


def plot_cross_patching(ds: xr.Dataset, path: str | Path) -> Path:
    fig, axes = panels(1, 1, size=(max(4.0, 0.6 * ds.sizes["site"]), 3.2))
    mean = ds["recovered"].mean("seed")
    grouped_bars(
        axes[0, 0],
        labels(ds),
        {f"{d} donor": mean.sel(donor=d).values for d in ds["donor"].values},
        "donor block outputs patched into random-init runs",
        "fraction of the gap recovered",
    )
    axes[0, 0].tick_params(axis="x", rotation=45)
    return save_figure(fig, path)


def cross_summary(ds: xr.Dataset) -> Table:
    names = labels(ds)
    rows = [
        [f"{d} -> random", names[i], *ds["recovered"].sel(donor=d).isel(site=i).values.tolist()]
        for d in ds["donor"].values
        for i in range(ds.sizes["site"])
    ]
    header = ["donor", "site", *(f"seed {s}" for s in ds["seed"].values)]
    return Table("fraction of the donor-recipient action gap recovered per site", header, rows)


def donor_recovery(ds: xr.Dataset, role: str) -> np.ndarray:
    """Per seed: the recovered fraction of `role`'s donor run, mean over the patched sites."""
    if role not in ds["donor"]:
        return np.full(ds.sizes["seed"], np.nan)
    return ds["recovered"].sel(donor=role).mean("site").values


CROSS = Diagnostic(
    name="cross_patching",
    title="Block outputs patched across runs",
    compute=compute_cross_patching,
    plot=plot_cross_patching,
    summary=cross_summary,
    scope="study",
    finding=Finding(
        claim=(
            "Does a language-pretrained run's block activity, patched into a random-init run, "
            "move its action toward the donor's by a different fraction than another random "
            "run's does?"
        ),
        short="donor activity recovered",
        statistic=(
            "fraction of the donor-recipient action gap recovered by one block output (attention "
            "or MLP) of the donor, mean over block outputs"
        ),
        expect="two-sided",  # a question, not a claim of the paper
        per_seed=donor_recovery,
    ),
)

DIAGNOSTIC = Diagnostic(
    name="patching",
    title="Activation patching",
    compute=compute_patching,
    plot=plot_patching,
    summary=summary,
)
