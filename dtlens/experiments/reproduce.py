"""`dtlens reproduce`: every run and diagnostic of the study, then the report.

```
DIR/reproduce.json                  the preset (a folder holds one preset's results)
DIR/<env>/runs/<run>/               fine-tuning runs (with their own diagnostics/ and figures/)
DIR/<env>/diagnostics/  figures/    studies across runs: no context, block swap
DIR/report.md  report.html  figures/
```
Finished runs are skipped and interrupted ones resumed, so a rerun continues where it stopped.
Invocations narrowed to some tasks or seeds add up in one folder: reproduce.json keeps every
task's dataset and roles, and its wall time is the sum over the invocations.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dtlens.data.registry import load_dataset
from dtlens.diagnostics.contract import GROUP_CONTEXT, RunGroup, RunKey
from dtlens.errors import DtlensError
from dtlens.experiments.preset import Preset
from dtlens.experiments.runs import RunOutcome, RunSpec, execute
from dtlens.experiments.studies import block_swap_specs, spec_for
from dtlens.interp.analyses import READS as INTERP_READS
from dtlens.interp.registry import ANALYSES
from dtlens.interp.viewer import write_run_view
from dtlens.io import load_json, save_json
from dtlens.locks import folder_lock
from dtlens.model.controls import base_init
from dtlens.paths import EMBEDDED_BACKBONES, embedded_backbone_path
from dtlens.pretrain import image, synthetic, text
from dtlens.train.run import Run

PRETRAIN = {"text": text, "image": image, "synthetic": synthetic}

Log = Callable[[str], None]


@dataclass
class Plan:
    """The runs of one dataset, by role. Keys name roles (random / language / image), not inits,
    so that the report reads any preset alike."""

    label: str
    main: dict[RunKey, RunSpec]  # K=20 runs of every role
    no_context: dict[RunKey, RunSpec]  # K=1 and K=20 runs of the random and language roles
    no_clip: dict[RunKey, RunSpec]  # K=20 runs without clipping (image)
    block_swap: dict[RunKey, RunSpec] = field(default_factory=dict)  # K=1, role: the variant

    def group(self, name: RunGroup) -> dict[RunKey, RunSpec]:
        return getattr(self, name)

    def roles(self) -> dict:
        """Run names by group and key, as the report reads them (`RunKey.label`)."""
        groups: tuple[RunGroup, ...] = ("main", "no_context", "no_clip", "block_swap")
        return {g: {key.label(g): spec.name for key, spec in self.group(g).items()} for g in groups}

    def specs(self) -> list[RunSpec]:
        every = [
            *self.main.values(),
            *self.no_context.values(),
            *self.no_clip.values(),
            *self.block_swap.values(),
        ]
        return list({s.name: s for s in every}.values())


def plan(preset: Preset) -> list[Plan]:
    """Every compared condition with every seed of the preset but those cut on a dataset
    (`Preset.cuts`: a run shared with a condition not cut stays). Each run keeps the checkpoints
    its diagnostics read (`kept_epochs`) and its latest."""
    roles = preset.roles
    plans = []
    for label, dataset in preset.datasets.items():
        cut = preset.cuts.get(label, ())
        base = preset.train.replace(
            dataset=dataset,
            env_id=preset.env_ids.get(label),
            heldout=preset.heldouts.get(label),
            probe_size=preset.probe_size,
            epochs=preset.task_epochs.get(label, preset.train.epochs),
        )
        main, no_context, no_clip, swap = {}, {}, {}, {}
        for seed in preset.seeds:
            cfg = base.replace(seed=seed, context_len=20)
            for who, init in roles.items():
                if who not in cut:
                    main[RunKey(who, seed)] = spec_for(cfg.replace(init=init))
            gpt2_init = cfg.replace(dt=dataclasses.replace(cfg.dt, dt_init="gpt2"))
            for who in preset.gpt2_init.get(label, ()):
                main[RunKey(f"{who} gpt2-init", seed)] = spec_for(
                    gpt2_init.replace(init=roles[who])
                )
            for who in ("random", "language"):
                for k in (1, 20):
                    no_context[RunKey(who, seed, k)] = spec_for(
                        cfg.replace(init=roles[who], context_len=k)
                    )
            no_clip[RunKey("image", seed)] = spec_for(
                cfg.replace(init=preset.image, grad_clip=None)
            )
            swap_base = cfg.replace(
                epochs=preset.block_swap_epochs.get(label, base.epochs),
                size=preset.block_swap_size,
            )
            blocks = None if preset.block_swap_blocks is None else list(preset.block_swap_blocks)
            k = GROUP_CONTEXT["block_swap"]
            specs = block_swap_specs(swap_base, preset.language, blocks, context=k)
            for variant, spec in specs.items():
                if variant not in cut:
                    swap[RunKey(variant, seed, k)] = spec
        plans.append(_keeping_epochs(preset, Plan(label, main, no_context, no_clip, swap)))
    return plans


def kept_epochs(preset: Preset) -> dict[str, tuple[int, ...]]:
    """Checkpoints each kind of run keeps besides its latest: what its diagnostics read. K=20
    runs: epoch 0 (CKA, weight change) and the gradient epoch; K=1 runs: the attention epochs;
    the other runs are read through their metrics only."""
    return {"K20": (0, preset.gradient_epoch), "K1": (0, *preset.attention_epochs)}


def _keeping_epochs(preset: Preset, p: Plan) -> Plan:
    """`p` with each run's `keep_epochs` set: the union over the roles it plays (runs of equal
    configs are shared by roles, so they must stay equal)."""
    keep = kept_epochs(preset)
    needs: dict[str, set[int]] = {s.name: set() for s in p.specs()}
    for spec in p.main.values():
        needs[spec.name].update(keep["K20"])
    for key, spec in p.no_context.items():
        needs[spec.name].update(keep["K1" if key.context == 1 else "K20"])

    def keeping(runs: dict) -> dict:
        return {
            key: spec_for(s.cfg.replace(keep_epochs=tuple(sorted(needs[s.name]))))
            for key, s in runs.items()
        }

    return Plan(
        p.label, keeping(p.main), keeping(p.no_context), keeping(p.no_clip), keeping(p.block_swap)
    )


def claim_folder(out: Path, preset: Preset) -> None:
    """A folder holds one preset's results: refuse another preset's folder, delete nothing. The
    tasks and seeds of `preset` join those of earlier invocations."""
    marker = out / "reproduce.json"
    found: dict = {}
    if marker.is_file():
        found = load_json(marker)
        if found.get("preset") != preset.name:
            raise DtlensError(
                f"{out} holds results of the {found.get('preset')!r} preset; "
                f"use another --out for {preset.name!r}"
            )
    elif out.exists() and any(out.iterdir()):
        raise DtlensError(f"{out} is not empty and holds no reproduction; use another --out")
    seeds = list(dict.fromkeys([*found.get("seeds", []), *preset.seeds]))
    save_json(
        found
        | {
            "preset": preset.name,
            "datasets": found.get("datasets", {}) | preset.datasets,
            "seeds": seeds,
        },
        marker,
    )


def recorded_commands(meta: dict) -> list[str]:
    """The commands that wrote a reproduction folder, from its reproduce.json `meta` (a folder
    written before invocations added up records one `command`)."""
    return meta.get("commands") or ([meta["command"]] if "command" in meta else [])


def record_command(out: Path, command: str) -> None:
    """Add `command` to `out`/reproduce.json's commands: last, and once."""
    meta = load_json(out / "reproduce.json")
    earlier = [c for c in recorded_commands(meta) if c != command]
    meta.pop("command", None)
    save_json(meta | {"commands": [*earlier, command]}, out / "reproduce.json")


