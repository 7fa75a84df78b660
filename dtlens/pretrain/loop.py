"""Next-token pretraining shared by the language and image backbones: the corpus both hand in,
the seeded AdamW loop, the held-out and unigram losses, and the saved file with its record."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Int
from safetensors import safe_open
from torch import Tensor
from transformer_lens import HookedTransformer

from dtlens.errors import DtlensError
from dtlens.io import load_tensors, save_json, save_tensors, write_atomic
from dtlens.model.backbones import init_gpt2_, load_params, new_backbone, save_backbone
from dtlens.model.config import BackboneConfig
from dtlens.paths import backbone_cache_path
from dtlens.stopping import stop_signal


@dataclass(frozen=True)
class Corpus:
    """Token rows of n_ctx + 1 tokens: the model reads the first n_ctx, predicts the last n_ctx."""

    train: Int[Tensor, "n ctx_plus_1"]
    heldout: Int[Tensor, "m ctx_plus_1"]
    #: The training tokens the unigram baseline counts.
    train_tokens: Int[Tensor, " t"]
    d_vocab: int
    #: What to record about the corpus and its tokeniser (enough to rebuild both).
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_ctx(self) -> int:
        return self.train.shape[1] - 1


@dataclass(frozen=True)
class Settings:
    steps: int
    seed: int = 0
    batch_size: int = 32
    lr: float = 2e-3
    #: Linear warm-up over this fraction of the steps, then cosine decay to lr / 10.
    warmup: float = 0.05
    weight_decay: float = 0.01


@dataclass(frozen=True)
class Result:
    path: Path
    meta: dict[str, Any]

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size


def gpt2_family(size: BackboneConfig) -> BackboneConfig:
    """`size` with GPT-2's LayerNorm and gelu_new: the text and synthetic backbones."""
    return dataclasses.replace(size, normalization_type="LN", act_fn="gelu_new")


def unigram_loss(train_tokens: Tensor, targets: Tensor, d_vocab: int) -> float:
    """Cross-entropy (nats/token) of `targets` under the add-one smoothed unigram distribution
    of `train_tokens`."""
    counts = torch.bincount(train_tokens.flatten().long(), minlength=d_vocab).double() + 1.0
    log_p = (counts / counts.sum()).log()
    return float(-log_p[targets.flatten().long()].mean())


