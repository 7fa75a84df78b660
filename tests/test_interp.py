"""dtlens.interp: exact action attribution, activation patching, the action lens, linear probes,
the attention viewer, their CLI commands, and the report's two-sided reading."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
import xarray as xr
from typer.testing import CliRunner

from cli.main import app
from dtlens import DecisionTransformer, DTConfig
from dtlens.data.windows import Batch
from dtlens.errors import DtlensError
from dtlens.interp import (
    action_attribution,
    action_lens,
    activation_patching,
    attention_view,
    linear_probe,
)
from dtlens.interp.analyses.action_lens import half_error_depth
from dtlens.interp.patching import corrupt_last_state
from dtlens.interp.registry import INTERP
from dtlens.model import BackboneConfig
from dtlens.report.components import direction
from dtlens.stats import compare
from tests.conftest import dt_inputs, perturb_

runner = CliRunner()
NORMS = ("LN", "RMS")


def model_for(norm: str, seed: int = 1) -> DecisionTransformer:
    cfg = DTConfig(
        state_dim=5,
        act_dim=2,
        backbone=BackboneConfig(
            n_layers=2, d_model=16, n_heads=2, d_mlp=32, normalization_type=norm
        ),
        max_ep_len=50,
    )
    return perturb_(DecisionTransformer(cfg, seed=seed), seed=seed).eval()


def batch_for(model: DecisionTransformer, seed: int = 0, pad: int = 2) -> Batch:
    return Batch(*dt_inputs(model.cfg, batch=4, steps=4, pad=pad, seed=seed))


def pre_tanh(model: DecisionTransformer, batch: Batch) -> torch.Tensor:
    with torch.no_grad():
        hidden = model.hidden_states(*vars(batch).values())
        return model.predict_action(hidden[:, -2])


@pytest.mark.parametrize("norm", NORMS)
def test_attribution_sums_exactly_to_the_pre_tanh_action(norm):
    model, batch = model_for(norm), batch_for(model_for(norm))
    ds = action_attribution(model, batch)
    total = ds["contribution"].sum("component").values
    np.testing.assert_allclose(total, pre_tanh(model, batch).numpy(), atol=1e-4)
    np.testing.assert_allclose(ds["prediction"].values, total, atol=1e-4)
    with torch.no_grad():
        np.testing.assert_allclose(ds["action"], model(*vars(batch).values())[:, -1], atol=1e-5)
    heads = [f"L{i}H{h}" for i in range(2) for h in range(2)]
    assert set(ds["component"].values) == {
        "state_embed", "time_embed", "L0MLP", "L1MLP", "bias", *heads
    }  # fmt: skip


def test_attribution_and_patching_on_a_mixed_backbone():
    """A block-swap receiver (block 1 with 4 heads among 2-head blocks) gets one component per
    head of each block, sums exactly, and patches per head of each block."""
    from tests.test_released_model import mixed_dt

    model = mixed_dt()
    batch = batch_for(model)
    ds = action_attribution(model, batch)
    heads = [f"L0H{h}" for h in range(2)] + [f"L1H{h}" for h in range(4)]
    assert set(heads) <= set(ds["component"].values) and "L1H3" in ds["component"].values
    assert "L0H2" not in ds["component"].values
    total = ds["contribution"].sum("component").values
    np.testing.assert_allclose(total, pre_tanh(model, batch).numpy(), atol=1e-4)
    patched = activation_patching(model, batch, batch_for(model, seed=5), ["z"])
    assert patched.sizes["site"] == 6


def test_patching_across_head_counts_takes_block_outputs_and_refuses_heads():
    """A donor with other head counts and MLP width (GPT-2 into the paper's 1-head random init,
    in small) patches block outputs; head-indexed activations do not fit and say so."""
    from tests.test_released_model import OTHER, make_dt

    model, donor = make_dt(), make_dt(OTHER, seed=4)
    clean, corrupted = batch_for(model), batch_for(model, seed=5)
    ds = activation_patching(model, clean, corrupted, ["attn_out", "mlp_out"], donor=donor)
    assert ds.sizes["site"] == 4 and np.isfinite(ds["recovered"]).all()
    with pytest.raises(DtlensError, match="other head counts"):
        activation_patching(model, clean, corrupted, ["z"], donor=donor)


@pytest.mark.parametrize("norm", NORMS)
def test_a_silenced_head_and_mlp_contribute_exactly_nothing(norm):
    model = model_for(norm)
    with torch.no_grad():
        model.backbone.blocks[0].attn.W_O[1] = 0
        model.backbone.blocks[1].mlp.W_out.zero_()
    ds = action_attribution(model, batch_for(model))
    assert np.abs(ds["contribution"].sel(component=["L0H1", "L1MLP"])).max() == 0
    assert np.abs(ds["contribution"].sel(component="L0H0")).max() > 1e-3


@pytest.mark.parametrize("norm", NORMS)
def test_patching_a_model_into_itself_changes_nothing(norm):
    model = model_for(norm)
    batch = batch_for(model)
    for donor in (None, copy.deepcopy(model)):
        ds = activation_patching(
            model, batch, batch, ["resid_post", "z", "pattern"], positions=[0, 5], donor=donor
        )
        np.testing.assert_allclose(
            ds["action"], ds["corrupted_action"].expand_dims(site=ds.sizes["site"]), atol=1e-5
        )
        np.testing.assert_allclose(ds["clean_action"], ds["corrupted_action"], atol=1e-5)
        assert ds.sizes["site"] == 2 * 2 + 2 * 2 * 2 + 2 * 2 * 2  # resid, z and pattern heads
        assert np.isnan(ds["recovered"]).all()  # no gap to recover


@pytest.mark.parametrize("norm", NORMS)
def test_patching_the_last_resid_post_recovers_the_clean_action(norm):
    model = model_for(norm)
    clean, corrupted = batch_for(model, seed=0), batch_for(model, seed=5, pad=0)
    ds = activation_patching(model, clean, corrupted, ["backbone.blocks.1.hook_resid_post"])
    np.testing.assert_allclose(ds["action"].isel(site=0), ds["clean_action"], atol=1e-5)
    assert ds["recovered"].item() == pytest.approx(1.0, abs=1e-5)
    assert np.abs(ds["clean_action"] - ds["corrupted_action"]).max() > 1e-2


def test_patching_a_position_the_readout_cannot_see_recovers_nothing():
    """Attention is causal: the last action token (position 3K - 1) comes after the readout."""
    model = model_for("LN")
    clean, corrupted = batch_for(model, seed=0), batch_for(model, seed=5)
    ds = activation_patching(model, clean, corrupted, ["resid_post"], positions=[10, 11])
    by_position = ds["recovered"].groupby("position").mean().to_series()
    assert by_position[11] == pytest.approx(0.0, abs=1e-5)
    assert by_position[10] > 0.5  # the readout token itself


def test_patching_across_models_uses_the_donors_activations():
    """The donor's last residual stream in the recipient: the recipient's final norm and head
    read the donor's stream."""
    model, donor = model_for("LN", seed=1), model_for("LN", seed=2)
    batch = batch_for(model)
    last = "backbone.blocks.1.hook_resid_post"
    ds = activation_patching(model, batch, batch, [last], donor=donor)
    resid = {}
    with torch.no_grad():
        clean = donor.run_with_hooks(
            *vars(batch).values(), fwd_hooks=[(last, lambda x, hook: resid.setdefault("x", x))]
        )[:, -1]
        own = torch.tanh(model.predict_action(model.backbone.ln_final(resid["x"][:, -2])))
    np.testing.assert_allclose(ds["clean_action"], clean, atol=1e-5)
    np.testing.assert_allclose(ds["action"].isel(site=0), own, atol=1e-5)
    assert np.abs(ds["action"].isel(site=0) - ds["clean_action"]).max() > 1e-3


