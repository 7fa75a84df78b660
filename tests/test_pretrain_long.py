"""The real corpora's pieces and the resumable run that stops when held-out loss plateaus."""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import os
import signal

import numpy as np
import pytest
import torch

from dtlens.errors import DtlensError
from dtlens.io import load_tensors
from dtlens.model.backbones import read_header
from dtlens.pretrain import english, fashion
from dtlens.pretrain.loop import CHECKPOINT, Corpus, LongRun, _advance_plateau
from dtlens.pretrain.loop import pretrain_until_plateau as until_plateau
from tests.conftest import TINY


def test_normalise_and_gcide_documents():
    assert english.normalise("  a \t b  \n\n\n\n  c\r\n") == "a b\n\nc"
    entry = "Word \\Word\\, n.\n   A thing.\n   [1913 Webster]\n\n"
    docs = list(english.gcide_documents(entry * 50, size=100))
    assert len(docs) > 1 and all("[1913 Webster]" not in d for d in docs)
    assert "".join(docs).count("A thing.") == 50


def test_sources_read_gzip_and_heldout_rule_is_fixed(tmp_path):
    root = tmp_path / "docs"
    (root / "translations").mkdir(parents=True)
    (root / "a.rst").write_text("Plain  text.")
    (root / "b.rst.gz").write_bytes(gzip.compress(b"Zipped\ttext."))
    (root / "translations" / "c.rst").write_text("Ignored.")
    source = english.Source("pkg", "MIT", str(root), ("**/*.rst", "**/*.rst.gz"), ("translations",))
    assert dict(english.documents((source,))) == {"pkg:a.rst": "Plain text.",
                                                  "pkg:b.rst.gz": "Zipped text."}  # fmt: skip
    names = [f"doc{i}" for i in range(2000)]
    share = sum(map(english.is_heldout, names)) / len(names)
    assert 0.005 < share < 0.02
    missing = english.Source("absent-pkg", "MIT", str(tmp_path / "nowhere"), ("*.rst",))
    with pytest.raises(DtlensError, match="apt-get install absent-pkg"):
        list(english.documents((missing,)))


def test_bpe_tokenizer_round_trips_and_compresses():
    docs = ["The quick brown fox jumps over the lazy dog. " * 20, "Pack my box with jugs. " * 20]
    tok = english.train_tokenizer(docs, vocab_size=300)
    stream = english.encode(tok, docs)
    eot = tok.token_to_id(english.EOT)
    assert eot == 0 and stream.dtype == torch.int16 and int((stream == eot).sum()) == 2
    first = stream[: int((stream == eot).nonzero()[0])]
    assert tok.decode(first.tolist()) == docs[0]
    assert len(first) < len(docs[0]) / 2


def test_palette_is_kmeans_of_the_pixels_and_tokens_round_to_it():
    pixels = np.repeat(np.array([0, 10, 200, 210], dtype=np.uint8), [1000, 1000, 500, 500])
    centres = fashion.palette(pixels, k=2)
    assert centres == pytest.approx([5.0, 205.0])
    rows = fashion.tokens(np.array([[[0, 200], [12, 255]]], dtype=np.uint8), centres)
    assert rows.tolist() == [[2, 0, 1, 0, 1]]


def test_downsample_takes_block_means():
    images = np.arange(16, dtype=np.uint8).reshape(1, 4, 4)
    assert fashion.downsample(images, side=2).tolist() == [[[2, 4], [10, 12]]]