def lm_loss(model: HookedTransformer, rows: Tensor) -> Tensor:
    """Mean next-token cross-entropy of rows (B, n_ctx + 1) under TransformerLens's forward."""
    logits = model(rows[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten())


@torch.no_grad()
def heldout_loss(model: HookedTransformer, rows: Tensor, batch_size: int = 64) -> float:
    """Mean next-token cross-entropy (nats/token) over every target of `rows`."""
    total = sum(
        float(lm_loss(model, batch)) * batch[:, 1:].numel() for batch in rows.split(batch_size)
    )
    return total / rows[:, 1:].numel()


def train(
    model: HookedTransformer, corpus: Corpus, settings: Settings, progress: bool = True
) -> float:
    """AdamW with warm-up and cosine decay on random training rows; returns the last loss."""
    gen = torch.Generator().manual_seed(settings.seed)
    opt = torch.optim.AdamW(
        model.parameters(), lr=settings.lr, betas=(0.9, 0.95), weight_decay=settings.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(settings))
    model.train()
    with _Progress(settings.steps, enabled=progress) as bar:
        for _ in range(settings.steps):
            idx = torch.randint(0, len(corpus.train), (settings.batch_size,), generator=gen)
            loss = lm_loss(model, corpus.train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            bar.advance(loss.item())
    model.eval()
    return loss.item()


def pretrain(
    kind: str,
    family: str,
    cfg: BackboneConfig,
    make_corpus: Callable[[], Corpus],
    settings: Settings,
    out: Path | None = None,
    progress: bool = True,
    flags: str = "",
) -> Result:
    """Build the corpus, train a fresh `cfg` backbone on it, evaluate it, and save it with its
    record to `out` (default: the dtlens cache). `flags`: the corpus's options in the command."""
    start = time.perf_counter()
    command = f"dtlens pretrain {kind} {flags} --steps {settings.steps} --seed {settings.seed}"
    if out is not None:
        command += f" --out {out}"
    corpus = make_corpus()
    model = new_backbone(cfg, d_vocab=corpus.d_vocab, n_ctx=corpus.n_ctx)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        init_gpt2_(model)
    train_loss = train(model, corpus, settings, progress)
    meta = {
        "family": family,
        **corpus.meta,
        "steps": settings.steps,
        "seed": settings.seed,
        "batch_size": settings.batch_size,
        "lr": settings.lr,
        "train_loss": round(train_loss, 4),
        "heldout_loss": round(heldout_loss(model, corpus.heldout), 4),
        "unigram_loss": round(
            unigram_loss(corpus.train_tokens, corpus.heldout[:, 1:], corpus.d_vocab), 4
        ),
        "heldout_tokens": corpus.heldout[:, 1:].numel(),
        "torch_threads": torch.get_num_threads(),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "command": command,
    }
    path = Path(out) if out is not None else backbone_cache_path(kind)
    return Result(save_backbone(model, path, **meta), meta)


def _schedule(settings: Settings) -> Callable[[int], float]:
    warmup = max(1, round(settings.warmup * settings.steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        done = (step - warmup) / max(1, settings.steps - warmup)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * min(done, 1.0)))

    return factor


class _Progress:
    """A rich progress bar on stderr showing a smoothed training loss."""

    def __init__(self, total: int, enabled: bool) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("pretraining"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} loss {task.fields[loss]:.3f}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
            disable=not enabled,
        )
        self.task = self.bar.add_task("pretraining", total=total, loss=float("nan"))
        self.smoothed: float | None = None

    def __enter__(self) -> _Progress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def advance(self, loss: float) -> None:
        self.smoothed = loss if self.smoothed is None else 0.95 * self.smoothed + 0.05 * loss
        self.bar.update(self.task, advance=1, loss=self.smoothed)


@dataclass(frozen=True)
class LongRun:
    """A pretraining run that goes until its held-out loss plateaus, resumable at every evaluation.

    Plateau: the best held-out loss (evaluated every `eval_every` steps on the whole held-out
    split) has not improved by `min_delta` nats for `patience` evaluations in a row, after at least
    `min_tokens` training tokens. The first `anneals` plateaus divide the learning rate by 10 and
    training goes on; the next one stops it. With `anneal_after_epoch`, the first anneal comes at
    the latest once the run has seen as many tokens as its training split holds (and
    `min_tokens`): a compute cap on the constant learning rate, whose loss on a small model keeps
    falling slowly long after one pass over the corpus. With `max_tokens` the run trains for that
    many tokens instead (no plateau rule: a control matched to another backbone's budget).
    Batches depend on (seed, step) only, so a resumed run draws the batches the uninterrupted one
    would have.
    """

    seed: int = 0
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 200
    weight_decay: float = 0.01
    eval_every: int = 400
    patience: int = 4
    min_delta: float = 0.01
    anneals: int = 1
    min_tokens: int = 20_000_000
    max_tokens: int | None = None
    anneal_after_epoch: bool = True

    def rule(self) -> str:
        if self.max_tokens is not None:
            every = f"held-out loss every {self.eval_every} steps"
            return f"train for {self.max_tokens:,} tokens ({every})"
        return (
            f"stop when the best held-out loss (every {self.eval_every} steps) has not improved by "
            f"{self.min_delta} nats for {self.patience} evaluations after >= {self.min_tokens:,} "
            f"tokens; the first {self.anneals} such plateau(s) divide the learning rate by 10"
            + ", the first at the latest after one epoch"
            * self.anneal_after_epoch
        )


CHECKPOINT = "checkpoint.safetensors"
CURVE = "curve.json"
TOKENIZER = "tokenizer.json"


def pretrain_until_plateau(
    kind: str,
    family: str,
    cfg: BackboneConfig,
    corpus: Corpus,
    run: LongRun,
    workdir: Path,
    command: str,
    out: Path | None = None,
    max_steps: int | None = None,
    log: Callable[[str], None] = print,
) -> Result | None:
    """Train (or resume from `workdir`) until the plateau rule stops the run, then save the
    backbone with its pretraining record to `out` (default: the dtlens cache) and return it.
    Stopped earlier by `max_steps` (a total, resumed steps included): the checkpoint stays, None.
    """
    model = new_backbone(cfg, d_vocab=corpus.d_vocab, n_ctx=corpus.n_ctx)
    opt = torch.optim.AdamW(
        model.parameters(), lr=run.lr, betas=(0.9, 0.95), weight_decay=run.weight_decay
    )
    # the token budget may grow (the learning rate does not decay) and the epoch cap only moves
    # the first anneal, so neither is part of a run's identity; nor are options unset
    # (checkpoints made before they existed resume)
    settings = {k: v for k, v in dataclasses.asdict(run).items() if v is not None}
    settings.pop("max_tokens", None)
    settings.pop("anneal_after_epoch")
    identity = {"kind": kind, "run": settings, "corpus": corpus.meta}
    state = _resume(model, opt, workdir / CHECKPOINT, identity)
    if state is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(run.seed)
            init_gpt2_(model)
        state = {"step": 0, "tokens_seen": 0, "lr_scale": 1.0, "best": math.inf, "since_best": 0,
                 "anneals_done": 0, "done": False, "seconds": 0.0, "curve": []}  # fmt: skip
        log(f"{kind}: fresh run in {workdir}; {run.rule()}")
    else:
        log(f"{kind}: resumed at step {state['step']:,} ({state['tokens_seen']:,} tokens)")
        if run.max_tokens is not None:  # a budget may have grown
            state["done"] = state["tokens_seen"] >= run.max_tokens
    unigram = unigram_loss(corpus.train_tokens, corpus.heldout[:, 1:], corpus.d_vocab)
    model.train()
    losses: list[float] = []
    tic = time.perf_counter()
    with stop_signal() as stop:
        while not state["done"] and (max_steps is None or state["step"] < max_steps):
            if stop.requested:  # checkpoint where we are: the same command resumes
                state["seconds"] += time.perf_counter() - tic
                _save_checkpoint(model, opt, state, identity, workdir)
                log(f"{kind}: {stop.requested} at step {state['step']:,}: checkpoint saved")
                return None
            step = state["step"]
            for group in opt.param_groups:
                group["lr"] = run.lr * min(1.0, (step + 1) / run.warmup_steps) * state["lr_scale"]
            gen = torch.Generator().manual_seed(run.seed * 1_000_003 + step)
            rows = corpus.train[
                torch.randint(0, len(corpus.train), (run.batch_size,), generator=gen)
            ]
            loss = lm_loss(model, rows.long())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            state["step"] += 1
            state["tokens_seen"] += rows[:, 1:].numel()
            spent = run.max_tokens is not None and state["tokens_seen"] >= run.max_tokens
            if state["step"] % run.eval_every and state["step"] != max_steps and not spent:
                if state["step"] % 25 == 0:
                    log(f"{kind}: step {state['step']:,} loss {sum(losses[-25:]) / 25:.3f}")
                continue
            model.eval()
            heldout = heldout_loss(model, corpus.heldout)
            model.train()
            state["seconds"] += time.perf_counter() - tic
            tic = time.perf_counter()
            point = {"step": state["step"], "tokens_seen": state["tokens_seen"],
                     "train_loss": round(sum(losses) / len(losses), 4),
                     "heldout_loss": round(heldout, 4), "lr": opt.param_groups[0]["lr"],
                     "seconds": round(state["seconds"], 1)}  # fmt: skip
            losses.clear()
            state["curve"].append(point)
            if run.max_tokens is None:
                _advance_plateau(state, heldout, run, epoch_tokens=corpus.train_tokens.numel())
            else:
                state["done"] = spent
            _save_checkpoint(model, opt, state, identity, workdir)
            log(
                f"{kind}: step {point['step']:,} tokens {point['tokens_seen']:,} train "
                f"{point['train_loss']:.3f} held-out {heldout:.3f} (ppl {math.exp(heldout):.1f}, "
                f"unigram {math.exp(unigram):.1f}) lr {point['lr']:.2e} "
                f"{state['seconds'] / state['step']:.2f} s/step"
                + (f" DONE ({run.rule()})" * state["done"])
            )
    model.eval()
    if not state["done"]:
        return None
    meta = {
        "family": family,
        **corpus.meta,
        "seed": run.seed,
        "batch_size": run.batch_size,
        "lr": run.lr,
        "steps": state["step"],
        "stop_rule": run.rule(),
        "tokens_seen": state["tokens_seen"],
        "train_loss": state["curve"][-1]["train_loss"],
        "heldout_loss": state["curve"][-1]["heldout_loss"],
        "unigram_loss": round(unigram, 4),
        "heldout_tokens": corpus.heldout[:, 1:].numel(),
        "curve_tail": state["curve"][-5:],
        "wall_seconds": round(state["seconds"], 1),
        "command": command,
    }
    path = Path(out) if out is not None else backbone_cache_path(kind)
    result = Result(save_backbone(model, path, **meta), meta)
    for name in (CURVE, TOKENIZER):  # the learning curve and the tokenizer go with the weights
        if (workdir / name).is_file():
            write_atomic(
                path.with_name(f"{path.stem}.{name}"), partial(shutil.copyfile, workdir / name)
            )
    return result


def _advance_plateau(state: dict, heldout: float, run: LongRun, epoch_tokens: int) -> None:
    improved = heldout < state["best"] - run.min_delta
    state["best"] = min(state["best"], heldout)
    state["since_best"] = 0 if improved else state["since_best"] + 1
    if state["tokens_seen"] < run.min_tokens:
        return
    capped = run.anneal_after_epoch and state["anneals_done"] == 0 < run.anneals
    if state["since_best"] < run.patience and not (capped and state["tokens_seen"] >= epoch_tokens):
        return
    if state["anneals_done"] < run.anneals:
        state["anneals_done"] += 1
        state["lr_scale"] /= 10
        state["since_best"] = 0
    else:
        state["done"] = True


def _save_checkpoint(
    model: HookedTransformer, opt: torch.optim.Optimizer, state: dict, identity: dict, workdir: Path
) -> None:
    """Weights, AdamW's moments and the run's state in one safetensors file (atomic), and the
    learning curve as JSON beside it."""
    names = {id(p): name for name, p in model.named_parameters()}
    tensors = {f"model.{name}": p for name, p in model.named_parameters()}
    for p, s in opt.state.items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            tensors[f"adam.{key}.{names[id(p)]}"] = torch.as_tensor(s[key]).reshape(-1)
    header = json.dumps({"kind": "pretrain-checkpoint", "identity": identity, "state": state})
    save_tensors(tensors, workdir / CHECKPOINT, metadata={"dtlens": header})
    save_json({"identity": identity, "curve": state["curve"]}, workdir / CURVE)


def _resume(
    model: HookedTransformer, opt: torch.optim.Optimizer, path: Path, identity: dict
) -> dict | None:
    if not path.is_file():
        return None
    header = json.loads(safe_open(str(path), framework="pt").metadata()["dtlens"])
    if header["identity"] != json.loads(json.dumps(identity)):
        raise DtlensError(
            f"{path}: checkpoint of another run (corpus or settings differ); "
            "remove its folder to start afresh"
        )
    tensors = load_tensors(path)
    load_params(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, str(path))
    for name, p in model.named_parameters():
        opt.state[p] = {
            "step": tensors[f"adam.step.{name}"].reshape(()),
            "exp_avg": tensors[f"adam.exp_avg.{name}"].reshape(p.shape),
            "exp_avg_sq": tensors[f"adam.exp_avg_sq.{name}"].reshape(p.shape),
        }
    return header["state"]
