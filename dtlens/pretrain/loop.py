"""Next-token pretraining shared by the language and image backbones: the corpus both hand in,
the seeded AdamW loop, the held-out and unigram losses, and the saved file with its record."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Int
from torch import Tensor
from transformer_lens import HookedTransformer

from dtlens.model.backbones import init_gpt2_, new_backbone, save_backbone
from dtlens.model.config import BackboneConfig
from dtlens.paths import backbone_cache_path


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


def unigram_loss(train_tokens: Tensor, targets: Tensor, d_vocab: int) -> float:
    """Cross-entropy (nats/token) of `targets` under the add-one smoothed unigram distribution
    of `train_tokens`."""
    counts = torch.bincount(train_tokens.flatten(), minlength=d_vocab).double() + 1.0
    log_p = (counts / counts.sum()).log()
    return float(-log_p[targets.flatten()].mean())


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
) -> Result:
    """Build the corpus, train a fresh `cfg` backbone on it, evaluate it, and save it with its
    record to `out` (default: the dtlens cache)."""
    start = time.perf_counter()
    command = f"dtlens pretrain {kind} --steps {settings.steps} --seed {settings.seed}"
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