def prepare(preset: Preset, log: Log) -> None:
    """Datasets (embedded ones are collected once) and embedded backbones (pretrained once)."""
    for label, dataset in preset.datasets.items():
        t0 = time.perf_counter()
        ds = load_dataset(dataset, env_id=preset.env_ids.get(label))
        log(f"dataset {label}: {dataset} ({len(ds)} transitions, {time.perf_counter() - t0:.0f} s)")
    for init in map(base_init, preset.inits):
        if init in EMBEDDED_BACKBONES:
            ensure_embedded_backbone(init, log)


def ensure_embedded_backbone(name: str, log: Log) -> None:
    try:
        embedded_backbone_path(name)
    except DtlensError:
        log(f"pretraining the embedded {name} backbone (once)")
        PRETRAIN[name].build(progress=False)


def reproduce(
    preset: Preset,
    out: str | Path,
    workers: int | None = None,
    scheduler: str | None = None,
    log: Log = print,
) -> Path:
    """Run the whole study of `preset` into `out` (runs, then every diagnostic); returns `out`.
    `dtlens.report.write_report(out)` then writes the report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out):
        return _reproduce(preset, out, workers, scheduler, log)


def _reproduce(
    preset: Preset, out: Path, workers: int | None, scheduler: str | None, log: Log
) -> Path:
    claim_folder(out, preset)
    t0 = time.perf_counter()
    prepare(preset, log)
    plans = plan(preset)
    meta = load_json(out / "reproduce.json")
    cuts = {p.label: list(preset.cuts[p.label]) for p in plans if p.label in preset.cuts}
    save_json(
        meta
        | {
            "inits": preset.roles,
            "roles": meta.get("roles", {}) | {p.label: p.roles() for p in plans},
            "cuts": {k: v for k, v in meta.get("cuts", {}).items() if k not in preset.datasets}
            | cuts,
            "cut_note": preset.cut_note,
        },
        out / "reproduce.json",
    )
    for p in plans:
        specs = p.specs()
        log(f"{p.label}: {len(specs)} fine-tuning runs")
        outcomes = execute(specs, out / p.label / "runs", workers, scheduler, _log_outcome(log))
        failed = [o for o in outcomes if o.status == "failed"]
        for o in failed:
            log(f"run {o.name} failed: {o.error.strip().splitlines()[-1] if o.error else '?'}")
        analyse(preset, p, out / p.label, {o.name for o in outcomes if o.status != "failed"}, log)
    meta = load_json(out / "reproduce.json")
    spent = meta.get("wall_time_s", 0.0) + time.perf_counter() - t0  # over every invocation
    save_json(meta | {"wall_time_s": spent}, out / "reproduce.json")
    return out


def _log_outcome(log: Log) -> Callable[[RunOutcome], None]:
    def on_done(o: RunOutcome) -> None:
        log(f"  {o.status:8s} {o.name} ({o.seconds:.0f} s)")

    return on_done


def analyse(preset: Preset, p: Plan, root: Path, ok: set[str], log: Log) -> None:
    """Every registered analysis that declares the runs it reads, on those of one dataset's
    finished runs (a run analysis on each, a study analysis on all together), then the attention
    pages of the runs the interp analyses read; an analysis that fails is logged, not fatal."""
    folder, device = root / "runs", preset.train.device

    def step(what: str, fn: Callable[[], object]) -> None:
        t0 = time.perf_counter()
        try:
            fn()
            log(f"  {what} ({time.perf_counter() - t0:.0f} s)")
        except Exception as e:  # one broken diagnostic must not lose the others
            log(f"  {what} FAILED: {e}")

    def finished(runs: dict[RunKey, RunSpec]) -> dict[RunKey, Run]:
        return {k: Run(folder / s.name, device) for k, s in runs.items() if s.name in ok}

    for diag in ANALYSES.values():
        if diag.reads is None:
            continue
        runs = finished(diag.reads.select(p.group(diag.reads.group)))
        if diag.scope == "study":
            jobs = [(f"{diag.name} comparison", runs, root)] if runs else []
        else:
            jobs = [(f"{diag.name} {run.name}", run, None) for run in runs.values()]
        for what, target, where in jobs:
            step(what, lambda d=diag, t=target, w=where: d.write(t, w, **d.options(preset, t)))
    for run in finished(INTERP_READS.select(p.main)).values():
        step(f"attention view {run.name}", lambda r=run: write_run_view(r))