def test_patching_refuses_a_donor_of_another_shape_and_unknown_hooks():
    model, batch = model_for("LN"), batch_for(model_for("LN"))
    other = DecisionTransformer(
        DTConfig(
            state_dim=5,
            act_dim=2,
            backbone=BackboneConfig(n_layers=3, d_model=16, n_heads=2, d_mlp=32),
            max_ep_len=50,
        )
    )
    with pytest.raises(DtlensError, match="do not fit"):
        activation_patching(model, batch, batch, ["resid_post"], donor=other)
    with pytest.raises(DtlensError, match="unknown hook"):
        activation_patching(model, batch, batch, ["no_such_hook"])
    with pytest.raises(DtlensError, match="no token position"):
        activation_patching(model, batch, batch, ["state_embed"], positions=[0])
    with pytest.raises(DtlensError, match=r"positions must lie in \[0, 12\)"):
        activation_patching(model, batch, batch, ["resid_post"], positions=[12])


def test_corrupt_last_state_takes_every_last_state_from_another_window():
    model = model_for("LN")
    batch = batch_for(model)
    bad = corrupt_last_state(batch, seed=3)
    assert torch.equal(bad.states[:, :-1], batch.states[:, :-1])
    for i in range(len(batch)):
        assert not torch.equal(bad.states[i, -1], batch.states[i, -1])
        assert any(torch.equal(bad.states[i, -1], batch.states[j, -1]) for j in range(len(batch)))


