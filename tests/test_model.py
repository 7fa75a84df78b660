"""The Decision Transformer: shapes, hooks, dropout, init, checkpoints, the `model` CLI."""

from __future__ import annotations

import math

import pytest
import torch
from typer.testing import CliRunner

import dtlens.model.backbones
from cli.main import app
from dtlens import DecisionTransformer, DTConfig
from dtlens.errors import DtlensError
from dtlens.model import BackboneConfig
from dtlens.model.activations import gelu_new_in_place, quick_gelu
from dtlens.model.backbones import random_backbone, random_source, save_backbone
from dtlens.model.checkpoint import load_model, save_model
from dtlens.model.inits import backbone_spec, resolve_backbone
from tests.conftest import TINY, dt_inputs

runner = CliRunner()


def test_forward_shape_and_padding_invariance(tiny_dt):
    s, a, r, t, m = dt_inputs(tiny_dt.cfg, batch=3, steps=4, pad=2)
    out = tiny_dt(s, a, r, t, m)
    assert out.shape == (3, 4, 2) and out.abs().max() <= 1
    # Changing what sits under the padding does not change predictions at real steps.
    s2 = s.clone()
    s2[1:, :2] += 100.0
    out2 = tiny_dt(s2, a, r, t, m)
    torch.testing.assert_close(out[m.bool()], out2[m.bool()])


def test_causal_prediction_ignores_future(tiny_dt):
    s, a, r, t, m = dt_inputs(tiny_dt.cfg, batch=2, steps=4)
    out = tiny_dt(s, a, r, t, m)
    a2 = a.clone()
    a2[:, 2:] = 0.3  # the action at step 2 is not visible to the prediction at step 2
    torch.testing.assert_close(tiny_dt(s, a2, r, t, m)[:, :3], out[:, :3])


def test_attention_patterns_are_causal_distributions_over_unpadded_keys(tiny_dt):
    s, a, r, t, m = dt_inputs(tiny_dt.cfg, batch=3, steps=4, pad=2)
    _, cache = tiny_dt.run_with_cache(s, a, r, t, m)
    keys = m.repeat_interleave(3, dim=1).bool()  # (B, 3K)
    for i in range(tiny_dt.cfg.n_layers):
        p = cache[f"backbone.blocks.{i}.attn.hook_pattern"]  # (B, H, Q, K)
        assert p.shape == (3, TINY.n_heads, 12, 12)
        assert torch.all(p.triu(diagonal=1) == 0), "attends to the future"
        assert torch.all(p[~keys[:, None, None, :].expand_as(p)] == 0), "attends to padding"
        rows = p.sum(-1)  # (B, H, Q)
        valid_q = keys[:, None, :].expand_as(rows)
        torch.testing.assert_close(rows[valid_q], torch.ones_like(rows[valid_q]))


def test_hook_names_and_backward_hook_on_state_embed(tiny_dt):
    names = tiny_dt.hook_names()
    for n in (
        "hook_return_embed",
        "hook_state_embed",
        "hook_action_embed",
        "hook_time_embed",
        "hook_tokens",
        "backbone.blocks.1.hook_resid_post",
        "backbone.blocks.0.attn.hook_pattern",
    ):
        assert n in names
    grads = []
    tiny_dt.add_hook("hook_state_embed", lambda g, hook: grads.append(g), dir="bwd")
    s, a, r, t, m = dt_inputs(tiny_dt.cfg)
    tiny_dt(s, a, r, t, m).pow(2).sum().backward()
    tiny_dt.reset_hooks()
    assert len(grads) == 1 and grads[0].shape == (3, 4, 16) and grads[0].abs().sum() > 0


def test_run_with_hooks_can_patch_activations(tiny_dt):
    s, a, r, t, m = dt_inputs(tiny_dt.cfg)
    clean = tiny_dt(s, a, r, t, m)
    zeroed = tiny_dt.run_with_hooks(
        s, a, r, t, m, fwd_hooks=[("backbone.blocks.1.hook_mlp_out", lambda x, hook: x * 0)]
    )
    assert not torch.allclose(clean, zeroed)
    torch.testing.assert_close(tiny_dt(s, a, r, t, m), clean)  # hooks removed afterwards


