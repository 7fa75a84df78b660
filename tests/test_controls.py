"""Controls for what pretraining gives: shuffled:INIT, matched:INIT, and the synthetic backbone."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from dtlens.diagnostics.contract import RunKey
from dtlens.errors import DtlensError
from dtlens.experiments.reproduce import plan, reproduce
from dtlens.model.backbones import read_backbone
from dtlens.model.controls import base_init, matched, shuffled, split_control
from dtlens.model.inits import resolve_backbone
from dtlens.pretrain import synthetic
from dtlens.pretrain.loop import LongRun
from dtlens.report.report import write_report
from tests.conftest import TINY
from tests.test_reproduce import tiny_preset


def params(backbone) -> dict[str, torch.Tensor]:
    return backbone.state


def test_shuffled_keeps_each_tensors_values_and_moves_them():
    source = params(resolve_backbone("text"))
    control = params(resolve_backbone("shuffled:text", seed=3))
    assert control.keys() == source.keys()
    moved = total = 0
    for name, t in source.items():
        assert torch.equal(t.flatten().sort().values, control[name].flatten().sort().values), name
        moved += int((t != control[name]).sum())
        total += t.numel()
    assert moved / total > 0.9
    again = params(resolve_backbone("shuffled:text", seed=3))
    other = params(resolve_backbone("shuffled:text", seed=4))
    assert all(torch.equal(again[k], v) for k, v in control.items())
    assert not all(torch.equal(other[k], v) for k, v in control.items())


def test_matched_has_each_tensors_mean_and_std_and_nothing_else():
    source = params(resolve_backbone("image"))
    control = params(resolve_backbone("matched:image", seed=3))
    for name, t in source.items():
        c = control[name]
        assert c.shape == t.shape
        assert float(c.mean()) == pytest.approx(float(t.mean()), abs=1e-6), name
        assert float(c.std()) == pytest.approx(float(t.std()), rel=1e-4, abs=1e-7), name
    w = source["blocks.0.attn.W_Q"].flatten()
    corr = torch.corrcoef(torch.stack([w, control["blocks.0.attn.W_Q"].flatten()]))[0, 1]
    assert abs(float(corr)) < 0.05


def test_controls_are_pure_on_config_and_state():
    cfg = resolve_backbone("random").cfg
    state = {"a": torch.arange(100.0), "b": torch.ones(5), "c": torch.tensor([2.0])}
    cfg_s, out = shuffled(cfg, state, seed=0)
    assert cfg_s == cfg and torch.equal(state["a"], torch.arange(100.0))  # input untouched
    _, m = matched(cfg, state, seed=0)
    assert torch.equal(m["b"], torch.ones(5)) and torch.equal(m["c"], torch.tensor([2.0]))
    assert split_control("shuffled:text") == ("shuffled", "text")
    assert split_control("C:/x.safetensors") == (None, "C:/x.safetensors")
    assert base_init("matched:shuffled:text") == "text"


@pytest.mark.parametrize("init", ["shuffled:nope", "matched:", "shuffled:matched:nope"])
def test_unknown_control_source_is_one_line(init):
    with pytest.raises(DtlensError, match="unknown init"):
        resolve_backbone(init)
    result = CliRunner().invoke(app, ["model", "info", init, "--no-hooks"])
    assert result.exit_code != 0
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert "unknown init" in result.output


def test_markov_chain_samples_follow_its_table():
    table = synthetic.transition_table(states=5, order=1, temperature=1.0)
    assert torch.allclose(table.sum(1), torch.ones(5, dtype=torch.float64))
    rows = synthetic.sample(table, 1, rows=4000, length=30, gen=torch.Generator().manual_seed(0))
    counts = torch.zeros(5, 5, dtype=torch.float64)
    counts.index_put_((rows[:, :-1].flatten(), rows[:, 1:].flatten()), torch.ones(1).double(),
                      accumulate=True)  # fmt: skip
    assert torch.allclose(counts / counts.sum(1, keepdim=True), table, atol=0.02)
    order2 = synthetic.transition_table(states=4, order=2, temperature=0.5)
    assert order2.shape == (16, 4)
    rows = synthetic.sample(order2, 2, rows=8, length=12, gen=torch.Generator().manual_seed(0))
    assert rows.shape == (8, 12) and int(rows.max()) < 4


def test_synthetic_trains_below_its_unigram_floor(tmp_path):
    out = tmp_path / "synthetic.safetensors"
    result = synthetic.build(
        steps=40, out=out, size=TINY, batch_size=16, states=8, n_ctx=32, progress=False
    )
    meta = result.meta
    assert meta["command"].startswith("dtlens pretrain synthetic --states 8 --order 1")
    assert meta["heldout_loss"] < meta["unigram_loss"] - 0.05
    backbone = read_backbone(out)
    assert backbone.d_vocab == 8 and backbone.cfg.act_fn == "gelu_new"


def test_synthetic_for_a_token_budget_stops_there_and_resumes(tmp_path):
    run = LongRun(batch_size=4, eval_every=5, warmup_steps=2)
    kw = dict(states=8, size=TINY, n_ctx=16, log=lambda line: None, pool_rows=64)
    budget = 4 * 16 * 12  # 12 steps of 4 rows x 16 tokens
    assert (
        synthetic.build_for_tokens(budget, run, workdir=tmp_path / "w", max_steps=7, **kw) is None
    )
    result = synthetic.build_for_tokens(
        budget, run, out=tmp_path / "s.safetensors", workdir=tmp_path / "w", **kw
    )
    meta = result.meta
    assert meta["tokens_seen"] == budget and meta["steps"] == 12
    assert [p["step"] for p in meta["curve_tail"]] == [5, 7, 10, 12]
    assert meta["stop_rule"].startswith(f"train for {budget:,} tokens")
    assert meta["heldout_loss"] < meta["unigram_loss"]
    # a larger budget continues the run: the same weights as a run straight to it
    longer = synthetic.build_for_tokens(2 * budget, run, workdir=tmp_path / "w", **kw)
    straight = synthetic.build_for_tokens(2 * budget, run, workdir=tmp_path / "x", **kw)
    assert longer.meta["steps"] == 24 and longer.meta["curve_tail"][-1]["step"] == 24
    a, b = (read_backbone(r.path).state for r in (longer, straight))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_entropy_rate_of_known_chains():
    cycle = torch.roll(torch.eye(4, dtype=torch.float64), 1, dims=1)
    assert synthetic.entropy_rate(cycle) == pytest.approx(0.0, abs=1e-12)
    uniform = torch.full((9, 3), 1 / 3, dtype=torch.float64)
    assert synthetic.entropy_rate(uniform) == pytest.approx(math.log(3))
    # Order 1, two states: stationary (b, a) / (a + b) for flip probabilities a (0->1), b (1->0).
    a, b = 0.2, 0.6
    table = torch.tensor([[1 - a, a], [b, 1 - b]], dtype=torch.float64)
    h = lambda p: -(p * math.log(p) + (1 - p) * math.log(1 - p))  # noqa: E731
    assert synthetic.entropy_rate(table) == pytest.approx((b * h(a) + a * h(b)) / (a + b))


@pytest.mark.slow
def test_every_diagnostic_runs_on_synthetic_and_a_control(hopper_file, tmp_path):
    """The tiny reproduction with `synthetic` as the language init and `shuffled:` of it as the
    image init: every run and study diagnostic and the report come out."""
    syn = synthetic.build(
        steps=2, out=tmp_path / "synthetic.safetensors", size=TINY, batch_size=4, states=8,
        n_ctx=16, progress=False,
    ).path  # fmt: skip
    preset = dataclasses.replace(
        tiny_preset(hopper_file, tmp_path), language=str(syn), image=f"shuffled:{syn}"
    )
    logs: list[str] = []
    out = write_report(reproduce(preset, tmp_path / "repro", workers=1, log=logs.append)).parent
    assert "FAILED" not in "\n".join(logs), logs
    runs = {p.name.split("-K")[0] for p in (out / "hopper" / "runs").iterdir()}
    assert {"synthetic", "shuffled-synthetic", "random"} <= runs, runs
    (p,) = plan(preset)
    paper = ("cka", "weights", "gradients", "mutual_info")  # on every init's K=20 runs
    interp = ("attribution", "action_lens", "probe")  # on the language and random inits'
    for who, names in (("language", paper + interp), ("image", paper)):
        main = out / "hopper" / "runs" / p.main[RunKey(who, 666)].name
        for name in names:
            assert (main / "diagnostics" / f"{name}.nc").is_file(), (who, name)
    for k in (1, 20):
        assert p.no_context[RunKey("language", 666, k)].name.startswith("synthetic-K")
    for study in ("no_context", "block_swap", "cross_patching"):
        assert (out / "hopper" / "diagnostics" / f"{study}.nc").is_file(), study
    assert "Summary" in (out / "report.md").read_text()


def test_run_names_say_the_control_and_its_source():
    from dtlens.experiments.studies import run_name
    from dtlens.train.config import TrainConfig

    cfg = TrainConfig()
    assert run_name(cfg.replace(init="shuffled:/x/lang.safetensors")).startswith("shuffled-lang-K")
    assert run_name(cfg.replace(init="matched:text")).startswith("matched-text-K")
    assert run_name(cfg.replace(init="/x/lang.safetensors")).startswith("lang-K")