@pytest.mark.parametrize("norm", NORMS)
def test_lens_last_layer_equals_the_model(norm):
    model = model_for(norm)
    batch = batch_for(model)
    ds = action_lens(model, batch)
    with torch.no_grad():
        out = model(*vars(batch).values())[:, -1].numpy()
        tokens = model.embed(batch.states, batch.actions, batch.returns_to_go, batch.timesteps)
        first = torch.tanh(model.predict_action(model.backbone.ln_final(tokens[:, -2])))
    np.testing.assert_allclose(ds["action"].isel(layer=-1), out, atol=1e-5)
    np.testing.assert_allclose(ds["action"].isel(layer=0), first, atol=1e-5)
    err = ((ds["action"] - ds["target"]) ** 2).mean(("sample", "action_dim"))
    np.testing.assert_allclose(ds["error"], err, rtol=1e-6)
    assert ds.sizes["layer"] == 3


@pytest.mark.parametrize(
    "errors, depth", [([1.0, 0.5, 0.0], 1.0), ([1.0, 0.8, 0.2, 0.0], 1.5), ([0.2, 0.5, 0.4], 0.0)]
)
def test_half_error_depth(errors, depth):
    ds = xr.Dataset({"error": ("layer", np.asarray(errors))})
    assert half_error_depth(ds) == pytest.approx(depth)


def planted(n: int = 300, positions: int = 6, d: int = 12, seed: int = 0):
    """Activations (sample, layer, position, d): layer 0 holds a linear feature of the target at
    state tokens only, layer 1 is noise."""
    rng = np.random.default_rng(seed)
    acts = rng.normal(size=(n, 2, positions, d))
    target = rng.normal(size=(n, positions, 2))
    w = rng.normal(size=(2, d))
    state = np.arange(positions) % 3 == 1
    acts[:, 0, state] += 3 * target[:, state] @ w
    coords = {
        "token_type": (
            "position",
            np.array(["return", "state", "action"])[np.arange(positions) % 3],
        )
    }
    return (
        xr.DataArray(
            acts, dims=("sample", "layer", "position", "d_model"), coords=coords | {"layer": [0, 1]}
        ),
        xr.DataArray(target, dims=("sample", "position", "f")),
    )


def test_probe_recovers_a_planted_feature_and_reads_zero_when_shuffled():
    acts, target = planted()
    ds = linear_probe(acts, target, alpha=1.0)
    r2 = ds["r2"].to_series()
    assert r2[(0, "state")] > 0.9
    assert abs(r2[(0, "return")]) < 0.1 and abs(r2[(1, "state")]) < 0.1
    assert np.abs(ds["r2_shuffled"]).max() < 0.1
    assert ds.attrs["test_samples"] == 60


def test_probe_on_plain_samples_and_masked_positions():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1000, 8))
    y = x @ rng.normal(size=8)
    ds = linear_probe(xr.DataArray(x, dims=("sample", "d")), xr.DataArray(y, dims="sample"))
    assert ds["r2"].item() > 0.99 and abs(ds["r2_shuffled"].item()) < 0.1
    acts, target = planted()
    valid = xr.DataArray(np.ones((300, 6), bool), dims=("sample", "position"))
    valid[:, 1] = False  # one state token left out: the other still carries the feature
    masked = linear_probe(acts, target, valid=valid)
    assert masked["r2"].sel(layer=0, token_type="state") > 0.9


def test_probe_bad_input():
    acts, target = planted(n=10)
    with pytest.raises(DtlensError, match="samples"):
        linear_probe(acts, target.isel(sample=slice(0, 5)))
    with pytest.raises(DtlensError, match="test_fraction"):
        linear_probe(acts, target, test_fraction=1.0)
    with pytest.raises(DtlensError, match="NaN"):
        linear_probe(acts.where(acts > 5), target)


class Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.scripts, self._in = [], [], None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in = dict(attrs).get("id") if tag == "script" else None

    def handle_data(self, data):
        if self._in == "data":
            self.scripts.append(data)


def test_attention_view_is_a_self_contained_page_with_token_labels(tmp_path):
    model = model_for("LN")
    batch = batch_for(model)
    path = attention_view(model, batch, tmp_path / "view.html", windows=2, title="a <test>")
    parser = Collect()
    parser.feed(path.read_text())
    assert not any("src" in attrs or "href" in attrs for _, attrs in parser.tags)
    data = json.loads("".join(parser.scripts))
    assert np.asarray(data["patterns"]).shape == (2, 2, 2, 12, 12)
    labels = data["labels"][1]
    assert labels[:6] == ["pad"] * 6  # the second window's first two steps are padding
    steps = batch.timesteps[1].tolist()
    assert labels[6:9] == [f"R_{steps[2]}", f"s_{steps[2]}", f"a_{steps[2]}"]
    rows = np.asarray(data["patterns"]).sum(-1)  # (window, layer, head, query)
    real = np.asarray(data["labels"]) != "pad"
    assert np.allclose(rows.transpose(1, 2, 0, 3)[:, :, real], 1, atol=5e-3)
    assert "0.49799999" not in path.read_text()  # rounded to 3 decimals
    assert "a &lt;test&gt;" in path.read_text()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium")
