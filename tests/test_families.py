"""Decoder families through TransformerLens's converters: tiny random HF models of each family
against HF's hidden states, DTs on them, block swap, and a run with every run diagnostic."""

from __future__ import annotations

import pytest
import torch
import xarray as xr
from typer.testing import CliRunner

from cli.main import app
from dtlens import DecisionTransformer, DTConfig
from dtlens.errors import DtlensError
from dtlens.model.backbones import random_source
from dtlens.model.checkpoint import load_model, save_model
from dtlens.model.families import check_against_hf, decoder_backbone, last_hidden_state
from dtlens.model.inits import backbone_spec, resolve_backbone
from dtlens.model.surgery import replace_block
from dtlens.train.run import Run
from tests.conftest import TINY, dt_inputs

runner = CliRunner()
D, VOCAB, POSITIONS = 16, 40, 64


def family_config(kind: str):
    """A tiny HF config of `kind`: 2 layers, d_model 16, 4 heads (2 key/value heads where the
    family groups them), the family's own norm, activation and positions."""
    import transformers as T

    common = dict(vocab_size=VOCAB, max_position_embeddings=POSITIONS, hidden_size=D)
    layers = dict(num_hidden_layers=2, num_attention_heads=4, intermediate_size=40)
    return {
        "gpt2": lambda: T.GPT2Config(vocab_size=VOCAB, n_positions=POSITIONS, n_embd=D, n_layer=2,
                                     n_head=4),
        "gpt_neo": lambda: T.GPTNeoConfig(**common, num_layers=2, num_heads=4, window_size=3,
                                          attention_types=[[["global", "local"], 1]]),
        "gptj": lambda: T.GPTJConfig(vocab_size=VOCAB, n_positions=POSITIONS, n_embd=D, n_layer=2,
                                     n_head=4, rotary_dim=2),
        "gpt_neox": lambda: T.GPTNeoXConfig(**common, **layers, rotary_pct=0.5),
        "opt": lambda: T.OPTConfig(**common, num_hidden_layers=2, num_attention_heads=4,
                                   ffn_dim=40, word_embed_proj_dim=D),
        "llama": lambda: T.LlamaConfig(**common, **layers, num_key_value_heads=2),
        "mistral": lambda: T.MistralConfig(**common, **layers, num_key_value_heads=2,
                                           sliding_window=None),
        "qwen2": lambda: T.Qwen2Config(**common, **layers, num_key_value_heads=2),
    }[kind]()  # fmt: skip


