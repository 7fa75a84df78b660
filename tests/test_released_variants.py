"""The released code's variants of CKA, MI, attention change and gradient share beside dtlens's:
hand-computed values, where the two differ, and the findings the report compares with the paper.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import xarray as xr
from typer.testing import CliRunner

from cli.main import app
from dtlens.capture import capture
from dtlens.data.windows import Batch
from dtlens.diagnostics.analyses import attention as attention_analysis
from dtlens.diagnostics.analyses import cka as cka_analysis
from dtlens.diagnostics.analyses import gradients as gradients_analysis
from dtlens.diagnostics.analyses import mutual_info as mutual_info_analysis
from dtlens.diagnostics.attention import change_of_mean, per_sample_change
from dtlens.diagnostics.cka import cka
from dtlens.diagnostics.contract import Settings
from dtlens.diagnostics.gradients import released_share, share_of_norm
from dtlens.diagnostics.mutual_info import estimate
from dtlens.train.loop import train
from tests.conftest import dt_inputs, perturb_, tiny_train_config

runner = CliRunner()


def as_batch(cfg, n: int, steps: int, seed: int = 0) -> Batch:
    states, actions, rtg, timesteps, mask = dt_inputs(cfg, batch=n, steps=steps, seed=seed)
    return Batch(states, actions, rtg, timesteps, mask)


@pytest.fixture
def model(tiny_dt):
    return perturb_(tiny_dt)  # norm weights != 1 and biases != 0: a norm's output != its hook


@pytest.fixture(scope="module")
def run(hopper_file, tmp_path_factory):
    cfg = tiny_train_config(hopper_file, epochs=1, eval_episodes=0, probe_size=12)
    return train(cfg, tmp_path_factory.mktemp("released") / "run", progress=False)


# CKA on the released sites


def test_site_units_are_the_hf_module_outputs_by_hand(model, tiny_cfg):
    """Each site's last 3 units from the block's parameters: ln_1 = LayerNorm(resid_pre) with
    its weight and bias, c_attn = (q, k, v) of ln_1 side by side (the last units: v's), ..."""
    batch = as_batch(tiny_cfg, 5, 4)
    units = cka_analysis.released_site_units(model, batch, batch_size=2)  # chunks: 2 + 2 + 1
    n_layers = tiny_cfg.backbone.n_layers
    assert units.dims == ("sample", "site", "position", "unit")
    assert units.shape == (5, 8 * n_layers, 12, 3)
    assert list(units.site.values[:8]) == [
        "0.ln_1",
        "0.attn.c_attn",
        "0.attn.c_proj",
        "0.attn.resid_dropout",
        "0.ln_2",
        "0.mlp.c_fc",
        "0.mlp.c_proj",
        "0.mlp.dropout",
    ]
    b = batch
    _, cache = model.run_with_cache(
        b.states, b.actions, b.returns_to_go, b.timesteps, b.attention_mask
    )
    for i, block in enumerate(model.backbone.blocks):
        pre, mid = (
            cache[f"backbone.blocks.{i}.hook_resid_pre"],
            cache[f"backbone.blocks.{i}.hook_resid_mid"],
        )
        ln_1 = torch.nn.functional.layer_norm(pre, (16,), block.ln1.w, block.ln1.b, eps=1e-5)
        ln_2 = torch.nn.functional.layer_norm(mid, (16,), block.ln2.w, block.ln2.b, eps=1e-5)
        v = torch.einsum("bpm,hmd->bphd", ln_1, block.attn.W_V) + block.attn.b_V
        c_fc = ln_2 @ block.mlp.W_in + block.mlp.b_in
        expected = {
            "ln_1": ln_1,
            "attn.c_attn": v.flatten(2),
            "attn.c_proj": cache[f"backbone.blocks.{i}.hook_attn_out"],
            "attn.resid_dropout": cache[f"backbone.blocks.{i}.hook_attn_out"],
            "ln_2": ln_2,
            "mlp.c_fc": c_fc,
            "mlp.c_proj": cache[f"backbone.blocks.{i}.hook_mlp_out"],
            "mlp.dropout": cache[f"backbone.blocks.{i}.hook_mlp_out"],
        }
        for site, x in expected.items():
            got = units.sel(site=f"{i}.{site}").values
            np.testing.assert_allclose(got, x[..., -3:].detach().numpy(), atol=1e-5, err_msg=site)
    # The norm's own hook is taken before its weight and bias: not the released site.
    hook = cache["backbone.blocks.0.ln1.hook_normalized"][..., -3:].numpy()
    assert np.abs(units.sel(site="0.ln_1").values - hook).max() > 1e-2


def test_site_cka_by_hand():
    """Unit -3 / -2 / -1 across positions per token type, rows = samples; NaN for `all`."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((30, 2, 6, 3))  # sample, site, position, unit
    b = a.copy()
    b[:, 0] = 2.0 * a[:, 0] + 1.0  # site 0: an affine copy, CKA 1
    b[:, 1, :, 0] = rng.standard_normal((30, 6))  # site 1, unit -3 ("return") replaced
    ua, ub = (xr.DataArray(x, dims=("sample", "site", "position", "unit")) for x in (a, b))
    out = cka_analysis.site_cka(ua, ub)
    assert out.shape == (4, 2, 2)
    np.testing.assert_allclose(out[:3, 0, 0], 1.0, atol=1e-6)
    for t in range(3):
        for i in range(2):
            for j in range(2):
                hand = cka(a[:, i, :, t], b[:, j, :, t], debiased=True)
                assert out[t, i, j] == pytest.approx(hand, abs=1e-6)
    assert out[0, 1, 1] < 0.5 < out[1, 1, 1]  # only the return unit changed at site 1
    assert np.isnan(out[3]).all()


def test_released_cka_reads_three_units_only(model, tiny_cfg):
    """Where released and correct differ: the released indexing reads the last 3 hidden units
    only, so scaling block 0's norm weights on every other unit leaves the released ln_1 CKA at
    1 while block 0's output (resid_post, the correct analysis) changes."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.backbone.blocks[0].ln1.w[:-3] *= 50.0
        other.backbone.blocks[0].ln2.w[:-3] *= 50.0
    batch = as_batch(tiny_cfg, 20, 4)
    hooks = ["tokens", "resid_post"]
    caps = [capture(m, batch, hooks) for m in (model, other)]
    sites = tuple(cka_analysis.released_site_units(m, batch) for m in (model, other))
    ds = cka_analysis.layer_cka(*caps, paper_variant=True, sites=sites)
    released = cka_analysis.site_diagonal(ds).sel(
        site="0.ln_1", token_type=["return", "state", "action"]
    )
    np.testing.assert_allclose(released, 1.0, atol=1e-4)  # 1 up to the released + 1e-6
    correct = cka_analysis.diagonal(ds, "last").sel(
        layer=0, token_type=["return", "state", "action"]
    )
    assert (correct < 0.999).all()
    assert cka_analysis.paper_mean_diagonal(ds) == pytest.approx(
        float(cka_analysis.site_diagonal(ds).sel(token_type=["return", "state", "action"]).mean())
    )
    assert cka_analysis.paper_mean_diagonal(ds) != pytest.approx(
        cka_analysis.mean_diagonal(ds), abs=1e-3
    )
    plain = ds.drop_vars(["paper_site_cka", "site_a", "site_b"])
    assert cka_analysis.paper_mean_diagonal(plain) == cka_analysis.mean_diagonal(ds)


def test_cka_run_and_cli_add_the_released_sites(run):
    ds = cka_analysis.compute_layer_cka(run, paper_variant=True)
    assert ds["paper_site_cka"].dims == ("token_type", "site_a", "site_b")
    assert ds.sizes["site_a"] == 8 * 2
    rows = cka_analysis.summary(ds).rows
    assert [r[1] for r in rows if r[0] == "paper_sites"] == list(ds.site_a.values)
    f = cka_analysis.DIAGNOSTIC.finding
    assert (f.value, f.correct) == (cka_analysis.paper_mean_diagonal, cka_analysis.mean_diagonal)
    assert "paper_site_cka" not in cka_analysis.compute_layer_cka(run)
    res = runner.invoke(app, ["cka", str(run.path), "--paper-variant"])
    assert res.exit_code == 0, res.output
    assert "paper_sites" in res.output


# MI on the released sites


def test_released_positions_skip_the_last_action():
    assert mutual_info_analysis.released_positions(2) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    assert len(mutual_info_analysis.released_positions(20)) == 59


def test_paper_information_by_hand():
    """1-D X and T: the Gaussian MI is -1/2 log(1 - r^2) of their sample correlation."""
    rng = np.random.default_rng(0)
    n, k = 300, 2
    batch = Batch(
        states=torch.randn(n, k, 3, generator=torch.Generator().manual_seed(1)),
        actions=torch.from_numpy(rng.uniform(-1, 1, (n, k, 1))).float(),
        returns_to_go=torch.from_numpy(rng.standard_normal((n, k, 1))).float(),
        timesteps=torch.zeros(n, k, dtype=torch.long),
        attention_mask=torch.ones(n, k, dtype=torch.long),
    )
    batch.returns_to_go[:, 1] = 0.0  # constant, as at a step every window pads
    t = rng.standard_normal((n, 1, 3 * k, 1))
    t[:, 0, -2, 0] = batch.returns_to_go[:, 0, 0].numpy() + 0.5 * rng.standard_normal(n)
    t[:, 0, 3, 0] = batch.actions[:, -1, 0].numpy() + 0.3 * rng.standard_normal(n)
    mlp_out = xr.DataArray(
        t, dims=("sample", "layer", "position", "d_model"), coords={"layer": [0]}
    )
    out = mutual_info_analysis.paper_information(mlp_out, batch, "gaussian")
    assert out.dims == ("quantity", "block", "context")
    assert list(out.context.values) == [0, 1, 2, 3, 4]
    assert list(out.context_token.values) == ["return", "state", "action", "return", "state"]

    def hand(x, y):
        r = np.corrcoef(np.ravel(x), np.ravel(y))[0, 1]
        return -0.5 * np.log(1 - r**2)

    x_mi = out.sel(quantity="I(X;T)", block=0)
    y_mi = out.sel(quantity="I(Y;T)", block=0)
    # I(X;T): X = the return at step 0, T at position -2 (the last state)
    assert float(x_mi.sel(context=0)) == pytest.approx(hand(batch.returns_to_go[:, 0], t[:, 0, -2]))
    # I(Y;T): Y = the last action, T at position 3 (step 1's return)
    assert float(y_mi.sel(context=3)) == pytest.approx(hand(batch.actions[:, -1], t[:, 0, 3]))
    assert float(x_mi.sel(context=0)) > 0.5 and float(y_mi.sel(context=3)) > 0.5
    # The Gaussian estimator fails on the constant return at step 1: NaN, as released.
    assert np.isnan(x_mi.sel(context=3)) and np.isfinite(x_mi.drop_sel(context=3)).all()


def test_mi_run_released_sites_differ_from_resid_post(run):
    """Where released and correct differ: same estimator, same step and token, but T = the MLP
    branch output (released) instead of resid_post (dtlens)."""
    ds = mutual_info_analysis.compute_mutual_info(
        run, blocks=[0], method="gaussian", seeds=1, null_shuffles=0, paper_variant=True
    )
    k = run.train_config.context_len
    assert ds["paper_mi"].sizes["context"] == 3 * k - 1
    batch = run.windows()
    acts = capture(run.load_model(1), batch, ["mlp_out", "resid_post"])
    last_state = (
        acts.mlp_out.sel(layer=0).values[:, -2],
        acts.resid_post.sel(layer=0).values[:, -2],
    )
    x = batch.states[:, -1]
    released = float(ds["paper_mi"].sel(quantity="I(X;T)", block=0, context=3 * (k - 1) + 1))
    assert released == pytest.approx(
        estimate(x, last_state[0], method="gaussian", seeds=[0]).values[0]
    )
    correct = float(ds["mean"].sel(quantity="I(X;T)", block=0, token_type="state"))
    assert correct == pytest.approx(
        estimate(x, last_state[1], method="gaussian", seeds=[0]).values[0]
    )
    assert abs(released - correct) > 1e-3
    assert mutual_info_analysis.paper_mean(ds) == pytest.approx(float(ds["paper_mi"].mean()))
    assert mutual_info_analysis.paper_mean(
        ds.drop_vars("paper_mi")
    ) == mutual_info_analysis.mean_above_null(ds)
    rows = [r for r in mutual_info_analysis.summary(ds).rows if str(r[2]).startswith("paper")]
    assert len(rows) == 2
    f = mutual_info_analysis.DIAGNOSTIC.finding
    assert (f.value, f.correct) == (
        mutual_info_analysis.paper_mean,
        mutual_info_analysis.mean_above_null,
    )
    options = mutual_info_analysis.DIAGNOSTIC.options(Settings(paper_variants=False), None)
    assert options["paper_variant"] is False
    args = "--blocks 0 --method gaussian --seeds 1 --null-shuffles 0 --paper-variant".split()
    res = runner.invoke(app, ["mutual-info", str(run.path), *args])
    assert res.exit_code == 0, res.output
    with xr.open_dataset(run.path / "diagnostics" / "mutual_info.nc") as written:
        assert written["paper_mi"].sizes["context"] == 3 * k - 1


# The findings: the released formula beside the paper's number, the correct one beside it


def test_attention_finding_is_the_per_sample_change():
    """Two samples moving opposite ways: per-sample |d_e - d_0| = 0.1 each, the mean unmoved."""
    d0 = np.array([[0.1, 0.2], [0.3, 0.1]])  # (sample, layer)
    de = np.array([[0.2, 0.1], [0.2, 0.2]])
    heads = change_of_mean(de[..., None], d0[..., None])  # (layer, head=1)
    ds = xr.Dataset(
        {
            "paper_change": (
                ("epoch", "sample", "layer"),
                np.stack([0 * d0, per_sample_change(de, d0)]),
            ),
            "change_timestep": (("epoch", "layer", "head"), np.stack([0 * heads, heads / 3])),
        }
    )
    assert attention_analysis.paper_mean_change(ds) == pytest.approx(0.1)
    assert attention_analysis.mean_change(ds) == pytest.approx(0.0)
    assert attention_analysis.paper_mean_change(ds.drop_vars("paper_change")) == pytest.approx(0.0)
    f = attention_analysis.DIAGNOSTIC.finding
    assert (f.value, f.correct) == (
        attention_analysis.paper_mean_change,
        attention_analysis.mean_change,
    )


def test_gradient_finding_compares_the_released_share_with_the_papers_89_percent():
    """The issue's norms {ln_1.w: 0.2, ln_1.b: 0.1, 100 x 0.01}: released 0.231, dtlens 0.833."""
    norms = {"0.ln_1.weight": 0.2, "0.ln_1.bias": 0.1} | {f"0.t{i}": 0.01 for i in range(100)}
    tensors = list(gradients_analysis.FIRST_NORM) + [f"backbone.blocks.0.t{i}" for i in range(100)]
    sq = np.array([[v**2 for v in norms.values()]])  # one sample
    ds = xr.Dataset(
        {
            "share_mean": ("tensor", share_of_norm(sq)[0]),
            "paper_share": ("released_tensor", list(released_share(norms).values())),
        },
        coords={"tensor": tensors, "released_tensor": list(norms)},
    )
    assert round(gradients_analysis.first_norm_share(ds), 3) == 0.231
    assert round(gradients_analysis.correct_first_norm_share(ds), 3) == 0.833
    f = gradients_analysis.DIAGNOSTIC.finding
    assert (f.value, f.correct) == (
        gradients_analysis.first_norm_share,
        gradients_analysis.correct_first_norm_share,
    )


def test_gradients_cli_paper_variant(run):
    args = ["gradients", str(run.path), "--samples", "6", "--confusion-samples", "3"]
    res = runner.invoke(app, [*args, "--paper-variant"])
    assert res.exit_code == 0, res.output
    assert "paper's formula" in res.output
    with xr.open_dataset(run.path / "diagnostics" / "gradients.nc") as ds:
        assert "paper_share" in ds


def test_report_puts_the_correct_variant_beside_the_papers_formula(tmp_path):
    """Per-seed values on opposite sides: the paper's formula holds the paper's direction, the
    correct variant contradicts it; the section shows both, the summary row both means."""
    from types import SimpleNamespace

    from dtlens.diagnostics.contract import Table
    from dtlens.report.document import Doc
    from dtlens.report.report import Study, section

    def result(paper: float, correct: float) -> xr.Dataset:
        return xr.Dataset(
            {
                "paper_change": (("epoch", "sample", "layer"), [[[0.0]], [[paper]]]),
                "change_timestep": (("epoch", "layer", "head"), [[[0.0]], [[correct]]]),
            }
        )

    low, high = [0.10, 0.12, 0.11], [0.50, 0.52, 0.49]
    results = {f"language-{i}": result(low[i], high[i]) for i in range(3)}
    results |= {f"random-{i}": result(high[i], low[i]) for i in range(3)}

    class FakeStudy(Study):
        def __init__(self):
            self.seeds, self.folder, self.root = [0, 1, 2], tmp_path, tmp_path

        def analysed(self, diag, who, seed):
            return tmp_path / f"{who}-{seed}"

    study = FakeStudy()
    diag = SimpleNamespace(
        title="7. Attention",
        name="attention",
        finding=attention_analysis.DIAGNOSTIC.finding,
        scope="run",
        reads=attention_analysis.DIAGNOSTIC.reads,
        load=lambda path: results[path.name],
        summary=lambda ds: Table("t", ["x"], [[1.0]]),
        png_path=lambda folder: tmp_path / "none.png",
    )
    doc = Doc("r")
    row, comparison = section(doc, study, diag)
    text = doc.markdown()
    assert comparison.verdict == "holds"
    assert "language (correct variant)" in text and "random (correct variant)" in text
    assert "Correct variant:" in text and "**contradicted**" in text
    assert "correct variant: random 0.11, language 0.503, contradicted" in row[2]
