"""The embedded *synthetic* backbone: the language backbone's architecture (GPT-2 family, MINI's
size) pretrained on token sequences from a random Markov chain, the control of Wang et al. (ICLR
2024, "Pre-training with Synthetic Data Helps Offline Reinforcement Learning"), who found such
pretraining matches Wikipedia's for Decision Transformers.

The chain: STATES states, ORDER previous tokens as its context, each context's next-token
distribution softmax(N(0, 1) logits / TEMPERATURE), drawn once from the chain seed (0). A sequence
starts with ORDER uniform tokens. Training and held-out sequences are independent draws.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import Tensor

from dtlens.model.config import MINI, BackboneConfig
from dtlens.paths import cache_dir
from dtlens.pretrain import STEPS
from dtlens.pretrain.loop import (
    Corpus,
    LongRun,
    Result,
    Settings,
    gpt2_family,
    pretrain,
    pretrain_until_plateau,
)
from dtlens.pretrain.text import BATCH_SIZE, FAMILY, LR, N_CTX  # the text LM and its optimiser

STATES = 100
ORDER = 1
TEMPERATURE = 1.0
HELDOUT_ROWS = 256
#: Training sequences of a token-budget run: 2**18 x 128 = 33.6 M tokens, 67 MB as int16.
POOL_ROWS = 2**18


def transition_table(states: int, order: int, temperature: float, seed: int = 0) -> Tensor:
    """(states**order, states) next-token probabilities, one row per context."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(states**order, states, generator=gen, dtype=torch.float64)
    return torch.softmax(logits / temperature, dim=1)


def entropy_rate(table: Tensor, iterations: int = 1000) -> float:
    """The chain's entropy rate (nats/token): the loss of a model that knows the chain, the floor
    no LM can beat. Its stationary distribution over contexts comes from power iteration."""
    contexts, states = table.shape
    following = ((torch.arange(contexts) * states) % contexts)[:, None] + torch.arange(states)
    pi = torch.full((contexts,), 1.0 / contexts, dtype=torch.float64)
    for _ in range(iterations):
        new = torch.zeros_like(pi).index_add_(
            0, following.flatten(), (pi[:, None] * table).flatten()
        )
        converged = float((new - pi).abs().sum()) < 1e-13
        pi = new
        if converged:
            break
    return float((pi * -torch.special.xlogy(table, table).sum(1)).sum())


def sample(table: Tensor, order: int, rows: int, length: int, gen: torch.Generator) -> Tensor:
    """(rows, length) token sequences from the chain of `table`."""
    states = table.shape[1]
    out = torch.empty(rows, length, dtype=torch.long)
    out[:, :order] = torch.randint(0, states, (rows, order), generator=gen)
    powers = states ** torch.arange(order - 1, -1, -1)
    for t in range(order, length):
        context = (out[:, t - order : t] * powers).sum(1)
        out[:, t] = torch.multinomial(table[context], 1, generator=gen).squeeze(1)
    return out


def corpus(
    train_rows: int,
    states: int = STATES,
    order: int = ORDER,
    temperature: float = TEMPERATURE,
    n_ctx: int = N_CTX,
) -> Corpus:
    if states < 2 or order < 1 or temperature <= 0 or states**order > 1_000_000:
        raise ValueError("need states >= 2, order >= 1, temperature > 0, states**order <= 1e6")
    table = transition_table(states, order, temperature)
    gen = torch.Generator().manual_seed(1)
    train = sample(table, order, train_rows, n_ctx + 1, gen)
    return Corpus(
        train=train,
        heldout=sample(table, order, HELDOUT_ROWS, n_ctx + 1, gen),
        train_tokens=train,
        d_vocab=states,
        meta={
            "corpus": f"random Markov chain: {states} states, order {order}, "
            f"temperature {temperature} (Wang et al. 2024)",
            "chain": {"states": states, "order": order, "temperature": temperature},
            "entropy_rate": round(entropy_rate(table), 4),
            "tokenizer": "chain states",
        },
    )


def build(
    steps: int = STEPS["synthetic"],
    seed: int = 0,
    out: Path | None = None,
    size: BackboneConfig = MINI,
    batch_size: int = BATCH_SIZE,
    states: int = STATES,
    order: int = ORDER,
    temperature: float = TEMPERATURE,
    n_ctx: int = N_CTX,
    progress: bool = True,
) -> Result:
    """Pretrain the synthetic backbone (every step sees fresh sequences) and save it to `out`."""
    return pretrain(
        "synthetic",
        FAMILY,
        gpt2_family(size),
        lambda: corpus(steps * batch_size, states, order, temperature, n_ctx),
        Settings(steps=steps, seed=seed, batch_size=batch_size, lr=LR),
        out,
        progress,
        flags=f"--states {states} --order {order} --temperature {temperature}",
    )


def build_for_tokens(
    tokens: int,
    run: LongRun | None = None,
    out: Path | None = None,
    states: int = STATES,
    order: int = ORDER,
    temperature: float = TEMPERATURE,
    size: BackboneConfig = MINI,
    n_ctx: int = N_CTX,
    workdir: Path | None = None,
    max_steps: int | None = None,
    command: str = "dtlens pretrain synthetic",
    log=print,
    pool_rows: int = POOL_ROWS,
) -> Result | None:
    """Pretrain (or resume) the synthetic backbone for `tokens` training tokens with the language
    backbone's optimiser (`LongRun`), so that it is the language backbone's control on the same
    budget; None while it has not finished (stopped by `max_steps`). Batches are drawn from a pool
    of `pool_rows` sequences of the chain that does not depend on the budget, so a larger budget
    continues a finished run exactly."""
    run = dataclasses.replace(run or LongRun(), max_tokens=tokens)
    workdir = workdir or cache_dir("pretrain") / "synthetic"
    chain = corpus(pool_rows, states, order, temperature, n_ctx)
    if states <= torch.iinfo(torch.int16).max:  # a quarter of the memory (the loop casts rows)
        rows = chain.train.to(torch.int16)
        chain = dataclasses.replace(chain, train=rows, train_tokens=rows)
    return pretrain_until_plateau(
        "synthetic",
        FAMILY,
        gpt2_family(size),
        chain,
        run,
        workdir,
        command,
        out,
        max_steps,
        log,
    )
