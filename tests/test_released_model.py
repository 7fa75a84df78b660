"""The paper's released model variants: padding, mixed blocks (block replacement), DT layout.

Each variant is checked against a hand computation and against the standard variant it departs
from (where they agree and where they differ); the fused path against the hooked one; mixed
backbones and the new options through checkpoints and a tiny training run.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from typer.testing import CliRunner

from cli.main import app
from dtlens import DecisionTransformer, DTConfig
from dtlens.data.windows import Batch
from dtlens.diagnostics.per_sample import iter_per_sample_grads
from dtlens.errors import DtlensError
from dtlens.experiments.studies import block_swap_specs, check_donor, run_block_swap
from dtlens.io import load_tensors, save_tensors
from dtlens.model.backbones import (
    Backbone,
    random_backbone,
    random_source,
    read_backbone,
    save_backbone,
    state_of,
)
from dtlens.model.checkpoint import load_model, save_model
from dtlens.model.config import BackboneConfig, BlockConfig
from dtlens.model.padding import released_scores
from dtlens.model.surgery import replace_block
from dtlens.train.loop import action_loss, train
from tests.conftest import TINY, dt_inputs, perturb_, tiny_train_config

runner = CliRunner()
#: A donor of the same width with other heads, MLP width and activation (GPT-2 vs the paper's
#: 1-head ReLU random model, in small).
OTHER = BackboneConfig(n_layers=2, d_model=16, n_heads=4, d_mlp=48, act_fn="relu")


def make_dt(backbone: BackboneConfig = TINY, seed: int = 1, **options) -> DecisionTransformer:
    cfg = DTConfig(state_dim=5, act_dim=2, backbone=backbone, max_ep_len=50, **options)
    return perturb_(DecisionTransformer(cfg, seed=seed)).eval()


def both_paths(dt: DecisionTransformer, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        fast = dt.hidden_states(*inputs)
        with dt.hooked_path():
            hooked = dt.hidden_states(*inputs)
    return fast, hooked


def mixed_backbone(index: int = 1) -> Backbone:
    donor = Backbone(OTHER, state_of(perturb_(random_backbone(OTHER, seed=3))))
    return replace_block(random_source(TINY, seed=0), donor, index)


def mixed_dt(**options) -> DecisionTransformer:
    """A DT on `mixed_backbone()` with `options`, its weights moved off their init."""
    backbone = mixed_backbone()
    cfg = DTConfig(state_dim=5, act_dim=2, backbone=backbone.cfg, max_ep_len=50, **options)
    return perturb_(DecisionTransformer(cfg, backbone)).eval()


# -- padding -------------------------------------------------------------------------------------
def test_released_scores_by_hand():
    """3 tokens, the first padded: a padded row keeps its weight on the future real keys."""
    s = torch.tensor([[0.5, 9.0, 9.0], [0.3, 0.7, 9.0], [0.2, 0.4, 1.1]])[None, None]
    pattern = released_scores(s, torch.tensor([[0, 1, 1]])).softmax(-1)[0, 0]
    e = math.exp(0.5)  # row 0: [0.5 - 1e4, -1e4, -1e4] -> [e^0.5, 1, 1] / (e^0.5 + 2)
    expected = torch.tensor(
        [
            [e / (e + 2), 1 / (e + 2), 1 / (e + 2)],
            [0.0, 1.0, 0.0],  # a real row never sees the padded key nor the future
            [0.0, math.exp(0.4) / (math.exp(0.4) + math.exp(1.1)), 0.0],
        ]
    )
    expected[2, 2] = 1 - expected[2, 1]
    torch.testing.assert_close(pattern, expected, atol=1e-4, rtol=0)  # float32 at -1e4: ~1e-3
    # No mask: only the causal -1e4, which underflows to the masked softmax exactly.
    unmasked = released_scores(s, None).softmax(-1)
    torch.testing.assert_close(
        unmasked, s.masked_fill(~torch.ones(3, 3).tril().bool(), -torch.inf).softmax(-1)
    )


def test_released_pattern_by_hand_in_a_one_head_model():
    """One block, one head: every entry of the pattern is the released rule applied to q.k."""
    dt = make_dt(BackboneConfig(n_layers=1, d_model=8, n_heads=1, d_mlp=16), padding="released")
    inputs = dt_inputs(dt.cfg, batch=2, steps=3, pad=2)
    _, cache = dt.run_with_cache(*inputs)
    q, k = (
        cache["backbone.blocks.0.attn.hook_q"][1, :, 0],
        cache["backbone.blocks.0.attn.hook_k"][1, :, 0],
    )
    keys = inputs[4][1].repeat_interleave(3)
    T = len(keys)
    expected = torch.zeros(T, T)
    for i in range(T):
        row = torch.tensor(
            [
                (q[i] @ k[j] / math.sqrt(8) if j <= i else -1e4) + (0.0 if keys[j] else -1e4)
                for j in range(T)
            ]
        )
        expected[i] = row.softmax(-1)
    pattern = cache["backbone.blocks.0.attn.hook_pattern"][1, 0]
    torch.testing.assert_close(pattern, expected, atol=2e-3, rtol=0)  # rows at -1e4: float32 ulps
    padded = ~keys.bool()
    torch.testing.assert_close(pattern[padded].sum(-1), torch.ones(int(padded.sum())))
    assert (pattern[padded][:, ~padded].sum(-1) > 0).all()  # weight on future real tokens


def test_released_and_masked_padding_differ_only_at_padded_positions():
    masked, released = make_dt(), make_dt(padding="released")
    released.load_state_dict(masked.state_dict())
    inputs = dt_inputs(masked.cfg, pad=2)
    real = inputs[4].repeat_interleave(3, dim=1).bool()
    _, a = masked.run_with_cache(*inputs)
    _, b = released.run_with_cache(*inputs)
    torch.testing.assert_close(a["hook_tokens"], b["hook_tokens"], rtol=0, atol=0)
    pa, pb = a["backbone.blocks.0.attn.hook_pattern"], b["backbone.blocks.0.attn.hook_pattern"]
    torch.testing.assert_close(
        pa.sum(-1)[~real[:, None].expand_as(pa[..., 0])], torch.zeros(2 * 2 * 6)
    )
    torch.testing.assert_close(pb.sum(-1), torch.ones_like(pb.sum(-1)))
    for name in ("backbone.blocks.0.hook_resid_post", "backbone.blocks.1.hook_resid_post"):
        torch.testing.assert_close(a[name][real], b[name][real], atol=1e-5, rtol=0)
        assert (a[name][~real] - b[name][~real]).abs().max() > 1e-3, name  # float noise: 1e-6
    with torch.no_grad():
        steps = inputs[4].bool()
        torch.testing.assert_close(masked(*inputs)[steps], released(*inputs)[steps])


# -- layout --------------------------------------------------------------------------------------
def test_time_embedding_after_the_norm_by_hand():
    before, after = make_dt(), make_dt(time_embed="after_norm")
    after.load_state_dict(before.state_dict())
    states, actions, rtg, timesteps, _ = dt_inputs(before.cfg, batch=1, steps=2)
    r, s, a = after.embed_return(rtg), after.embed_state(states), after.embed_action(actions)
    t = after.embed_timestep(timesteps)
    ln = after.embed_ln

    def norm(x):
        mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        return (x - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias

    with torch.no_grad():
        got_after = after.embed(states, actions, rtg, timesteps)
        got_before = before.embed(states, actions, rtg, timesteps)
        for step in range(2):
            for kind, e in enumerate((r, s, a)):
                token = got_after[0, 3 * step + kind]
                torch.testing.assert_close(token, norm(e[0, step]) + t[0, step])
                torch.testing.assert_close(
                    got_before[0, 3 * step + kind], norm(e[0, step] + t[0, step])
                )
    assert (got_after - got_before).abs().max() > 1e-2


def test_tied_action_head_by_hand():
    tied, untied = make_dt(tie_action_head=True), make_dt()
    names = dict(tied.named_parameters())
    assert not any(n.startswith("predict_action") for n in names)
    assert len(names) == len(dict(untied.named_parameters())) - 2  # no head weight, no bias
    inputs = dt_inputs(tied.cfg, pad=1)
    with torch.no_grad():
        h = tied.hidden_states(*inputs)[:, 1::3]
        expected = torch.tanh(h @ tied.embed_action.weight)  # (d,) @ (d, act_dim): no bias
        torch.testing.assert_close(tied(*inputs), expected)
    tied.train()
    tied(*inputs).sum().backward()
    grad = tied.embed_action.weight.grad  # the head's gradient lands in the action embedding
    assert grad is not None and grad.abs().sum() > 0
    untied.load_state_dict(tied.state_dict(), strict=False)
    with torch.no_grad():
        assert (untied(*inputs) - tied(*inputs)).abs().max() > 1e-3


# -- mixed blocks --------------------------------------------------------------------------------
def test_donor_block_of_other_heads_and_activation():
    backbone = mixed_backbone()
    cfg = backbone.cfg
    assert cfg.blocks == (BlockConfig(1, n_heads=4, d_mlp=48, act_fn="relu"),)
    assert cfg.block(0) == TINY and cfg.block(1).n_heads == 4
    dt = DecisionTransformer(
        DTConfig(state_dim=5, act_dim=2, backbone=cfg, max_ep_len=50), backbone
    )
    dt.eval()
    assert dt.hook_names() == make_dt().hook_names()  # hook names unchanged
    inputs = dt_inputs(dt.cfg, pad=1)
    _, cache = dt.run_with_cache(*inputs)
    assert cache["backbone.blocks.0.attn.hook_pattern"].shape[1] == 2
    assert cache["backbone.blocks.1.attn.hook_pattern"].shape[1] == 4
    mlp, ln2 = dt.backbone.blocks[1].mlp, dt.backbone.blocks[1].ln2
    x = cache["backbone.blocks.1.ln2.hook_normalized"] * ln2.w + ln2.b  # the hook is pre-affine
    by_hand = F.relu(x @ mlp.W_in + mlp.b_in) @ mlp.W_out + mlp.b_out  # the donor's ReLU
    torch.testing.assert_close(cache["backbone.blocks.1.hook_mlp_out"], by_hand)
    with torch.no_grad():  # the receiver's gelu_new would give another output
        gelu = F.gelu(x @ mlp.W_in + mlp.b_in, approximate="tanh") @ mlp.W_out + mlp.b_out
    assert (gelu - by_hand).abs().max() > 1e-3


def test_donor_block_of_another_width_is_refused():
    wide = BackboneConfig(n_layers=2, d_model=32, n_heads=2, d_mlp=64)
    with pytest.raises(DtlensError, match="d_model 32 vs 16"):
        replace_block(random_source(TINY), random_source(wide), 0)
    with pytest.raises(DtlensError, match="out of range"):
        replace_block(random_source(TINY), random_source(OTHER), 2)


def test_mixed_backbone_checkpoints_round_trip(tmp_path):
    backbone = mixed_backbone()
    cfg = DTConfig(state_dim=5, act_dim=2, backbone=backbone.cfg, max_ep_len=50)
    dt = DecisionTransformer(cfg, backbone).eval()
    loaded = load_model(save_model(dt, tmp_path / "dt.safetensors")).eval()
    assert loaded.cfg == dt.cfg
    inputs = dt_inputs(cfg, pad=1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(*inputs), dt(*inputs), rtol=0, atol=0)
    again = read_backbone(save_backbone(backbone.build(), tmp_path / "bb.safetensors"))
    assert again.cfg == backbone.cfg and again.state.keys() == backbone.state.keys()
    for name, p in backbone.state.items():
        torch.testing.assert_close(again.state[name], p, rtol=0, atol=0)


def test_checkpoint_without_the_new_fields_still_loads(tmp_path):
    """A checkpoint written before these options: no padding/time_embed/tie/blocks in its header."""
    dt = make_dt()
    path = save_model(dt, tmp_path / "old.safetensors")
    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()["dtlens"])
    for key in ("padding", "time_embed", "tie_action_head", "dt_init"):
        del header["config"][key]
    del header["config"]["backbone"]["blocks"]
    save_tensors(load_tensors(path), path, metadata={"dtlens": json.dumps(header)})
    loaded = load_model(path)
    assert loaded.cfg == dt.cfg


def test_release_options_round_trip(tmp_path):
    dt = make_dt(padding="released", time_embed="after_norm", tie_action_head=True)
    loaded = load_model(save_model(dt, tmp_path / "dt.safetensors")).eval()
    assert loaded.cfg == dt.cfg
    inputs = dt_inputs(dt.cfg, pad=2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(*inputs), dt(*inputs), rtol=0, atol=0)


# -- fused path ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options",
    [
        {"padding": "released"},
        {"time_embed": "after_norm"},
        {"tie_action_head": True},
        {"padding": "released", "time_embed": "after_norm", "tie_action_head": True},
        {"mixed": True},
        {"mixed": True, "padding": "released"},
    ],
)
def test_fast_path_equals_hooked_path(options):
    options = dict(options)
    dt = mixed_dt(**options) if options.pop("mixed", False) else make_dt(**options)
    inputs = dt_inputs(dt.cfg, pad=2)
    fast, hooked = both_paths(dt, inputs)
    # Released padding: every position; masked: padded rows differ by design (never read).
    rows = slice(None) if dt.cfg.padding == "released" else inputs[4].repeat_interleave(3, 1).bool()
    torch.testing.assert_close(fast[rows], hooked[rows], atol=1e-5, rtol=1e-5)


# -- converter -----------------------------------------------------------------------------------
def released_state_dict(dt: DecisionTransformer) -> dict[str, torch.Tensor]:
    """A released-style state_dict (`transformer.h.{i}.*` in HF GPT-2 layout) of `dt`'s weights."""
    sd = {}
    for i, block in enumerate(dt.backbone.blocks):
        p, a, m = f"transformer.h.{i}", block.attn, block.mlp
        sd |= {f"{p}.ln_1.weight": block.ln1.w, f"{p}.ln_1.bias": block.ln1.b}
        sd |= {f"{p}.ln_2.weight": block.ln2.w, f"{p}.ln_2.bias": block.ln2.b}
        qkv = [W.permute(1, 0, 2).reshape(W.shape[1], -1) for W in (a.W_Q, a.W_K, a.W_V)]
        sd[f"{p}.attn.c_attn.weight"] = torch.cat(qkv, dim=1)
        sd[f"{p}.attn.c_attn.bias"] = torch.cat([b.reshape(-1) for b in (a.b_Q, a.b_K, a.b_V)])
        sd[f"{p}.attn.c_proj.weight"] = a.W_O.reshape(-1, a.W_O.shape[-1])
        sd[f"{p}.attn.c_proj.bias"] = a.b_O
        sd |= {f"{p}.mlp.c_fc.weight": m.W_in, f"{p}.mlp.c_fc.bias": m.b_in}
        sd |= {f"{p}.mlp.c_proj.weight": m.W_out, f"{p}.mlp.c_proj.bias": m.b_out}
    sd |= {
        "transformer.ln_f.weight": dt.backbone.ln_final.w,
        "transformer.ln_f.bias": dt.backbone.ln_final.b,
    }
    for name in ("embed_return", "embed_state", "embed_action", "embed_timestep", "embed_ln"):
        sd |= {f"{name}.{k}": v for k, v in getattr(dt, name).state_dict().items()}
    if not dt.cfg.tie_action_head:
        sd |= {f"predict_action.0.{k}": v for k, v in dt.predict_action.state_dict().items()}
    return {k: v.detach().clone() for k, v in sd.items()}


