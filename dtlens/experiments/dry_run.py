"""`dtlens reproduce --dry-run`: the plan, its projected wall time and disk use; writes nothing.

Time: a few training steps of each model size (architecture x context length) at the plan's
batch size, timed on the chosen device and precision, and one evaluation forward pass of each;
a run then takes epochs x steps x its step time plus, per evaluation, `eval_max_steps` forward
passes (an upper bound: episodes may end sooner). Runs are spread over the cluster's workers;
diagnostics are listed, not timed. Disk: each run's kept checkpoints and optimiser state from
its parameter count, plus the CKA captures of the K=20 runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from dtlens.data.dataset import OfflineDataset
from dtlens.data.registry import load_dataset
from dtlens.data.windows import WindowSampler
from dtlens.diagnostics.registry import DIAGNOSTICS
from dtlens.experiments.preset import Preset
from dtlens.experiments.reproduce import Plan, plan
from dtlens.experiments.runs import RunSpec, choose_cluster
from dtlens.model.config import BackboneConfig, DTConfig
from dtlens.model.dt import DecisionTransformer
from dtlens.model.inits import backbone_spec
from dtlens.train.config import TrainConfig
from dtlens.train.device import check_device
from dtlens.train.loop import train_step
from dtlens.train.precision import autocast

TIMED_STEPS = 2  # after one untimed warm-up step
FLOAT32 = 4  # bytes
ADAM_MOMENTS = 2  # AdamW keeps two float32 tensors per parameter
GB = 1e9


@dataclass(frozen=True)
class StepTime:
    """Measured seconds of one training step and one evaluation forward pass of a model size."""

    size: BackboneConfig
    context_len: int
    params: int
    step_s: float
    eval_forward_s: float


@dataclass(frozen=True)
class PlannedRun:
    """One run of the plan with the step time of its model size."""

    task: str
    spec: RunSpec
    roles: str
    time: StepTime

    @property
    def cfg(self) -> TrainConfig:
        return self.spec.cfg

    @property
    def checkpoints(self) -> list[int]:
        """The epochs whose checkpoints remain when the run is done."""
        c = self.cfg
        kept = range(c.epochs + 1) if c.keep_epochs is None else c.keep_epochs
        return sorted({e for e in kept if e <= c.epochs} | {c.epochs})

    @property
    def seconds(self) -> float:
        c, t = self.cfg, self.time
        eval_s = c.evaluations * c.eval_max_steps * t.eval_forward_s
        return c.epochs * c.steps_per_epoch * t.step_s + eval_s

    @property
    def disk_bytes(self) -> int:
        c, t = self.cfg, self.time
        weights = len(self.checkpoints) * t.params * FLOAT32
        state = ADAM_MOMENTS * t.params * FLOAT32
        captures = 0
        if self.roles.startswith("main"):  # CKA: tokens + each block's output, epochs 0 and last
            sites = t.size.n_layers + 1
            captures = 2 * c.probe_size * sites * 3 * c.context_len * t.size.d_model * FLOAT32
        return weights + state + captures


@dataclass(frozen=True)
class DryRun:
    """The whole plan, its measured step times, and the workers its runs share."""

    runs: list[PlannedRun]
    times: list[StepTime]
    diagnostics: list[tuple[str, str, int]]  # (task, diagnostic, how many results)
    device: str
    workers: int
    cuts: dict[str, tuple[str, ...]] = field(default_factory=dict)  # `Preset.cuts`
    cut_note: str = ""  # `Preset.cut_note`

    @property
    def run_seconds(self) -> float:
        return sum(r.seconds for r in self.runs)

    @property
    def wall_seconds(self) -> float:
        """Run time spread over the workers, never below the longest run."""
        longest = max((r.seconds for r in self.runs), default=0.0)
        return max(self.run_seconds / max(1, self.workers), longest)

    @property
    def disk_bytes(self) -> int:
        return sum(r.disk_bytes for r in self.runs)

    def lines(self) -> list[str]:
        """The plan: per task its runs (steps, evaluations, kept checkpoints, time, disk) and
        diagnostics and what is cut there; then the measured step time of each model size."""
        out = [f"cuts: {self.cut_note}"] if self.cut_note else []
        for task in dict.fromkeys(r.task for r in self.runs):
            runs = [r for r in self.runs if r.task == task]
            out.append(f"{task}: {len(runs)} fine-tuning runs")
            if self.cuts.get(task):
                out.append(f"  cut (the preset's rule, above): {', '.join(self.cuts[task])}")
            width = max(len(r.spec.name) for r in runs)
            for r in runs:
                c = r.cfg
                out.append(
                    f"  {r.spec.name:<{width}}  {c.epochs} x {c.steps_per_epoch} steps of "
                    f"{c.batch_size}, {c.evaluations} x {c.eval_episodes} eval episodes of "
                    f"<= {c.eval_max_steps} steps, keeps {','.join(map(str, r.checkpoints))}, "
                    f"{_duration(r.seconds)}, {r.disk_bytes / GB:.2f} GB  [{r.roles}]"
                )
            diagnostics = [f"{name} x{n}" for t, name, n in self.diagnostics if t == task]
            out.append(f"  diagnostics: {', '.join(diagnostics)}")
            seconds = sum(r.seconds for r in runs)
            out.append(
                f"  {task} projected: {_duration(seconds)} of run time, about "
                f"{_duration(seconds / max(1, self.workers))} on {self.workers} worker(s)"
            )
        out.append(f"step times measured on {self.device}:")
        for t in self.times:
            out.append(
                f"  {_size_name(t.size)}, K={t.context_len}, {t.params / 1e6:.1f} M parameters: "
                f"{t.step_s:.3f} s / step, {t.eval_forward_s * 1e3:.1f} ms / evaluation forward"
            )
        return out

    def summary(self) -> str:
        return (
            f"{len(self.runs)} runs, {sum(r.cfg.epochs * r.cfg.steps_per_epoch for r in self.runs)}"
            f" steps: {_duration(self.run_seconds)} of run time, about "
            f"{_duration(self.wall_seconds)} on {self.workers} worker(s) ({self.device}), "
            f"diagnostics extra; disk about {self.disk_bytes / GB:.1f} GB"
        )


def dry_run(preset: Preset, workers: int | None = None, scheduler: str | None = None) -> DryRun:
    """Plan `preset`, time each model size on its device, project time and disk; writes
    nothing (backbones are read, datasets loaded)."""
    device = check_device(preset.train.device)
    plans = plan(preset)
    timer = _Timer(device, preset.train.precision)
    runs = []
    for p in plans:
        dataset = load_dataset(preset.datasets[p.label], env_id=preset.env_ids.get(p.label))
        roles = _roles(p)
        for spec in p.specs():
            runs.append(PlannedRun(p.label, spec, roles[spec.name], timer.time(spec.cfg, dataset)))
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    choice = choose_cluster(preset.train.device, workers, scheduler, gpus)
    return DryRun(
        runs,
        list(timer.times.values()),
        _diagnostics(preset, plans),
        device,
        max(1, choice.workers),
        preset.cuts,
        preset.cut_note,
    )


def _roles(p: Plan) -> dict[str, str]:
    """Run name -> the roles it plays, e.g. 'main:language, K20:language'."""
    roles: dict[str, list[str]] = {s.name: [] for s in p.specs()}
    for kind, runs in (
        ("main", p.main),
        ("no-context", p.no_context),
        ("no-clip", p.no_clip),
        ("block-swap", p.block_swap),
    ):
        for key, spec in runs.items():
            k = f" K={key.context}" if kind == "no-context" else ""
            roles[spec.name].append(f"{kind} {key.role}{k}")
    return {name: ", ".join(r) for name, r in roles.items()}


def _diagnostics(preset: Preset, plans: list[Plan]) -> list[tuple[str, str, int]]:
    rows = []
    for p in plans:
        for scope in ("run", "study"):
            for name, diag in DIAGNOSTICS.items():
                if diag.scope == scope and diag.reads is not None:
                    runs = len(diag.reads.select(p.group(diag.reads.group)))
                    rows.append((p.label, name, runs if scope == "run" else 1))
    return rows


class _Timer:
    """Step times by (architecture, K), each measured once, on one model per architecture."""

    def __init__(self, device: str, precision: str):
        self.device, self.precision = device, precision
        self.sizes: dict[str, BackboneConfig] = {}  # init -> its architecture
        self.models: dict[str, tuple[DecisionTransformer, OfflineDataset]] = {}
        self.times: dict[tuple[str, int], StepTime] = {}  # by (repr of the size, K)

    def time(self, cfg: TrainConfig, dataset: OfflineDataset) -> StepTime:
        """The step time of `cfg`'s model size (a donor's block keeps the random size)."""
        init = repr(cfg.size) if cfg.init == "random" else f"{cfg.init} {cfg.imagegpt_norm}"
        if init not in self.sizes:  # the header alone: the weights do not change the time
            self.sizes[init] = backbone_spec(
                cfg.init, size=cfg.size, imagegpt_norm=cfg.imagegpt_norm
            )
        size = self.sizes[init]
        if repr(size) not in self.models:
            dt_cfg = DTConfig(
                state_dim=dataset.obs_dim,
                act_dim=dataset.act_dim,
                backbone=size,
                max_ep_len=cfg.dt.max_ep_len,
            )
            model = DecisionTransformer(dt_cfg, seed=0)
            self.models[repr(size)] = (model.to(self.device), dataset)
        key = (repr(size), cfg.context_len)
        if key not in self.times:
            self.times[key] = self._measure(size, cfg, *self.models[repr(size)])
        return self.times[key]

    def _measure(
        self, size: BackboneConfig, cfg: TrainConfig, model: DecisionTransformer, dataset
    ) -> StepTime:
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
        sampler = WindowSampler(
            dataset,
            context_len=cfg.context_len,
            rtg_scale=cfg.rtg_scale,
            max_ep_len=cfg.dt.max_ep_len,
        )
        rng = np.random.default_rng(0)
        timed = cfg.replace(precision=self.precision)
        seconds = []
        for _ in range(TIMED_STEPS + 1):
            batch = sampler.sample(cfg.batch_size, rng).to(self.device)
            t0 = time.perf_counter()
            train_step(model, optimizer, batch, timed, cfg.lr, self.device)
            self._sync()
            seconds.append(time.perf_counter() - t0)
        step_s = float(np.median(seconds[1:]))
        model.eval()
        batch = sampler.sample(max(1, cfg.eval_episodes), rng).to(self.device)
        inputs = (batch.states, batch.actions, batch.returns_to_go, batch.timesteps)
        with torch.inference_mode(), autocast(self.device, self.precision):
            model(*inputs)  # warm-up
            t0 = time.perf_counter()
            model(*inputs)
            self._sync()
            forward_s = time.perf_counter() - t0
        params = sum(p.numel() for p in model.parameters())
        return StepTime(size, cfg.context_len, params, step_s, forward_s)

    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()


def _size_name(size: BackboneConfig) -> str:
    return f"{size.n_layers} x {size.d_model}, {size.n_heads} heads, {size.act_fn}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h" if seconds < 72 * 3600 else f"{seconds / 86400:.1f} days"
