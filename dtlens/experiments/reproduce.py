"""`dtlens reproduce`: every run and diagnostic of the study, then the report.

```
DIR/reproduce.json                  the preset (a folder holds one preset's results)
DIR/<env>/runs/<run>/               fine-tuning runs (with their own diagnostics/ and figures/)
DIR/<env>/diagnostics/  figures/    studies across runs: no context, block swap
DIR/report.md  report.html  figures/
```
Finished runs are skipped and interrupted ones resumed, so a rerun continues where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dtlens.data.registry import load_dataset
from dtlens.diagnostics.registry import RUN_DIAGNOSTICS, STUDY_DIAGNOSTICS
from dtlens.errors import DtlensError
from dtlens.experiments.presets import Preset
from dtlens.experiments.runs import RunOutcome, RunSpec, execute
from dtlens.experiments.studies import block_swap_specs, spec_for
from dtlens.interp.registry import interp_tasks
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
    main: dict[tuple[str, int], RunSpec]  # (role, seed) -> K=20 run
    no_context: dict[tuple[str, int, int], RunSpec]  # (role, K, seed) -> run
    no_clip: dict[tuple[str, int], RunSpec]  # (role, seed) -> K=20 run without clipping
    block_swap: dict[tuple[str, int], RunSpec] = field(default_factory=dict)  # (variant, seed)

    def roles(self) -> dict:
        """Run names by role, as the report reads them (JSON keys are strings)."""

        def names(runs: dict) -> dict[str, str]:
            return {"|".join(map(str, key)): spec.name for key, spec in runs.items()}

        return {
            "main": names(self.main),
            "no_context": names(self.no_context),
            "no_clip": names(self.no_clip),
            "block_swap": names(self.block_swap),
        }

    def specs(self) -> list[RunSpec]:
        every = [
            *self.main.values(),
            *self.no_context.values(),
            *self.no_clip.values(),
            *self.block_swap.values(),
        ]
        return list({s.name: s for s in every}.values())


def plan(preset: Preset) -> list[Plan]:
    """Every compared condition with every seed of the preset. Each run keeps the checkpoints
    its diagnostics read (`kept_epochs`) and its latest."""
    roles = {"random": preset.random, "language": preset.language, "image": preset.image}
    plans = []
    for label, dataset in preset.datasets.items():
        base = preset.train.replace(
            dataset=dataset, env_id=preset.env_ids.get(label), probe_size=preset.probe_size
        )
        main, no_context, no_clip, swap = {}, {}, {}, {}
        for seed in preset.seeds:
            cfg = base.replace(seed=seed, context_len=20)
            for who, init in roles.items():
                main[(who, seed)] = spec_for(cfg.replace(init=init))
            for who in ("random", "language"):
                for k in (1, 20):
                    no_context[(who, k, seed)] = spec_for(
                        cfg.replace(init=roles[who], context_len=k)
                    )
            no_clip[("image", seed)] = spec_for(cfg.replace(init=preset.image, grad_clip=None))
            swap_base = cfg.replace(
                epochs=preset.block_swap_epochs.get(label, base.epochs),
                size=preset.block_swap_size,
            )
            blocks = None if preset.block_swap_blocks is None else list(preset.block_swap_blocks)
            specs = block_swap_specs(swap_base, preset.language, blocks, context=1)
            for variant, spec in specs.items():
                swap[(variant, seed)] = spec
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
    for (_, k, _), spec in p.no_context.items():
        needs[spec.name].update(keep["K1" if k == 1 else "K20"])

    def keeping(runs: dict) -> dict:
        return {
            key: spec_for(s.cfg.replace(keep_epochs=tuple(sorted(needs[s.name]))))
            for key, s in runs.items()
        }

    return Plan(
        p.label, keeping(p.main), keeping(p.no_context), keeping(p.no_clip), keeping(p.block_swap)
    )


def claim_folder(out: Path, preset: Preset) -> None:
    """A folder holds one preset's results: refuse another preset's folder, delete nothing."""
    marker = out / "reproduce.json"
    if marker.is_file():
        found = load_json(marker).get("preset")
        if found != preset.name:
            raise DtlensError(
                f"{out} holds results of the {found!r} preset; "
                f"use another --out for {preset.name!r}"
            )
    elif out.exists() and any(out.iterdir()):
        raise DtlensError(f"{out} is not empty and holds no reproduction; use another --out")
    save_json(
        {"preset": preset.name, "datasets": preset.datasets, "seeds": list(preset.seeds)}, marker
    )


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
    save_json(
        load_json(out / "reproduce.json")
        | {
            "inits": {"random": preset.random, "language": preset.language, "image": preset.image},
            "roles": {p.label: p.roles() for p in plans},
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
    save_json(
        load_json(out / "reproduce.json") | {"wall_time_s": time.perf_counter() - t0},
        out / "reproduce.json",
    )
    return out


def _log_outcome(log: Log) -> Callable[[RunOutcome], None]:
    def on_done(o: RunOutcome) -> None:
        log(f"  {o.status:8s} {o.name} ({o.seconds:.0f} s)")

    return on_done


def analyse(preset: Preset, p: Plan, root: Path, ok: set[str], log: Log) -> None:
    """Every registered diagnostic of one dataset's runs, every seed; a diagnostic that fails is
    logged, not fatal."""
    runs, device = root / "runs", preset.train.device

    def step(what: str, fn: Callable[[], object]) -> None:
        t0 = time.perf_counter()
        try:
            fn()
            log(f"  {what} ({time.perf_counter() - t0:.0f} s)")
        except Exception as e:  # one broken diagnostic must not lose the others
            log(f"  {what} FAILED: {e}")

    by_role = {
        "main": {k: Run(runs / s.name, device) for k, s in p.main.items() if s.name in ok},
        "k1": {
            (who, seed): Run(runs / s.name, device)
            for (who, k, seed), s in p.no_context.items()
            if k == 1 and s.name in ok
        },
    }
    for diag in RUN_DIAGNOSTICS.values():
        options = {opt: getattr(preset, attr) for opt, attr in diag.preset_options.items()}
        for run in by_role[diag.runs].values():
            step(f"{diag.name} {run.name}", lambda d=diag, r=run, o=options: d.write(r, **o))
    studies = {"no_context": p.no_context, "block_swap": p.block_swap}
    for name, diag in STUDY_DIAGNOSTICS.items():
        finished = {k: Run(runs / s.name) for k, s in studies[name].items() if s.name in ok}
        if finished:
            step(f"{name} comparison", lambda d=diag, f=finished: d.write(f, root))
    for what, task in interp_tasks(by_role["main"], root):
        step(what, task)