def test_dropout_only_in_train_mode(tiny_cfg):
    dt = DecisionTransformer(tiny_cfg.replace(resid_dropout=0.5, attn_dropout=0.5), seed=0)
    s, a, r, t, m = dt_inputs(dt.cfg)
    dt.eval()
    torch.testing.assert_close(dt(s, a, r, t, m), dt(s, a, r, t, m))
    dt.train()
    assert not torch.allclose(dt(s, a, r, t, m), dt(s, a, r, t, m))
    _, cache = dt.eval().run_with_cache(s, a, r, t, m)  # permanent hooks survive caching
    assert len(dt.backbone.blocks[0].attn.hook_pattern.fwd_hooks) == 1


def test_random_init_follows_hf_gpt2():
    cfg = BackboneConfig(n_layers=4, d_model=64, n_heads=2, d_mlp=256)
    bb = random_backbone(cfg, seed=0)
    assert abs(bb.blocks[0].attn.W_Q.std().item() - 0.02) < 0.002
    assert abs(bb.blocks[0].mlp.W_out.std().item() - 0.02 / math.sqrt(8)) < 0.001
    assert torch.all(bb.blocks[0].ln1.w == 1) and torch.all(bb.blocks[0].attn.b_Q == 0)
    torch.testing.assert_close(
        random_backbone(cfg, seed=0).blocks[2].attn.W_V, bb.blocks[2].attn.W_V
    )


