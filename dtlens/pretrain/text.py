"""The embedded *language* backbone: a GPT-2-family (LayerNorm, gelu_new) character-level causal
LM of MINI's size, trained on the English text that ships with Python: the standard library's
documentation topics (`pydoc_data.topics.topics`, 79 topics, ~0.46 M characters).

Tokens are characters: newline, printable ASCII and one unknown token (97 symbols). A fixed 10% of
the characters, as whole topics, is held out (the same topics for every seed).
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from dtlens.model.config import MINI, BackboneConfig
from dtlens.pretrain import STEPS
from dtlens.pretrain.loop import Corpus, Result, Settings, pretrain

FAMILY = "gpt2"
N_CTX = 128
BATCH_SIZE = 32
LR = 2e-3
SYMBOLS = "\n" + "".join(map(chr, range(32, 127)))
HELDOUT_FRACTION = 0.1
CORPUS = "pydoc_data.topics.topics (Python standard library documentation topics)"


class CharTokenizer:
    """Characters to ids: `symbols[i]` is id i; anything else is the unknown id len(symbols)."""

    def __init__(self, symbols: str = SYMBOLS) -> None:
        if max(map(ord, symbols)) > 127 or len(set(symbols)) != len(symbols):
            raise ValueError("symbols must be distinct ASCII characters")
        self.symbols = symbols
        self.unk = len(symbols)
        self._table = np.full(128, self.unk, dtype=np.int64)
        self._table[[ord(c) for c in symbols]] = np.arange(len(symbols))

    @property
    def d_vocab(self) -> int:
        return len(self.symbols) + 1

    def encode(self, text: str) -> Int[Tensor, " n"]:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.where(codes < 128, self._table[np.minimum(codes, 127)], self.unk)
        return torch.from_numpy(ids)

    def decode(self, ids: Tensor) -> str:
        return "".join(self.symbols[i] if i < self.unk else "\ufffd" for i in ids.tolist())


def split_topics(
    topics: dict[str, str], fraction: float = HELDOUT_FRACTION
) -> tuple[list[str], list[str]]:
    """(train, held-out) topic names: whole topics, in a fixed shuffled order, are held out until
    they hold `fraction` of the characters."""
    names = sorted(topics)
    random.Random(0).shuffle(names)
    total, held = sum(map(len, topics.values())), 0
    for i, name in enumerate(names):
        if held >= fraction * total:
            return sorted(names[i:]), sorted(names[:i])
        held += len(topics[name])
    raise ValueError("fraction leaves nothing to train on")


def corpus(n_ctx: int = N_CTX) -> Corpus:
    """Training windows at every offset of the training topics; held-out windows side by side."""
    from pydoc_data.topics import topics

    tok = CharTokenizer()
    train_names, heldout_names = split_topics(topics)
    train = tok.encode("\n".join(topics[n] for n in train_names))
    heldout = tok.encode("\n".join(topics[n] for n in heldout_names))
    return Corpus(
        train=train.unfold(0, n_ctx + 1, 1),
        heldout=heldout.unfold(0, n_ctx + 1, n_ctx),
        train_tokens=train,
        d_vocab=tok.d_vocab,
        meta={
            "corpus": CORPUS,
            "tokenizer": "characters",
            "vocabulary": {"symbols": SYMBOLS, "unknown": tok.unk},
            "heldout_topics": heldout_names,
        },
    )


def build(
    steps: int = STEPS["text"],
    seed: int = 0,
    out: Path | None = None,
    size: BackboneConfig = MINI,
    batch_size: int = BATCH_SIZE,
    n_ctx: int = N_CTX,
    progress: bool = True,
) -> Result:
    """Pretrain the language backbone and save it to `out` (default: the dtlens cache)."""
    return pretrain(
        "text",
        FAMILY,
        dataclasses.replace(size, normalization_type="LN", act_fn="gelu_new"),
        lambda: corpus(n_ctx),
        Settings(steps=steps, seed=seed, batch_size=batch_size, lr=LR),
        out,
        progress,
    )
