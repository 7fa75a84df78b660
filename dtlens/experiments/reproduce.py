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

from dtlens.errors import DtlensError
from dtlens.experiments.presets import Preset
from dtlens.experiments.runs import RunOutcome, RunSpec, execute
from dtlens.experiments.studies import (
    block_swap_specs,
    spec_for,
    write_block_study,
    write_context_study,
)
from dtlens.io import load_json, save_json, save_netcdf

Log = Callable[[str], None]


@dataclass
class Plan:
    """The runs of one dataset, by role."""

    label: str
    main: dict[tuple[str, int], RunSpec]  # (init, seed) -> K=20 run
    no_context: dict[tuple[str, int], RunSpec]  # (init, K) -> run, seed 0
    no_clip: dict[str, RunSpec]  # init -> K=20 run without gradient clipping
    block_swap: dict[str, RunSpec] = field(default_factory=dict)  # variant -> K=1 run

    def roles(self) -> dict:
        """Run names by role, as the report reads them (JSON keys are strings)."""
        return {
            "main": {f"{i}|{s}": spec.name for (i, s), spec in self.main.items()},
            "no_context": {f"{i}|{k}": spec.name for (i, k), spec in self.no_context.items()},
            "no_clip": {i: spec.name for i, spec in self.no_clip.items()},
            "block_swap": {v: spec.name for v, spec in self.block_swap.items()},
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
    plans = []
    for label, dataset in preset.datasets.items():
        base = preset.train.replace(
            dataset=dataset, env_id=preset.env_ids.get(label), probe_size=preset.probe_size
        )
        seed0 = preset.seeds[0]
        main = {
            (init, seed): spec_for(base.replace(init=init, seed=seed, context_len=20))
            for init in preset.inits
            for seed in preset.seeds
        }
        no_context = {
            (init, k): spec_for(base.replace(init=init, seed=seed0, context_len=k))
            for init in (preset.random, preset.language)
            for k in (1, 20)
        }
        no_clip = {
            preset.image: spec_for(base.replace(init=preset.image, seed=seed0, grad_clip=None))
        }
        swap_base = base.replace(
            seed=seed0,
            epochs=preset.block_swap_epochs.get(label, base.epochs),
            size=preset.block_swap_size,
        )
        swap = block_swap_specs(swap_base, preset.language, context=1)
        plans.append(Plan(label, main, no_context, no_clip, swap))
    return plans


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
    from dtlens.data import load_dataset
    from dtlens.model.inits import EMBEDDED

    for label, dataset in preset.datasets.items():
        t0 = time.perf_counter()
        ds = load_dataset(dataset, env_id=preset.env_ids.get(label))
        log(f"dataset {label}: {dataset} ({len(ds)} transitions, {time.perf_counter() - t0:.0f} s)")
    for init in preset.inits:
        if init in EMBEDDED:
            ensure_embedded_backbone(init, log)


def ensure_embedded_backbone(name: str, log: Log) -> None:
    from dtlens import pretrain

    try:
        pretrain.backbone_path(name)
    except DtlensError:
        import importlib

        log(f"pretraining the embedded {name} backbone (once)")
        importlib.import_module(f"dtlens.pretrain.{name}").build(progress=False)


def reproduce(
    preset: Preset,
    out: str | Path,
    workers: int = 2,
    scheduler: str | None = None,
    log: Log = print,
) -> Path:
    """Run the whole study of `preset` into `out` and write the report; returns report.md."""
    from dtlens.report.report import write_report

    out = Path(out)
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
    return write_report(out)


def _log_outcome(log: Log) -> Callable[[RunOutcome], None]:
    def on_done(o: RunOutcome) -> None:
        log(f"  {o.status:8s} {o.name} ({o.seconds:.0f} s)")

    return on_done


def analyse(preset: Preset, p: Plan, root: Path, ok: set[str], log: Log) -> None:
    """Every diagnostic of one dataset's runs; a diagnostic that fails is logged, not fatal."""
    from dtlens.diagnostics.attention_run import attention_distances, plot_attention
    from dtlens.diagnostics.gradient_run import analyse_gradients
    from dtlens.diagnostics.layer_cka import run_layer_cka
    from dtlens.diagnostics.mi_run import mutual_info_run
    from dtlens.diagnostics.weights import run_weight_change
    from dtlens.train.run import Run

    runs = root / "runs"

    def run_of(spec: RunSpec) -> Run | None:
        return Run(runs / spec.name) if spec.name in ok else None

    def step(what: str, fn: Callable[[], object]) -> None:
        t0 = time.perf_counter()
        try:
            fn()
            log(f"  {what} ({time.perf_counter() - t0:.0f} s)")
        except Exception as e:  # one broken diagnostic must not lose the others
            log(f"  {what} FAILED: {e}")

    seed0 = preset.seeds[0]
    for init in preset.inits:
        run = run_of(p.main[(init, seed0)])
        if run is None:
            continue
        step(f"CKA {run.name}", lambda r=run: run_layer_cka(r, 0, r, -1, paper_variant=True))
        step(f"weight change {run.name}", lambda r=run: run_weight_change(r))
        step(
            f"gradients {run.name}", lambda r=run: analyse_gradients(r, epoch=preset.gradient_epoch)
        )
        step(
            f"mutual information {run.name}",
            lambda r=run: mutual_info_run(r, blocks=preset.mi_blocks, seeds=preset.mi_seeds),
        )
    for init in (preset.random, preset.language):
        run = run_of(p.no_context[(init, 1)])
        if run is None:
            continue
        epochs = [e for e in preset.attention_epochs if e in run.epochs()]

        def attention(r=run, e=epochs):
            ds = attention_distances(r, e, context_len=20, paper_variant=True)
            save_netcdf(ds, r.subdir("diagnostics") / "attention.nc")
            plot_attention(ds, r.subdir("figures") / "attention.png")

        step(f"attention distance {run.name}", attention)
    context_runs = {k: r for k, s in p.no_context.items() if (r := run_of(s))}
    if context_runs:
        step("no-context comparison", lambda: write_context_study(context_runs, root))
    swap_runs = {k: r for k, s in p.block_swap.items() if (r := run_of(s))}
    if swap_runs:
        step("block-swap comparison", lambda: write_block_study(swap_runs, root))