def write_family(kind: str, path, seed: int = 0):
    """Save a random HF causal LM of `kind` (HF's init, non-trivial norms) with save_pretrained."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(family_config(kind)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln" in name:  # HF inits norms to 1 / 0: move them
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path)
    return model


FAMILIES = ["gpt2", "gpt_neo", "gptj", "gpt_neox", "opt", "llama", "mistral", "qwen2"]


@pytest.mark.parametrize("kind", FAMILIES)
def test_backbone_matches_hf_hidden_states(kind, tmp_path):
    hf = write_family(kind, tmp_path / kind)
    backbone = resolve_backbone(str(tmp_path / kind)).build()
    tokens = torch.randint(0, VOCAB, (3, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(tokens, output_hidden_states=True).hidden_states
        got = [backbone(tokens, stop_at_layer=1), last_hidden_state(backbone, tokens)]
    diffs = [float((g - w).abs().max()) for g, w in zip(got, (want[1], want[-1]), strict=True)]
    print(f"{kind}: max |dtlens - HF| per layer {diffs}")
    assert max(diffs) < 1e-4
    assert (resolve_backbone(str(tmp_path / kind)).cfg.arch == ()) == (kind == "gpt2")
    assert backbone_spec(str(tmp_path / kind)) == resolve_backbone(str(tmp_path / kind)).cfg


@pytest.mark.parametrize("kind", ["gpt_neo", "gpt_neox", "llama", "opt"])
def test_dt_on_family_hooks_and_checkpoint(kind, tmp_path):
    """A DT with the family's backbone: its config carries the architecture, so a checkpoint
    rebuilds the same model; hooks fire under GPT-2's names; padded and unpadded rows agree at
    the real tokens (the mask reaches rotary positions and attention)."""
    write_family(kind, tmp_path / kind)
    backbone = resolve_backbone(str(tmp_path / kind))
    cfg = DTConfig(state_dim=5, act_dim=2, backbone=backbone.cfg, max_ep_len=50)
    dt = DecisionTransformer(cfg, backbone=backbone).eval()
    inputs = dt_inputs(cfg, batch=2, steps=4, pad=0)
    with torch.no_grad():
        pred, cache = dt.run_with_cache(*inputs)
    assert cache["backbone.blocks.1.attn.hook_pattern"].shape == (2, 4, 12, 12)
    assert cache["backbone.blocks.1.hook_resid_post"].shape == (2, 12, D)
    twin = load_model(save_model(dt, tmp_path / "dt.safetensors"))
    assert twin.cfg == cfg and twin.cfg.backbone.arch
    with torch.no_grad():
        assert torch.equal(twin.eval()(*inputs), pred)
    # left padding: row 0 padded for 2 steps equals the same row cut to its 2 real steps
    s, a, r, t, m = inputs
    m = m.clone()
    m[0, :2] = 0
    with torch.no_grad():
        padded = dt(s, a, r, t, m)[0, 2:]
        cut = dt(s[:1, 2:], a[:1, 2:], r[:1, 2:], t[:1, 2:], m[:1, 2:])[0]
    assert torch.allclose(padded, cut, atol=1e-5)


def test_block_swap_within_a_family(tmp_path):
    write_family("llama", tmp_path / "llama")
    donor = resolve_backbone(str(tmp_path / "llama"))
    target = replace_block(random_source(donor.cfg, seed=3), donor, 1)
    assert target.state.keys() == donor.state.keys()
    for name, p in target.state.items():
        assert (p is donor.state[name]) == name.startswith("blocks.1."), name
    assert not torch.equal(target.state["blocks.0.attn.W_Q"], donor.state["blocks.0.attn.W_Q"])
    with pytest.raises(DtlensError, match="another decoder family \\(LlamaForCausalLM\\)"):
        replace_block(random_source(TINY), donor, 0)


def test_unsupported_variants_fail_in_one_line(tmp_path):
    import transformers as T

    post_norm = T.OPTForCausalLM(
        T.OPTConfig(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=1, num_attention_heads=2,
                    ffn_dim=32, word_embed_proj_dim=D, do_layer_norm_before=False)
    )  # fmt: skip
    with pytest.raises(DtlensError, match="post-norm OPT"):
        decoder_backbone(post_norm)
    biased = T.LlamaForCausalLM(family_config("llama").__class__(
        **family_config("llama").to_dict() | {"attention_bias": True}))  # fmt: skip
    with pytest.raises(DtlensError, match="biases"):
        decoder_backbone(biased)
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(DtlensError, match="unsupported HF model type 'bert'"):
        resolve_backbone(str(tmp_path / "bert"))
    hf = write_family("gpt_neox", tmp_path / "neox")
    backbone = resolve_backbone(str(tmp_path / "neox")).build()
    assert check_against_hf(backbone, hf) < 1e-5
    with torch.no_grad():
        backbone.blocks[1].attn.W_V.mul_(-1)  # what a mis-converted weight would do
    with pytest.raises(DtlensError, match="differs from HF"):
        check_against_hf(backbone, hf)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DtlensError, match="not an HF model directory"):
        resolve_backbone(str(tmp_path / "empty"))


@pytest.mark.slow
def test_train_and_diagnostics_on_a_llama_backbone(tmp_path, hopper_file):
    """`dtlens train --init DIR` on a Llama-family backbone, then every run diagnostic."""
    write_family("llama", tmp_path / "llama")
    out = tmp_path / "run"
    res = runner.invoke(
        app,
        ["train", "--init", str(tmp_path / "llama"), "--dataset", str(hopper_file), "--epochs",
         "1", "--steps", "2", "--batch-size", "4", "--context", "4", "--eval-episodes", "0",
         "--out", str(out)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    for argv in (
        ["cka", str(out)],
        ["gradients", str(out), "--epoch", "1"],
        ["weights", str(out)],
        ["mutual-info", str(out), "--seeds", "1", "--null-shuffles", "1"],
        ["attention", str(out), "--epochs", "0,1"],
    ):
        res = runner.invoke(app, argv)
        assert res.exit_code == 0, (argv, res.output)
    with xr.open_dataset(out / "diagnostics" / "cka.nc") as ds:
        assert ds["cka"].sizes["layer_a"] == 3
        assert float(ds["cka"].min()) > -1.0 and float(ds["cka"].max()) <= 1.0 + 1e-6
    grads = list((out / "diagnostics").glob("grad*.nc"))
    assert grads, list((out / "diagnostics").iterdir())
    with xr.open_dataset(grads[0]) as ds:
        assert "backbone.blocks.0.mlp.W_gate" in ds["tensor"].values.tolist()


@pytest.mark.slow
def test_block_swap_study_with_a_llama_donor(tmp_path, hopper_file):
    """`dtlens block-swap --donor DIR` of another family: the random model takes the donor's
    layout (re-drawn), so its block 1 can be swapped in; the study compares all three runs."""
    write_family("llama", tmp_path / "llama")
    out = tmp_path / "study"
    res = runner.invoke(
        app,
        ["block-swap", "--donor", str(tmp_path / "llama"), "--blocks", "1", "--layers", "2",
         "--d-model", str(D), "--heads", "4", "--dataset", str(hopper_file), "--epochs", "1",
         "--steps", "2", "--batch-size", "4", "--eval-episodes", "1", "--eval-max-steps", "5",
         "--out", str(out)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    runs = {p.name: Run(p) for p in (out / "runs").iterdir()}
    assert len(runs) == 3
    for run in runs.values():
        assert dict(run.dt_config.backbone.arch)["original_architecture"] == "LlamaForCausalLM"
    swapped = next(r for r in runs.values() if r.train_config.replace_block == 1)
    donor = resolve_backbone(str(tmp_path / "llama"))
    block = swapped.load_model(0).backbone.blocks[1]
    assert torch.equal(block.mlp.W_gate, donor.state["blocks.1.mlp.W_gate"])
    assert (out / "diagnostics" / "block_swap.nc").is_file()


def test_moving_a_dt_moves_its_backbones_device(tiny_cfg):
    """TransformerLens moves the residual stream to `backbone.cfg.device` before every block (the
    hooked path, which other families always take): `.to()` must keep it in step, or a DT moved
    to CUDA would send its residual back to the CPU. A stale device fails the same way here."""
    dt = DecisionTransformer(tiny_cfg).eval()
    dt.backbone.cfg.device = "meta"  # stale, as "cpu" is after .to("cuda") without the sync
    inputs = dt_inputs(tiny_cfg)
    with pytest.raises(RuntimeError), dt.hooked_path():
        dt(*inputs)
    dt.to("cpu")
    assert dt.backbone.cfg.device == torch.device("cpu")
    with dt.hooked_path(), torch.no_grad():
        assert dt(*inputs).shape == (3, 4, tiny_cfg.act_dim)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_hf_loads_print_no_progress_bar(kind, tmp_path, capfd):
    """transformers draws a "Loading weights" bar per load; dtlens's loads draw none and leave
    the setting as they found it."""
    from transformers.utils import logging

    write_family(kind, tmp_path / kind)
    capfd.readouterr()
    resolve_backbone(str(tmp_path / kind))
    assert "Loading weights" not in capfd.readouterr().err
    assert logging.is_progress_bar_enabled()
