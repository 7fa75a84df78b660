"""Embedded language and image backbones: tokenisers, baseline, tiny runs, committed assets, CLI."""

from __future__ import annotations

import math

import pytest
import torch
from typer.testing import CliRunner

import dtlens.paths
from cli.main import app
from dtlens.errors import DtlensError
from dtlens.model.backbones import backbone_config, read_header
from dtlens.model.checkpoint import load_backbone_file
from dtlens.model.config import MINI, BackboneConfig
from dtlens.model.inits import resolve_backbone
from dtlens.paths import EMBEDDED_BACKBONES, backbone_cache_path
from dtlens.paths import embedded_backbone_path as backbone_path
from dtlens.pretrain import image, text
from dtlens.pretrain.loop import unigram_loss
from tests.conftest import TINY

FAMILIES = {"text": ("gpt2", "LN", "gelu_new"), "image": ("imagegpt", "RMS", "quick_gelu")}


def test_char_tokenizer_round_trips():
    tok = text.CharTokenizer()
    sample = "def f(x):\n    return {'a': x ~ 1}  # ok\n"
    ids = tok.encode(sample)
    assert tok.d_vocab == 97 and ids.dtype == torch.long and len(ids) == len(sample)
    assert tok.decode(ids) == sample
    assert tok.encode("é’\t").tolist() == [tok.unk] * 3


def test_pixel_tokens_round_trip_and_shifts():
    images = torch.arange(2 * 64).reshape(2, 8, 8) % image.LEVELS
    rows = image.encode(images)
    assert rows.shape == (2, 65) and (rows[:, 0] == image.SOS).all()
    assert torch.equal(image.decode(rows), images)
    shifted = image.shifted(images)
    assert shifted.shape == (18, 8, 8)
    assert torch.equal(shifted[8:10], images)  # shift (0, 0) is the middle of the 9 variants
    assert (shifted[0, 0] == 0).all() and torch.equal(shifted[0, 1:, 1:], images[0, :-1, :-1])
    with pytest.raises(ValueError):
        image.encode(images + image.LEVELS)


def test_unigram_loss_matches_hand_value():
    # counts + 1 = [3, 2, 1] of 6; held-out tokens 0 and 2.
    expected = -(math.log(3 / 6) + math.log(1 / 6)) / 2
    got = unigram_loss(torch.tensor([0, 0, 1]), torch.tensor([[0, 2]]), d_vocab=3)
    assert got == pytest.approx(expected, rel=1e-12)


def test_splits_are_fixed_and_disjoint():
    from pydoc_data.topics import topics

    train, heldout = text.split_topics(topics)
    assert not set(train) & set(heldout) and set(train) | set(heldout) == set(topics)
    share = sum(len(topics[n]) for n in heldout) / sum(map(len, topics.values()))
    assert 0.1 <= share < 0.2
    train_idx, heldout_idx = image.split_images(100)
    assert len(heldout_idx) == 15 and not set(train_idx.tolist()) & set(heldout_idx.tolist())


@pytest.mark.parametrize("kind", ["text", "image"])
def test_tiny_run_writes_a_loadable_deterministic_backbone(kind, tmp_path):
    builder = {"text": lambda **kw: text.build(n_ctx=16, **kw), "image": image.build}[kind]
    paths = [tmp_path / f"{i}.safetensors" for i in range(2)]
    results = [
        builder(steps=3, seed=7, out=p, size=TINY, batch_size=4, progress=False) for p in paths
    ]
    family, norm, act = FAMILIES[kind]
    model = load_backbone_file(paths[0])
    cfg = backbone_config(model.cfg)
    assert (cfg.normalization_type, cfg.act_fn, cfg.d_model) == (norm, act, TINY.d_model)
    meta = read_header(paths[0])["meta"]
    assert meta == results[0].meta and meta["family"] == family and meta["steps"] == 3
    assert meta["command"] == f"dtlens pretrain {kind} --steps 3 --seed 7 --out {paths[0]}"
    other = load_backbone_file(paths[1]).state_dict()
    assert all(torch.equal(v, other[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("kind", ["text", "image"])
def test_committed_asset_loads_with_mini_size(kind):
    path = backbone_path(kind)
    assert path.parent == dtlens.paths.BACKBONE_ASSETS
    cfg = backbone_config(resolve_backbone(kind).cfg)
    family, norm, act = FAMILIES[kind]
    assert cfg == BackboneConfig(**{**MINI.__dict__, "normalization_type": norm, "act_fn": act})
    meta = read_header(path)["meta"]
    assert meta["family"] == family
    assert meta["heldout_loss"] < meta["unigram_loss"] - 0.5


def test_committed_assets_fit_in_5mb():
    assert sum(backbone_path(k).stat().st_size for k in EMBEDDED_BACKBONES) <= 5_000_000


def test_missing_backbone_says_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.setattr(dtlens.paths, "BACKBONE_ASSETS", tmp_path / "assets")
    monkeypatch.setenv("DTLENS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DtlensError, match="run `dtlens pretrain image`"):
        backbone_path("image")
    cached = backbone_cache_path("image")
    assert cached == tmp_path / "cache" / "backbones" / "image.safetensors"
    cached.parent.mkdir(parents=True)
    cached.touch()
    assert backbone_path("image") == cached
    with pytest.raises(DtlensError, match="unknown embedded backbone"):
        backbone_path("audio")


def test_cli_pretrain_image_and_model_info(tmp_path):
    out = tmp_path / "image.safetensors"
    runner = CliRunner()
    result = runner.invoke(app, ["pretrain", "image", "--steps", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "held-out loss" in result.output and "unigram baseline" in result.output
    assert load_backbone_file(out).cfg.normalization_type == "RMS"
    result = runner.invoke(app, ["model", "info", "text", "--no-hooks"])
    assert result.exit_code == 0, result.output
    assert "gelu_new" in result.output