def test_quick_gelu_matches_hf():
    from transformers.activations import ACT2FN

    x = torch.linspace(-5, 5, 101)
    torch.testing.assert_close(quick_gelu(x), ACT2FN["quick_gelu"](x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("grad", [False, True])
def test_in_place_activations_keep_the_bits(dtype, grad):
    """gelu_new / quick_gelu computed in place (no grad) equal TransformerLens's / the plain
    formula bit for bit (NaN stays NaN), specials and subnormals included, also under vmap;
    with grad they still backpropagate."""
    from transformer_lens.utilities.activation_functions import gelu_new

    special = [float("inf"), -float("inf"), float("nan"), 1e-40, -1e-40, 1e30, -1e30, 0.0, -0.0]
    x = torch.cat([torch.randn(4096, generator=torch.Generator().manual_seed(0)) * 4,
                   torch.tensor(special)]).to(dtype)  # fmt: skip
    with torch.set_grad_enabled(grad):
        xs = x.clone().requires_grad_(grad)
        ours = (gelu_new_in_place(xs), quick_gelu(xs))
    theirs = (gelu_new(x), x * torch.sigmoid(1.702 * x))
    bits = torch.int16 if dtype == torch.bfloat16 else torch.int32
    for a, b in zip(ours, theirs, strict=True):
        nan = b.isnan()
        assert torch.equal(a.detach().isnan(), nan)
        assert torch.equal(a.detach()[~nan].view(bits), b[~nan].view(bits))
    nan = theirs[0].isnan()
    with torch.no_grad():  # torch.func.vmap batches the in-place version
        batched = torch.func.vmap(gelu_new_in_place)(x.view(-1, 1))
    assert torch.equal(batched.view(-1).isnan(), theirs[0].isnan())
    assert torch.equal(batched.view(-1)[~nan], theirs[0][~nan])
    assert torch.equal(xs.detach().view(bits), x.view(bits))  # the input is left alone
    if grad:
        sum(o.sum() for o in ours).backward()
        assert xs.grad is not None


def test_checkpoint_round_trip_and_mismatch(tiny_dt, tmp_path):
    path = save_model(tiny_dt, tmp_path / "ckpt.safetensors", epoch=3)
    loaded = load_model(path).eval()
    s, a, r, t, m = dt_inputs(tiny_dt.cfg)
    torch.testing.assert_close(loaded(s, a, r, t, m), tiny_dt(s, a, r, t, m))
    other = tiny_dt.cfg.replace(
        state_dim=7, backbone=BackboneConfig(n_layers=3, d_model=16, n_heads=2, d_mlp=32)
    )
    with pytest.raises(DtlensError, match=r"state_dim: 7 != 5.*backbone.n_layers: 3 != 2"):
        load_model(path, expected=other)


def test_dt_with_pretrained_backbone_copies_blocks(tiny_cfg):
    donor = random_source(TINY, seed=42)
    dt = DecisionTransformer(tiny_cfg, backbone=donor)
    torch.testing.assert_close(dt.backbone.blocks[1].mlp.W_in, donor.state["blocks.1.mlp.W_in"])
    with pytest.raises(DtlensError, match="does not match"):
        DecisionTransformer(
            tiny_cfg,
            backbone=random_source(BackboneConfig(n_layers=1, d_model=16, n_heads=2, d_mlp=32)),
        )


@pytest.mark.parametrize(
    "dt_init, time_std, head_bias", [("released", 1.0, None), ("gpt2", 0.02, 0)]
)
def test_dt_init_sets_the_dt_layers_as_documented(tiny_cfg, dt_init, time_std, head_bias):
    """released: PyTorch's defaults (timestep embedding N(0, 1), linear layers uniform in
    +-1/sqrt(fan_in), as kzl's and the paper's code); gpt2: N(0, 0.02), zero biases (HF, CORL)."""
    cfg = tiny_cfg.replace(max_ep_len=1000, dt_init=dt_init)
    dt = DecisionTransformer(cfg, seed=0)
    assert float(dt.embed_timestep.weight.detach().std()) == pytest.approx(time_std, rel=0.1)
    bound = 1 / math.sqrt(cfg.d_model)  # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    weight, bias = dt.predict_action.weight.detach(), dt.predict_action.bias.detach()
    if head_bias is None:
        assert float(weight.abs().max()) <= bound and float(weight.std()) > 0.1
        assert bool((bias != 0).any())
    else:
        assert float(weight.abs().max()) < 0.1 and float(weight.std()) < 0.05
        assert bool((bias == head_bias).all()) and bool((dt.embed_state.bias == 0).all())
    assert torch.all(dt.embed_ln.weight == 1) and torch.all(dt.embed_ln.bias == 0)
    # the backbone's init is the same either way
    other = DecisionTransformer(tiny_cfg.replace(max_ep_len=1000), seed=0)
    torch.testing.assert_close(dt.backbone.blocks[0].attn.W_Q, other.backbone.blocks[0].attn.W_Q)


def test_dt_init_default_is_the_released_one(tiny_cfg):
    """The default keeps what dtlens always did: PyTorch's module defaults, bit for bit."""
    dt = DecisionTransformer(tiny_cfg, seed=5)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        embed_return = torch.nn.Linear(1, tiny_cfg.d_model)
    assert tiny_cfg.dt_init == "released"
    assert torch.equal(dt.embed_return.weight, embed_return.weight)


def test_bad_shapes_are_clear(tiny_dt):
    s, a, r, t, m = dt_inputs(tiny_dt.cfg)
    with pytest.raises(DtlensError, match="states has shape"):
        tiny_dt(s[..., :3], a, r, t, m)
    with pytest.raises(DtlensError, match="timesteps must lie"):
        tiny_dt(s, a, r, t + 1000, m)


def test_cli_model_info(tmp_path, tiny_dt):
    res = runner.invoke(app, ["model", "info", "random"])
    assert res.exit_code == 0, res.output
    assert "d_model" in res.output and "backbone.blocks.{i}.attn.hook_pattern" in res.output
    ckpt = save_model(tiny_dt, tmp_path / "dt.safetensors")
    res = runner.invoke(app, ["model", "info", str(ckpt)])
    assert res.exit_code == 0 and "Decision Transformer" in res.output
    bb = save_backbone(random_backbone(TINY), tmp_path / "bb.safetensors")
    res = runner.invoke(app, ["model", "info", str(bb), "--no-hooks"])
    assert res.exit_code == 0, res.output
    blocks = sum(
        p.numel()
        for n, p in random_backbone(TINY).named_parameters()
        if n.startswith(("blocks.", "ln_final."))
    )
    assert str(blocks) in res.output and "hook points" not in res.output


def test_a_spec_is_read_without_weights(tmp_path, tiny_dt, monkeypatch):
    """The dry run, the studies and `model info` read a backbone's spec from its header."""
    path = str(save_backbone(random_backbone(TINY), tmp_path / "bb.safetensors"))
    ckpt = str(save_model(tiny_dt, tmp_path / "dt.safetensors"))
    assert resolve_backbone(path).cfg == TINY and resolve_backbone(ckpt).cfg == TINY

    def no_weights(path):
        raise AssertionError(f"weights read from {path}")

    monkeypatch.setattr(dtlens.model.backbones, "load_tensors", no_weights)
    assert backbone_spec(path) == backbone_spec(f"shuffled:{path}") == TINY
    assert backbone_spec(ckpt) == TINY and backbone_spec("random", size=TINY) == TINY
    for name in (path, ckpt):
        res = runner.invoke(app, ["model", "info", name, "--no-hooks"])
        assert res.exit_code == 0, res.output
    with pytest.raises(AssertionError, match="weights read"):
        resolve_backbone(path)


@pytest.mark.parametrize(
    "arg, message",
    [
        ("nowhere-model", "unknown init"),
        ("gpt2", "no local copy found"),
        ("missing.safetensors", "file not found"),
    ],
)
def test_cli_model_info_bad_input(arg, message, tmp_path):
    res = runner.invoke(app, ["model", "info", arg])
    assert res.exit_code == 1
    assert message in res.output and "Traceback" not in res.output


def test_cli_model_info_config_not_a_model(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors")
    res = runner.invoke(app, ["model", "info", str(bad)])
    assert res.exit_code == 1 and "not a safetensors file" in res.output
    assert len(res.output.strip().splitlines()) == 1


@pytest.mark.parametrize("norm, act", [("LN", "gelu_new"), ("RMS", "quick_gelu"), ("LN", "relu")])
def test_fused_path_equals_hooked_path(norm, act):
    backbone = BackboneConfig(
        n_layers=2, d_model=16, n_heads=2, d_mlp=32, act_fn=act, normalization_type=norm
    )
    cfg = DTConfig(state_dim=5, act_dim=2, backbone=backbone, max_ep_len=50)
    dt = DecisionTransformer(cfg, seed=3)
    with torch.no_grad():
        for p in dt.backbone.parameters():  # move norms and biases off their init
            p.add_(torch.randn_like(p) * 0.1)
    dt.eval()
    s, a, r, t, m = dt_inputs(cfg, batch=3, steps=4, pad=2)
    valid = m.bool()  # padded steps differ (never read); the loss masks them as training does
    fast = dt(s, a, r, t, m)
    fast[valid].pow(2).sum().backward()
    g_fast = {n: p.grad.clone() for n, p in dt.named_parameters() if p.grad is not None}
    dt.zero_grad()
    dt.fast_path = False
    hooked = dt(s, a, r, t, m)
    hooked[valid].pow(2).sum().backward()
    torch.testing.assert_close(fast[valid], hooked[valid], atol=1e-5, rtol=1e-5)
    for n, p in dt.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(g_fast[n], p.grad, atol=1e-5, rtol=1e-4, msg=n)


def test_attached_hooks_switch_to_the_hooked_path(tiny_dt):
    s, a, r, t, m = dt_inputs(tiny_dt.cfg)
    assert not tiny_dt._backbone_hooked()
    seen = []
    out = tiny_dt.run_with_hooks(
        s,
        a,
        r,
        t,
        m,
        fwd_hooks=[("backbone.blocks.0.hook_resid_post", lambda x, hook: seen.append(x))],
    )
    assert len(seen) == 1
    torch.testing.assert_close(out, tiny_dt(s, a, r, t, m), atol=1e-5, rtol=1e-5)
    assert not tiny_dt._backbone_hooked()  # run_with_hooks removed its hook


def test_a_deep_copy_drops_out_by_its_own_mode(tiny_cfg):
    import copy

    dt = DecisionTransformer(tiny_cfg.replace(resid_dropout=0.5, attn_dropout=0.5), seed=0)
    dt.fast_path = False
    dt.train()
    twin = copy.deepcopy(dt).eval()
    s, a, r, t, m = dt_inputs(dt.cfg)
    torch.testing.assert_close(twin(s, a, r, t, m), twin(s, a, r, t, m))