@pytest.mark.parametrize("tied", [False, True])
def test_from_released_reads_a_released_state_dict(tied):
    dt = mixed_dt(padding="released", time_embed="after_norm", tie_action_head=tied)
    cfg = dt.cfg
    loaded = DecisionTransformer.from_released(released_state_dict(dt), cfg).eval()
    inputs = dt_inputs(cfg, pad=2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(*inputs), dt(*inputs), rtol=0, atol=1e-6)
    with pytest.raises(DtlensError, match="shape"):
        DecisionTransformer.from_released(released_state_dict(dt), cfg.replace(backbone=TINY))


# -- block replacement study ---------------------------------------------------------------------
def test_released_block_zero_is_the_full_donor(hopper_file, tmp_path):
    donor = str(save_backbone(random_backbone(OTHER, seed=3), tmp_path / "donor.safetensors"))
    base = tiny_train_config(hopper_file)
    check_donor(donor, TINY)  # other heads and activation fit now
    with pytest.raises(DtlensError, match="d_model"):
        check_donor(donor, BackboneConfig(n_layers=2, d_model=32, n_heads=2, d_mlp=64))
    plain = block_swap_specs(base, donor)
    quirk = block_swap_specs(base, donor, released_block_zero=True)
    assert plain["block 0"].cfg.replace_block == 0 and plain["block 0"].cfg.init == "random"
    assert quirk["block 0"] == quirk["donor"] and quirk["block 0"].cfg.init == donor
    assert quirk["block 1"] == plain["block 1"]