def test_fashion_mnist_reads_if_installed():
    if not (fashion.ROOT / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("dataset-fashion-mnist is not installed")
    images = fashion.read_images("t10k")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8


def tiny_corpus() -> Corpus:
    gen = torch.Generator().manual_seed(0)
    stream = (torch.arange(4000) % 7 + torch.randint(0, 2, (4000,), generator=gen)).to(torch.int16)
    heldout = (torch.arange(400) % 7).long()
    return Corpus(
        train=stream.unfold(0, 17, 1),
        heldout=heldout.unfold(0, 17, 16),
        train_tokens=stream,
        d_vocab=8,
        meta={"corpus": "cycles"},
    )


def run_for(workdir, steps, run, out=None):
    return until_plateau("tiny", "gpt2", TINY, tiny_corpus(), run, workdir, "cmd", out, steps,
                         log=lambda line: None)  # fmt: skip


def test_resumed_run_equals_the_uninterrupted_one(tmp_path):
    run = LongRun(batch_size=4, eval_every=3, warmup_steps=2, min_tokens=10**9)
    assert run_for(tmp_path / "a", 8, run) is None
    run_for(tmp_path / "b", 5, run)
    run_for(tmp_path / "b", 8, run)
    a, b = (load_tensors(tmp_path / d / CHECKPOINT) for d in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    header = read_header(tmp_path / "b" / CHECKPOINT)
    assert header["state"]["step"] == 8 and [p["step"] for p in header["state"]["curve"]] == [
        3,
        5,
        6,
        8,
    ]
    with pytest.raises(DtlensError, match="another run"):
        run_for(tmp_path / "b", 9, LongRun(batch_size=8, eval_every=3))


def test_sigterm_checkpoints_and_the_run_resumes_unchanged(tmp_path):
    run = LongRun(batch_size=4, eval_every=3, warmup_steps=2, min_tokens=10**9)
    run_for(tmp_path / "a", 8, run)
    lines = []

    def log(line):  # a SIGTERM arrives right after the first evaluation (step 3)
        lines.append(line)
        if line.startswith("tiny: step 3 "):
            os.kill(os.getpid(), signal.SIGTERM)

    stopped = until_plateau("tiny", "gpt2", TINY, tiny_corpus(), run, tmp_path / "b", "cmd",
                            None, 8, log=log)  # fmt: skip
    assert stopped is None and "SIGTERM at step 3" in lines[-1]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is restored
    assert read_header(tmp_path / "b" / CHECKPOINT)["state"]["step"] == 3
    run_for(tmp_path / "b", 8, run)
    a, b = (load_tensors(tmp_path / d / CHECKPOINT) for d in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_plateau_anneals_once_then_stops():
    run = LongRun(patience=2, min_delta=0.01, anneals=1, min_tokens=100)
    state = {"best": math.inf, "since_best": 0, "anneals_done": 0, "lr_scale": 1.0, "done": False,
             "tokens_seen": 0}  # fmt: skip
    losses = [5.0, 4.0, 3.995, 3.99]  # two evaluations without a 0.01 gain, but too few tokens
    for loss in losses:
        _advance_plateau(state, loss, run, epoch_tokens=10**9)
    assert state["since_best"] == 2 and state["lr_scale"] == 1.0
    state["tokens_seen"] = 100
    _advance_plateau(state, 3.99, run, epoch_tokens=10**9)
    assert state["lr_scale"] == 0.1 and state["since_best"] == 0 and not state["done"]
    _advance_plateau(state, 3.5, run, epoch_tokens=10**9)  # annealing helps: a new best
    assert state["best"] == 3.5 and not state["done"]
    _advance_plateau(state, 3.495, run, epoch_tokens=10**9)
    _advance_plateau(state, 3.494, run, epoch_tokens=10**9)
    assert state["done"]


def test_one_epoch_anneals_without_a_plateau_then_a_plateau_stops():
    run = LongRun(patience=2, min_delta=0.01, anneals=1, min_tokens=100)
    state = {"best": math.inf, "since_best": 0, "anneals_done": 0, "lr_scale": 1.0, "done": False,
             "tokens_seen": 150}  # fmt: skip
    _advance_plateau(state, 5.0, run, epoch_tokens=200)  # improving, before one epoch
    assert state["lr_scale"] == 1.0
    state["tokens_seen"] = 200
    _advance_plateau(state, 4.0, run, epoch_tokens=200)  # still improving, but one epoch is seen
    assert state["lr_scale"] == 0.1 and not state["done"]
    for loss in (3.0, 2.0):  # the cap moves only the first anneal: improving runs go on
        _advance_plateau(state, loss, run, epoch_tokens=200)
    assert state["lr_scale"] == 0.1 and not state["done"]
    _advance_plateau(state, 1.999, run, epoch_tokens=200)
    _advance_plateau(state, 1.998, run, epoch_tokens=200)
    assert state["done"]
    late = {**state, "done": False, "anneals_done": 0, "lr_scale": 1.0, "since_best": 0}
    _advance_plateau(late, 1.0, dataclasses.replace(run, anneal_after_epoch=False), 200)
    assert late["lr_scale"] == 1.0  # without the cap only a plateau anneals


def test_a_run_that_plateaus_saves_its_record(tmp_path):
    run = LongRun(batch_size=4, eval_every=2, warmup_steps=1, patience=1, min_delta=10.0,
                  anneals=0, min_tokens=0)  # fmt: skip
    result = run_for(tmp_path / "w", 50, run, out=tmp_path / "tiny.safetensors")
    meta = read_header(tmp_path / "tiny.safetensors")["meta"]
    assert result is not None and meta == result.meta
    assert meta["steps"] == 4 and meta["tokens_seen"] == 4 * 4 * 16 and meta["command"] == "cmd"
    assert meta["heldout_loss"] == meta["curve_tail"][-1]["heldout_loss"]
    curve = json.loads((tmp_path / "tiny.curve.json").read_text())["curve"]
    assert [p["step"] for p in curve] == [2, 4]
