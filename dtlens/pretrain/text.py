"""The embedded *language* backbone: a GPT-2-family (LayerNorm, gelu_new) causal LM of MINI's size.

`build_until_plateau` (`dtlens pretrain text`): byte-level BPE (4096 tokens, trained by project
code) on ~76 M characters of English documentation that Debian ships (`dtlens.pretrain.english`),
trained until its held-out loss plateaus (`dtlens.pretrain.loop.LongRun`), resumable.

`build` (`dtlens pretrain text --corpus pydoc`, the first embedded asset): a character-level LM on
the standard library's documentation topics (`pydoc_data.topics.topics`, 79 topics, ~0.46 M
characters); tokens are newline, printable ASCII and one unknown token (97 symbols), a fixed 10% of
the characters, as whole topics, held out.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Int
from safetensors import safe_open
from torch import Tensor

from dtlens.io import file_sha256, load_tensors, save_tensors
from dtlens.model.config import MINI, BackboneConfig
from dtlens.paths import cache_dir
from dtlens.pretrain import STEPS, english
from dtlens.pretrain.loop import (
    TOKENIZER,
    Corpus,
    LongRun,
    Result,
    Settings,
    gpt2_family,
    pretrain,
    pretrain_until_plateau,
)

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
        gpt2_family(size),
        lambda: corpus(n_ctx),
        Settings(steps=steps, seed=seed, batch_size=batch_size, lr=LR),
        out,
        progress,
        flags="--corpus pydoc",
    )


def english_corpus(
    workdir: Path, n_ctx: int = N_CTX, vocab_size: int = english.VOCAB_SIZE
) -> Corpus:
    """The Debian documentation corpus as BPE tokens: training windows at every offset of the
    training stream, held-out windows side by side. The tokenizer and the token streams are
    made once and kept in `workdir` (tokenizer.json, tokens.safetensors)."""
    from tokenizers import Tokenizer

    tokens_path, tok_path = workdir / "tokens.safetensors", workdir / TOKENIZER
    if not tokens_path.is_file():
        docs = english.split()
        tok = english.train_tokenizer(docs.train, vocab_size)
        tok_path.parent.mkdir(parents=True, exist_ok=True)
        tok.save(str(tok_path))
        streams = {"train": english.encode(tok, docs.train),
                   "heldout": english.encode(tok, docs.heldout)}  # fmt: skip
        info = {"sha256": docs.sha256, "files": docs.files, "characters": docs.chars,
                "heldout_documents": len(docs.heldout)}  # fmt: skip
        save_tensors(streams, tokens_path, metadata={"corpus": json.dumps(info)})
    tok = Tokenizer.from_file(str(tok_path))
    streams = load_tensors(tokens_path)
    with safe_open(str(tokens_path), framework="pt") as f:
        info = json.loads(f.metadata()["corpus"])
    train, heldout = streams["train"], streams["heldout"]
    return Corpus(
        train=train.unfold(0, n_ctx + 1, 1),
        heldout=heldout.long().unfold(0, n_ctx + 1, n_ctx),
        train_tokens=train,
        d_vocab=tok.get_vocab_size(),
        meta={
            "corpus": ENGLISH_CORPUS,
            "sources": [dataclasses.asdict(s) for s in english.SOURCES],
            "corpus_sha256": info["sha256"],
            "corpus_files": info["files"],
            "corpus_characters": info["characters"],
            "corpus_tokens": len(train) + len(heldout),
            "heldout_documents": info["heldout_documents"],
            "tokenizer": f"byte-level BPE, {tok.get_vocab_size()} tokens (tokenizer.json)",
            "tokenizer_sha256": file_sha256(tok_path),
        },
    )


ENGLISH_CORPUS = (
    "Debian 12 English documentation: linux-doc-6.12, python3.11-doc, perl-doc, dict-gcide "
    "(dtlens.pretrain.english)"
)


def build_until_plateau(
    run: LongRun | None = None,
    out: Path | None = None,
    size: BackboneConfig = MINI,
    n_ctx: int = N_CTX,
    workdir: Path | None = None,
    max_steps: int | None = None,
    command: str = "dtlens pretrain text",
    log=print,
) -> Result | None:
    """Pretrain (or resume) the language backbone on the Debian corpus until its held-out loss
    plateaus; None while it has not (stopped by `max_steps`)."""
    workdir = workdir or cache_dir("pretrain") / "text"
    run = run or LongRun()
    return pretrain_until_plateau(
        "text",
        FAMILY,
        gpt2_family(size),
        english_corpus(workdir, n_ctx),
        run,
        workdir,
        command,
        out,
        max_steps,
        log,
    )
