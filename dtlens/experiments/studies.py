"""The paper's training studies: no context (analysis 5) and block replacement (analysis 6).

Each builds its run specs, executes them (finished runs are reused), compares the curves and
writes `diagnostics/*.nc` and `figures/*.png` under the study folder.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import xarray as xr

from dtlens.diagnostics.analyses import block_swap, no_context
from dtlens.diagnostics.contract import RunKey
from dtlens.errors import DtlensError
from dtlens.experiments.runs import RunOutcome, RunSpec, execute
from dtlens.model.config import BackboneConfig
from dtlens.model.controls import split_control
from dtlens.model.inits import backbone_spec
from dtlens.train.config import TrainConfig
from dtlens.train.run import Run


def no_context_specs(
    base: TrainConfig, inits: list[str], contexts=(1, 20), seeds: list[int] | None = None
) -> dict:
    """{RunKey(init, seed, K): RunSpec} for every init at every context length and seed (default:
    the base config's seed)."""
    if not inits:
        raise DtlensError("no inits given")
    return {
        RunKey(init, seed, k): spec_for(base.replace(init=init, context_len=k, seed=seed))
        for init in inits
        for k in contexts
        for seed in (seeds or [base.seed])
    }


def check_donor(donor: str, size: BackboneConfig, imagegpt_norm: str = "rms") -> BackboneConfig:
    """Fail before any run if the donor's blocks cannot go into a random DT of `size`: the widths
    must match (a block of other heads or activation makes a mixed backbone). Returns the
    donor's config."""
    theirs = backbone_spec(donor, imagegpt_norm=imagegpt_norm)
    if theirs.d_model != size.d_model:
        raise DtlensError(
            f"donor {donor} does not fit the random model: d_model {theirs.d_model} != "
            f"{size.d_model}"
        )
    if theirs.n_layers < size.n_layers:
        raise DtlensError(f"donor {donor} has {theirs.n_layers} blocks, the model {size.n_layers}")
    return theirs


#: The block-replacement run whose block N comes from the donor: its label ("block 3").
BLOCK = "block {}"


def block_swap_specs(
    base: TrainConfig,
    donor: str,
    blocks: list[int] | None = None,
    context: int = 1,
    released_block_zero: bool = False,
) -> dict[str, RunSpec]:
    """{label: RunSpec}: all-random, one run per donated block, and all-donor; all at `context`.

    `released_block_zero` reproduces a quirk of the paper's released `experiment.py`: it swaps
    blocks under `if pretrained_block:`, false for block 0, while `pretrained_lm` is still gpt2,
    so "block 0" trains the full donor (all 12 GPT-2 blocks): here the donor run, shared.
    """
    n = base.size.n_layers
    blocks = list(range(n)) if blocks is None else blocks
    if not blocks:
        raise DtlensError("empty block list")
    bad = [b for b in blocks if not 0 <= b < n]
    if bad:
        raise DtlensError(f"blocks {bad} out of range: the model has {n} blocks (0..{n - 1})")
    cfg = base.replace(context_len=context)
    specs = {"random": spec_for(cfg.replace(init="random"))}
    for b in blocks:
        if released_block_zero and b == 0:
            run = cfg.replace(init=donor)
        else:
            run = cfg.replace(init="random", replace_block=b, donor=donor)
        specs[BLOCK.format(b)] = spec_for(run)
    specs["donor"] = spec_for(cfg.replace(init=donor))
    return specs


def run_name(cfg: TrainConfig) -> str:
    """A folder name from what distinguishes runs of a study: init, K, epochs, seed, swap, the
    DT's own init when not `released`.
    Runs of equal configs get equal names, so studies share them."""
    name = f"{_slug(cfg.init)}-K{cfg.context_len}-e{cfg.epochs}-s{cfg.seed}"
    if cfg.replace_block is not None:
        name += f"-block{cfg.replace_block}-{_slug(cfg.donor)}"
    if cfg.dt.dt_init != "released":
        name += f"-dt{cfg.dt.dt_init}"
    return name if cfg.grad_clip is not None else name + "-noclip"


def spec_for(cfg: TrainConfig) -> RunSpec:
    return RunSpec(run_name(cfg), cfg)


def _slug(init: str) -> str:
    control, inner = split_control(init)
    if control is not None:
        return f"{control}-{_slug(inner)}"
    return Path(init).stem.replace(" ", "_")


def _finished(specs: dict, outcomes: list[RunOutcome]) -> dict:
    """Keys of `specs` whose run finished, mapped to their Run."""
    ok = {o.name: o for o in outcomes if o.status != "failed"}
    return {k: Run(ok[s.name].path) for k, s in specs.items() if s.name in ok}


def run_no_context(
    base: TrainConfig,
    inits: list[str],
    out: str | Path,
    contexts=(1, 20),
    workers: int = 1,
    scheduler: str | None = None,
    on_done=None,
    seeds: list[int] | None = None,
) -> tuple[xr.Dataset, list[RunOutcome]]:
    out = Path(out)
    specs = no_context_specs(base, inits, contexts, seeds)
    outcomes = execute(specs.values(), out / "runs", workers, scheduler, on_done)
    runs = _finished(specs, outcomes)
    if not runs:
        raise DtlensError("every run failed: " + "; ".join(o.error for o in outcomes))
    return no_context.DIAGNOSTIC.write(runs, out).ds, outcomes


def run_block_swap(
    base: TrainConfig,
    donor: str,
    out: str | Path,
    blocks: list[int] | None = None,
    context: int = 1,
    workers: int = 1,
    scheduler: str | None = None,
    on_done=None,
    released_block_zero: bool = False,
) -> tuple[xr.Dataset, list[RunOutcome]]:
    out = Path(out)
    theirs = check_donor(donor, base.size, base.imagegpt_norm)
    if theirs.arch:  # another decoder family: the random model is the donor's layout, re-drawn
        size = dataclasses.replace(theirs, n_layers=base.size.n_layers, blocks=())
        base = base.replace(size=size)
    swaps = block_swap_specs(base, donor, blocks, context, released_block_zero)
    specs = {RunKey(v, base.seed, context): s for v, s in swaps.items()}
    unique = {s.name: s for s in specs.values()}.values()  # released block 0 is the donor run
    outcomes = execute(unique, out / "runs", workers, scheduler, on_done)
    runs = _finished(specs, outcomes)
    if not runs:
        raise DtlensError("every run failed: " + "; ".join(o.error for o in outcomes))
    return block_swap.DIAGNOSTIC.write(runs, out).ds, outcomes