def test_attention_view_renders_in_headless_chromium(tmp_path):
    model = model_for("LN")
    path = attention_view(model, batch_for(model), tmp_path / "view.html", windows=2)
    dom = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", path.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert "block 0, head 0 (window 0)" in dom  # drawn by the page's script
    assert dom.count("<svg") == 2 * 2 + 1  # every head's thumbnail and the enlarged head
    assert ">s_" in dom and ">R_" in dom and ">a_" in dom  # token labels on the axes


def test_two_sided_reading_of_a_comparison():
    high, low = [3.0, 3.1, 3.2], [1.0, 1.1, 1.2]
    two = "two-sided"
    assert direction(compare(high, low, expect=two), "language", "random") == "language > random"
    assert direction(compare(low, high, expect=two), "language", "random") == "language < random"
    assert direction(compare(high, [1.0, 5.0, 3.0], expect=two), "a", "b") == "no difference shown"
    with pytest.raises(ValueError, match="two-sided"):
        direction(compare(high, low, expect="greater"), "a", "b")


def test_interp_findings_are_two_sided_questions():
    assert {d.finding.expect for d in INTERP.values() if d.finding} == {"two-sided"}


@pytest.fixture(scope="module")
def run(tiny_run):
    return tiny_run


@pytest.mark.parametrize(
    "command, name, variable",
    [
        ("attribution", "attribution", "contribution"),
        ("action-lens", "action_lens", "error"),
        ("probe", "probe", "r2"),
        ("patching", "patching", "recovered"),
    ],
)
def test_cli_writes_nc_and_png(run, command, name, variable):
    result = runner.invoke(app, [command, str(run.path)])
    assert result.exit_code == 0, result.output
    assert (run.path / "figures" / f"{name}.png").stat().st_size > 0
    with xr.open_dataset(run.path / "diagnostics" / f"{name}.nc") as ds:
        assert variable in ds and ds.attrs["run"] == "run" and ds.attrs["epoch"] == 2
        assert np.isfinite(ds[variable]).all()


def test_cli_patch_with_a_donor_and_per_position(run):
    checkpoint = run.path / "checkpoints" / "epoch-0000.safetensors"
    args = ["patching", str(run.path), "--donor", str(checkpoint), "--hooks", "resid_post"]
    result = runner.invoke(app, [*args, "--positions", "--samples", "3"])
    assert result.exit_code == 0, result.output
    with xr.open_dataset(run.path / "diagnostics" / "patching-from-epoch-0000.nc") as ds:
        assert ds.sizes["site"] == 2 * 12 and ds.attrs["donor"] == str(checkpoint)
        after = ds.isel(site=ds["position"].values == 11)  # after the readout: no effect
        np.testing.assert_allclose(
            after["action"], after["corrupted_action"].expand_dims(site=2), atol=1e-5
        )
    assert (run.path / "figures" / "patching-from-epoch-0000.png").is_file()


def test_cli_cross_patching_keys_runs_by_role_and_seed(run, tmp_path):
    args = ["cross-patching", "--language", str(run.path), "--random", str(run.path)]
    result = runner.invoke(app, [*args, "--samples", "2", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    with xr.open_dataset(tmp_path / "diagnostics" / "cross_patching.nc") as ds:
        seed = run.train_config.seed
        assert list(ds["donor"].values) == ["language"] and list(ds["seed"].values) == [seed]
        assert ds.sizes["site"] == 2 * run.load_model(-1).cfg.n_layers  # attn_out, mlp_out
    assert (tmp_path / "figures" / "cross_patching.png").is_file()
    twice = [*args[:4], f"{run.path},{run.path}", "--out", str(tmp_path)]
    result = runner.invoke(app, twice)
    assert result.exit_code == 1 and "two random runs of seed" in result.output


def test_cli_attention_view(run):
    result = runner.invoke(app, ["attention-view", str(run.path), "--windows", "2"])
    assert result.exit_code == 0, result.output
    assert (run.path / "figures" / "attention-view.html").stat().st_size > 1000


@pytest.mark.parametrize(
    "args, message",
    [
        (["patching", "--hooks", "nope"], "unknown hook"),
        (["probe", "--epoch", "7"], "no checkpoint for epoch(s) [7]"),
        (["attention-view", "--windows", "0"], "must be at least 1, got 0"),
    ],
)
def test_cli_bad_input_is_one_line(run, args, message):
    result = runner.invoke(app, [args[0], str(run.path), *args[1:]])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error:") and message in result.output
    assert len(result.output.strip().splitlines()) == 1
