"""dtlens.interp interventions: ablations and steering as exact hook interventions, their
closed-loop effect on returns, the return sweep, and their CLI commands."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import xarray as xr
from typer.testing import CliRunner

from cli.main import app
from dtlens.data.windows import Batch
from dtlens.errors import DtlensError
from dtlens.interp import ablate, return_sweep, rollout_effect, steer, steering_vector
from dtlens.interp.interventions import parse_components
from dtlens.train.loop import train
from tests.conftest import dt_inputs, perturb_, tiny_train_config

runner = CliRunner()


@pytest.fixture
def model(tiny_dt):
    return perturb_(tiny_dt, seed=3).eval()


def inputs(model, seed=0, pad=2):
    return dt_inputs(model.cfg, batch=4, steps=4, pad=pad, seed=seed)


def out(model, args):
    with torch.no_grad():
        return model(*args)


def hooked(model, args):
    with model.hooked_path():
        return out(model, args)


def test_empty_ablation_and_zero_steering_reproduce_the_model_exactly(model):
    args = inputs(model)
    want = out(model, args)
    for how in ("zero", "mean", "resample"):
        with ablate(model, [], how=how):
            assert torch.equal(out(model, args), want)
    with steer(model, 1, torch.zeros(model.cfg.d_model)):
        assert torch.equal(out(model, args), hooked(model, args))
        valid = args[-1].bool()  # the fused blocks differ at padded queries, never read
        torch.testing.assert_close(out(model, args)[valid], want[valid], atol=1e-6, rtol=0)


@pytest.mark.parametrize("layer, head", [(0, 0), (1, 1)])
def test_zero_head_ablation_equals_zeroing_its_rows_of_W_O(model, layer, head):
    args = inputs(model)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.backbone.blocks[layer].attn.W_O[head] = 0
    with ablate(model, [f"L{layer}H{head}"]):
        torch.testing.assert_close(out(model, args), hooked(twin, args), atol=1e-5, rtol=0)
    assert not torch.allclose(out(model, args), out(twin, args), atol=1e-5)


@pytest.mark.parametrize("layer", [0, 1])
def test_zero_mlp_ablation_equals_zeroing_W_out(model, layer):
    args = inputs(model)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.backbone.blocks[layer].mlp.W_out.zero_()
    with ablate(model, f"L{layer}MLP"):
        torch.testing.assert_close(out(model, args), hooked(twin, args), atol=1e-5, rtol=0)
    assert not torch.allclose(out(model, args), out(twin, args), atol=1e-5)


def test_attn_and_block_ablation(model):
    args = inputs(model)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.backbone.blocks[1].attn.W_O.zero_()
    with ablate(model, "L1ATTN"):
        torch.testing.assert_close(out(model, args), hooked(twin, args), atol=1e-5, rtol=0)
    seen = {}

    def save(x, hook):
        seen[hook.name] = x.clone()

    names = ["backbone.blocks.0.hook_resid_pre", "backbone.blocks.0.hook_resid_post"]
    with ablate(model, "L0"), model.hooks(fwd_hooks=[(n, save) for n in names]):
        out(model, args)
    torch.testing.assert_close(seen[names[1]], seen[names[0]])  # the block is skipped


def test_token_type_ablation_touches_only_that_type(model):
    seen = {}

    def save(x, hook):
        seen["post"] = x.clone()

    args = inputs(model)
    name = "backbone.blocks.0.mlp.hook_post"
    with model.hooks(fwd_hooks=[(name, save)]):
        out(model, args)
    clean = seen["post"]
    with ablate(model, "L0MLP@state"), model.hooks(fwd_hooks=[(name, save)]):
        out(model, args)
    state = torch.arange(12) % 3 == 1
    assert (seen["post"][:, state] == 0).all()
    assert torch.equal(seen["post"][:, ~state], clean[:, ~state])


def test_model_unchanged_after_exit_and_after_an_exception(model):
    args = inputs(model)
    want, weights = out(model, args), copy.deepcopy(model.state_dict())
    hooks = {name: len(hp.fwd_hooks) for name, hp in model.hook_dict.items()}
    reference = Batch(*inputs(model, seed=1))

    def unchanged():
        assert torch.equal(out(model, args), want)
        assert not model._backbone_hooked() and model.fast_path
        assert {n: len(hp.fwd_hooks) for n, hp in model.hook_dict.items()} == hooks
        for k, v in model.state_dict().items():
            assert torch.equal(v, weights[k]), k

    with ablate(model, "heads,mlps,blocks", how="mean", reference=reference):
        assert not torch.equal(out(model, args), want)
    unchanged()
    with pytest.raises(RuntimeError, match="boom"):
        with ablate(model, "L0H1,L1", how="resample", reference=reference):
            out(model, args)
            raise RuntimeError("boom")
    unchanged()
    with pytest.raises(RuntimeError, match="boom"):
        with steer(model, 0, torch.ones(model.cfg.d_model), positions="all", scale=2.0):
            assert not torch.equal(out(model, args), want)
            raise RuntimeError("boom")
    unchanged()


def test_mean_ablation_uses_the_reference_windows_mean(model):
    reference = Batch(*dt_inputs(model.cfg, batch=3, steps=4, pad=2, seed=5))
    name = "backbone.blocks.1.attn.hook_z"
    _, cache = model.run_with_cache(*vars(reference).values(), names_filter=[name])
    z = cache[name][:, :, 0]  # head 0: (B, 12, d_head)
    mask = reference.attention_mask.repeat_interleave(3, dim=1).bool()
    by_hand = []
    for t in range(3):  # return, state, action tokens of unpadded steps
        rows = [z[b, p] for b in range(3) for p in range(12) if mask[b, p] and p % 3 == t]
        by_hand.append(sum(rows) / len(rows))
    seen = {}

    def save(x, hook):
        seen["z"] = x.clone()

    with ablate(model, "L1H0", how="mean", reference=reference):
        with model.hooks(fwd_hooks=[(name, save)]):
            out(model, inputs(model))
    for p in range(12):
        torch.testing.assert_close(seen["z"][:, p, 0], by_hand[p % 3].expand(4, -1))
    _, clean = model.run_with_cache(*inputs(model), names_filter=[name])
    assert torch.equal(seen["z"][:, :, 1], clean[name][:, :, 1])  # head 1 untouched


def test_resample_ablation_draws_reference_tokens_of_the_same_type(model):
    reference = Batch(*dt_inputs(model.cfg, batch=3, steps=4, pad=0, seed=5))
    name = "backbone.blocks.0.mlp.hook_post"
    _, cache = model.run_with_cache(*vars(reference).values(), names_filter=[name])
    pool = cache[name]
    seen = []

    def save(x, hook):
        seen.append(x.clone())

    for _ in range(2):
        with ablate(model, "L0MLP", how="resample", reference=reference, seed=4):
            with model.hooks(fwd_hooks=[(name, save)]):
                out(model, inputs(model))
    assert torch.equal(seen[0], seen[1])  # seeded
    for b in range(4):
        for p in range(12):
            same_type = pool[:, p % 3 :: 3].reshape(-1, pool.shape[-1])
            assert (same_type == seen[0][b, p]).all(-1).any()


def test_steering_adds_the_vector_at_the_chosen_tokens(model):
    args = inputs(model)
    name = "backbone.blocks.0.hook_resid_post"
    seen = {}

    def save(x, hook):
        seen[len(seen)] = x.clone()

    vector = torch.randn(model.cfg.d_model)
    with model.hooks(fwd_hooks=[(name, save)]):
        out(model, args)
    with steer(model, 1, vector, positions="action", scale=0.5):
        with model.hooks(fwd_hooks=[(name, save)]):
            out(model, args)
    action = torch.arange(12) % 3 == 2
    torch.testing.assert_close(seen[1][:, action], seen[0][:, action] + 0.5 * vector)
    assert torch.equal(seen[1][:, ~action], seen[0][:, ~action])


def test_steering_vector_is_the_difference_of_means(model):
    a = Batch(*dt_inputs(model.cfg, batch=3, steps=4, pad=0, seed=1))
    b = Batch(*dt_inputs(model.cfg, batch=2, steps=4, pad=0, seed=2))
    name = "backbone.blocks.1.hook_resid_post"
    mean = {}
    for key, batch in (("a", a), ("b", b)):
        _, cache = model.run_with_cache(*vars(batch).values(), names_filter=[name])
        mean[key] = cache[name][:, 1::3].mean((0, 1))
    v = steering_vector(model, a, b, 2)
    torch.testing.assert_close(v, mean["a"] - mean["b"], atol=1e-5, rtol=0)
    assert torch.equal(steering_vector(model, a, a, 2), torch.zeros_like(v))


@pytest.mark.parametrize(
    "names, message",
    [
        ("L0H9", "no component 'L0H9'"),
        ("L7MLP", "no component 'L7MLP'"),
        ("block0", "unknown component 'block0'"),
        ("L0@value", "unknown token type"),
    ],
)
def test_unknown_components_are_refused(model, names, message):
    with pytest.raises(DtlensError, match=message):
        parse_components(model, names)


def test_component_sets(model):
    names = [c.name for c in parse_components(model, "heads,mlps,L0MLP,blocks,attns")]
    assert names == [
        "L0H0", "L0H1", "L1H0", "L1H1", "L0MLP", "L1MLP", "L0", "L1", "L0ATTN", "L1ATTN"
    ]  # fmt: skip


# -- rollouts ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(hopper_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("interventions") / "run"
    cfg = tiny_train_config(hopper_file, eval_episodes=3, eval_max_steps=15)
    return train(cfg, out, progress=False)


def test_rollout_effect_without_an_intervention_is_the_baseline(run):
    ds = rollout_effect(
        run,
        {"empty": lambda m: ablate(m, []), "L0MLP": lambda m: ablate(m, ["L0MLP"])},
        episodes=3,
        seed=2,
    )
    assert ds.sizes == {"intervention": 2, "episode": 3, "bound": 2}
    np.testing.assert_array_equal(ds["return"].sel(intervention="empty"), ds["baseline_return"])
    assert float(ds["score_change"].sel(intervention="empty")) == 0
    np.testing.assert_array_equal(ds["score_change_ci"].sel(intervention="empty"), [0, 0])
    assert not np.array_equal(ds["return"].sel(intervention="L0MLP"), ds["baseline_return"])
    # the baseline is the run's own evaluation of the same env seeds
    again = rollout_effect(run, {}, episodes=3, seed=2)
    np.testing.assert_array_equal(again["baseline_return"], ds["baseline_return"])


def test_rollout_effect_pairs_episodes(run):
    ds = rollout_effect(run, {"L1": lambda m: ablate(m, "L1")}, episodes=3, seed=0)
    diff = (ds["score"].sel(intervention="L1") - ds["baseline_score"]).values
    assert float(ds["score_change"].sel(intervention="L1")) == pytest.approx(diff.mean())
    low, high = ds["score_change_ci"].sel(intervention="L1").values
    assert low < diff.mean() < high


def test_return_sweep(run):
    ds = return_sweep(run, [100.0, 3600.0], episodes=2)
    assert ds.sizes["target"] == 2 and ds.sizes["episode"] == 2
    np.testing.assert_allclose(ds["return_mean"], ds["return"].mean("episode"))
    assert np.isfinite(ds["score_mean"]).all()


def test_cli_ablate_writes_the_shared_file_contract(run):
    args = ["ablation", str(run.path), "--components", "L0H1,mlps", "--episodes", "2"]
    result = runner.invoke(app, [*args, "--max-steps", "3"])
    assert result.exit_code == 0, result.output
    with xr.open_dataset(run.path / "diagnostics" / "ablation.nc") as ds:
        assert list(ds["component"].values) == ["L0H1", "L0MLP", "L1MLP"]
        assert ds["score"].dims == ("component", "episode")
        assert ds["baseline_score"].dims == ("episode",)
        assert ds["score_change"].dims == ("component",)
        assert ds["score_change_ci"].dims == ("component", "bound")
        assert list(ds["bound"].values) == ["low", "high"]
        assert ds.attrs["how"] == "mean" and ds.attrs["episodes"] == 2
        assert ds.attrs["seed"] == 0 and ds.attrs["epoch"] == 2 and ds.attrs["max_steps"] == 3
        assert (ds["length"] == 3).all() and (ds["baseline_length"] == 3).all()
    assert (run.path / "figures" / "ablation.png").stat().st_size > 0


def test_reproduce_ablates_each_compared_run_within_its_evaluation(run, tmp_path):
    from dtlens.diagnostics.contract import RunKey, Settings
    from dtlens.interp.analyses.ablation import DIAGNOSTIC

    runs = {RunKey("language", 1): run, RunKey("image", 1): run}
    assert list(DIAGNOSTIC.reads.select(runs)) == [RunKey("language", 1)]  # not image
    DIAGNOSTIC.write(run, **DIAGNOSTIC.options(Settings(), run))
    with xr.open_dataset(run.path / "diagnostics" / "ablation.nc") as ds:
        assert list(ds["component"].values) == ["L0ATTN", "L1ATTN", "L0MLP", "L1MLP"]
        assert ds.attrs["how"] == "mean"
        assert ds.attrs["episodes"] == 3 and ds.attrs["max_steps"] == 15  # the run's, < 5, 200


def test_cli_steer_and_return_sweep(run):
    result = runner.invoke(app, ["steering", str(run.path), "--scales", "-1,1", "--episodes", "2"])
    assert result.exit_code == 0, result.output
    with xr.open_dataset(run.path / "diagnostics" / "steering.nc") as ds:
        assert list(ds["scale"].values) == [-1.0, 1.0] and ds.attrs["layer"] == 1
    args = ["return-sweep", str(run.path), "--targets", "100,3600", "--episodes", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    with xr.open_dataset(run.path / "diagnostics" / "return_sweep.nc") as ds:
        assert {"return_mean", "return_std", "score_mean"} <= set(ds)
        assert list(ds["target"].values) == [100.0, 3600.0]
    assert (run.path / "figures" / "return_sweep.png").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["ablation", "--components", "L0H7"], "no component 'L0H7'"),
        (["ablation", "--components", "attention"], "unknown component 'attention'"),
        (["ablation", "--how", "half"], "unknown ablation 'half'"),
        (["steering", "--layer", "9"], "layer must lie in [0, 2]"),
        (["steering", "--positions", "time"], "unknown positions 'time'"),
        (["return-sweep", "--targets", "a,b"], "expected comma-separated numbers"),
    ],
)
def test_cli_bad_input_is_one_line(run, args, message):
    result = runner.invoke(app, [args[0], str(run.path), *args[1:]])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error:") and message in result.output
    assert len(result.output.strip().splitlines()) == 1


# -- report --------------------------------------------------------------------------------------
class FakeStudy:
    """Run folders by (role, init, seed) holding only what the section reads."""

    def __init__(self, root, seeds):
        self.root, self.seeds = root, seeds

    def run_dir(self, role, who, seed):
        path = self.root / f"{who}-{seed}"
        return path if path.is_dir() else None


def ablation_result(change: dict[str, float], baseline: float) -> xr.Dataset:
    names = list(change)
    base = np.full(4, baseline)
    score = np.asarray([base + change[n] + np.array([-1, 1, -1, 1]) for n in names])
    return xr.Dataset(
        {
            "score": (("component", "episode"), score),
            "baseline_score": (("episode",), base),
            "score_change": (("component",), [change[n] for n in names]),
        },
        coords={"component": names},
        attrs={"how": "mean", "episodes": 4, "max_steps": 200},
    )


def test_report_reads_each_component_two_sided(tmp_path):
    from dtlens.interp.analyses.ablation import DIAGNOSTIC
    from dtlens.io import save_netcdf
    from dtlens.report.document import Doc
    from dtlens.report.interventions import policy_section

    seeds = [1, 2, 3]
    for i, seed in enumerate(seeds):
        # language loses less without L0ATTN, the same without L0MLP
        for who, attn in (("language", -5.0 + i), ("random", -20.0 + i)):
            result = ablation_result({"L0ATTN": attn, "L0MLP": -3.0 + i}, 30.0 + i)
            save_netcdf(result, DIAGNOSTIC.nc_path(tmp_path / f"{who}-{seed}"))
    doc = Doc("t")
    comparisons = policy_section(doc, FakeStudy(tmp_path, seeds))
    assert comparisons["L0ATTN"].effect == pytest.approx(15.0)
    text = doc.markdown()
    attn = next(line for line in text.splitlines() if line.startswith("| L0ATTN"))
    mlp = next(line for line in text.splitlines() if line.startswith("| L0MLP"))
    assert "**language > random**" in attn and "-4.0 (-5.0, -4.0, -3.0)" in attn
    assert "**no difference shown**" in mlp
    assert "31.0 (30.0, 31.0, 32.0)" in text  # the unablated scores
    assert "ablation RUN --components L0ATTN,L0MLP --how mean --episodes 4 --max-steps 200" in text