@pytest.mark.slow
def test_block_swap_study_with_the_released_block_zero(hopper_file, tmp_path):
    """A 1-block-of-another-kind swap study runs; released block 0 reuses the donor run."""
    donor = str(save_backbone(random_backbone(OTHER, seed=3), tmp_path / "donor.safetensors"))
    base = tiny_train_config(hopper_file, epochs=1, eval_episodes=0)
    ds, outcomes = run_block_swap(base, donor, tmp_path / "study", released_block_zero=True)
    assert len(outcomes) == 3  # random, block 1, donor (= block 0)
    assert ds.variant.values.tolist() == ["random", "block 0", "block 1", "donor"]
    zero, full = ds.action_error.sel(variant="block 0"), ds.action_error.sel(variant="donor")
    assert (zero == full).all() and not (zero == ds.action_error.sel(variant="block 1")).all()


# -- training ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "changes",
    [
        {"dt": {"padding": "released"}},
        {"dt": {"time_embed": "after_norm", "tie_action_head": True}},
        {"replace_block": 1},
    ],
)
def test_tiny_run_with_each_option(hopper_file, tmp_path, changes):
    if "replace_block" in changes:
        donor = save_backbone(random_backbone(OTHER, seed=3), tmp_path / "donor.safetensors")
        changes = changes | {"donor": str(donor)}
    cfg = tiny_train_config(hopper_file, epochs=1, eval_episodes=0, **changes)
    run = train(cfg, tmp_path / "run", progress=False)
    model = run.load_model(1)
    for key in ("padding", "time_embed", "tie_action_head"):
        assert getattr(model.cfg, key) == getattr(cfg.dt, key)
    if "replace_block" in changes:
        assert model.cfg.backbone.blocks == (BlockConfig(1, n_heads=4, d_mlp=48, act_fn="relu"),)
    before, after = run.load_model(0).state_dict(), model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_cli_train_flags(hopper_file, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--dataset", str(hopper_file), "--layers", "2", "--d-model", "16"]
    args += ["--heads", "2", "--epochs", "1", "--steps", "2", "--batch-size", "4"]
    args += ["--context", "3", "--eval-episodes", "0"]
    options = ["--padding", "released", "--time-embed", "after_norm", "--tie-action-head"]
    options += ["--dt-init", "gpt2"]
    res = runner.invoke(app, [*args, *options, "--out", str(out)])
    assert res.exit_code == 0, res.output
    config = json.loads((out / "config.json").read_text())
    model = config["model"]
    assert (model["padding"], model["time_embed"], model["tie_action_head"]) == (
        "released",
        "after_norm",
        True,
    )
    assert model["dt_init"] == config["train"]["dt"]["dt_init"] == "gpt2"
    time_embed = load_tensors(out / "checkpoints" / "epoch-0000.safetensors")[
        "embed_timestep.weight"
    ]
    assert float(time_embed.std()) < 0.05  # N(0, 0.02), not PyTorch's N(0, 1)
    res = runner.invoke(app, [*args, "--padding", "sideways", "--out", str(tmp_path / "x")])
    assert res.exit_code == 1 and "--padding must be masked or released" in res.output


def test_per_sample_gradients_with_every_released_option():
    """torch.func (vmap of grad, hooked path) sees the padding hooks, tied head, mixed block."""
    dt = mixed_dt(padding="released", time_embed="after_norm", tie_action_head=True)
    batch = Batch(*dt_inputs(dt.cfg, batch=3, steps=3, pad=2))
    grads = dict(iter_per_sample_grads(dt, batch, chunk_size=2, train_mode=False))
    for i in range(len(batch)):
        dt.zero_grad()
        action_loss(dt, batch.index([i])).backward()
        for name, g in grads.items():
            torch.testing.assert_close(g[i], dt.get_parameter(name).grad, rtol=0, atol=1e-5)
