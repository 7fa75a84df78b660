"""Run-level gradient analysis: Gram route = materialised route, per-sample clipping, CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import xarray as xr
from typer.testing import CliRunner

from cli.main import app
from dtlens import DecisionTransformer
from dtlens.data.windows import Batch
from dtlens.diagnostics.analyses.gradients import (
    DIAGNOSTIC,
    first_norm_share,
    gradient_stats,
    top_tensors,
)
from dtlens.diagnostics.contract import Settings
from dtlens.diagnostics.gradients import gradient_confusion
from dtlens.diagnostics.per_sample import iter_per_sample_grads
from dtlens.train.loop import action_loss, train
from tests.conftest import dt_inputs, perturb_, tiny_train_config
from tests.test_per_sample_gradients import one_thread  # noqa: F401  (autouse)

runner = CliRunner()


@pytest.fixture
def model(tiny_cfg) -> DecisionTransformer:
    return perturb_(DecisionTransformer(tiny_cfg, seed=2)).eval()


@pytest.fixture
def batch(tiny_cfg) -> Batch:
    return Batch(*dt_inputs(tiny_cfg, batch=6, steps=4, pad=1, seed=1))


@pytest.fixture(scope="module")
def run_dir(hopper_file, tmp_path_factory):
    cfg = tiny_train_config(hopper_file, epochs=1, eval_episodes=0, probe_size=8)
    return train(cfg, tmp_path_factory.mktemp("grad") / "run", progress=False).path


def test_gram_route_equals_materialised_route(model, batch):
    ds = gradient_stats(model, batch, n_confusion=5, chunk_size=4, seed=1)
    grads = iter_per_sample_grads(model, batch, chunk_size=4, seed=1, group_by="all")
    g = torch.cat([t.flatten(1) for _, t in grads], dim=1).double()  # (n, P)
    np.testing.assert_allclose(ds["norm"], g.norm(dim=1), rtol=1e-5)
    unit = g[:5] / g[:5].norm(dim=1, keepdim=True)
    cos = (unit @ unit.T).numpy()
    np.testing.assert_allclose(ds["cosine"], cos[ds["pair_i"], ds["pair_j"]], atol=1e-5)
    assert float(ds["confusion"]) == pytest.approx(gradient_confusion(g[:5]), abs=1e-5)
    np.testing.assert_allclose(ds["share"].sum("tensor"), 1.0, rtol=1e-6)
    top = top_tensors(ds, 3)["share_mean"].values
    assert list(top) == sorted(top, reverse=True) and top[0] == ds["share_mean"].max()


def test_norms_do_not_depend_on_the_confusion_samples_or_the_chunks(model, batch):
    """The confusion samples' norms come from their Gram's diagonal, the others' chunk by chunk
    after them: in eval mode every split gives the loop's norms, and the Gram of the same
    samples."""
    loop = np.asarray(clip_single_samples(model, batch, math.inf)[0])
    full = gradient_stats(model, batch, n_confusion=len(batch), train_mode=False, chunk_size=4)
    np.testing.assert_allclose(full["norm"], loop, rtol=1e-5)
    for n_confusion, chunk_size in [(2, 1), (3, 2), (5, 4)]:
        ds = gradient_stats(
            model, batch, n_confusion=n_confusion, train_mode=False, chunk_size=chunk_size
        )
        np.testing.assert_allclose(ds["tensor_norm"], full["tensor_norm"], rtol=1e-5, atol=1e-9)
        assert list(ds.tensor.values) == list(full.tensor.values)
        same = (full["pair_i"] < n_confusion) & (full["pair_j"] < n_confusion)
        np.testing.assert_allclose(ds["cosine"], full["cosine"][same], atol=1e-6)


def clip_single_samples(model, batch, clip: float) -> tuple[list[float], list[float]]:
    """Each sample's gradient norm before and after `clip_grad_norm_` on a one-sample batch."""
    before, after = [], []
    for i in range(len(batch)):
        model.zero_grad()
        action_loss(model, batch.index([i])).backward()
        before.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip)))
        grads = [p.grad.flatten() for p in model.parameters() if p.grad is not None]
        after.append(float(torch.linalg.vector_norm(torch.cat(grads))))
    return before, after


def test_per_sample_clipping_matches_clip_grad_norm(model, batch):
    clip = float(np.median(clip_single_samples(model, batch, math.inf)[0]))  # clips half
    before, after = clip_single_samples(model, batch, clip)
    ds = gradient_stats(model, batch, n_confusion=2, clip=clip, train_mode=False, chunk_size=6)
    np.testing.assert_allclose(ds["norm"], before, rtol=1e-5)
    np.testing.assert_allclose(ds["norm_clipped"], after, rtol=1e-5)
    assert 0 < (ds["clip_coef"] < 1).sum() < len(batch)


def released_per_tensor(model) -> dict[str, torch.Tensor]:
    """The blocks' grads as HF GPT-2 tensors: c_attn holds q, k and v."""
    out: dict[str, list[torch.Tensor]] = {}
    hf = {"ln1.w": "ln_1.weight", "ln1.b": "ln_1.bias", "ln2.w": "ln_2.weight",
          "ln2.b": "ln_2.bias", "attn.W_O": "attn.c_proj.weight", "attn.b_O": "attn.c_proj.bias",
          "mlp.W_in": "mlp.c_fc.weight", "mlp.b_in": "mlp.c_fc.bias",
          "mlp.W_out": "mlp.c_proj.weight", "mlp.b_out": "mlp.c_proj.bias"}  # fmt: skip
    for name, p in model.named_parameters():
        if name.startswith("backbone.blocks.") and p.grad is not None:
            block, rest = name.split(".", 3)[2:]
            key = hf.get(rest) or f"attn.c_attn.{'weight' if rest[5] == 'W' else 'bias'}"
            out.setdefault(f"{block}.{key}", []).append(p.grad.flatten())
    return {k: torch.cat(v) for k, v in out.items()}


def test_paper_variant_is_the_clipped_block_gradient(model, batch, tmp_path):
    """Each sample alone: backward, clip_grad_norm_ over every parameter, then only the block
    tensors; the share from the batch gradient's per-tensor norms."""
    clip = float(np.median(clip_single_samples(model, batch, math.inf)[0]))  # clips half
    ds = gradient_stats(
        model, batch, n_confusion=4, clip=clip, train_mode=False, chunk_size=6, paper_variant=True
    )
    blocks = []
    for i in range(len(batch)):
        model.zero_grad()
        action_loss(model, batch.index([i])).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        blocks.append(torch.cat(list(released_per_tensor(model).values())).double())
    norms = torch.stack([b.norm() for b in blocks])
    np.testing.assert_allclose(ds["paper_norm"], norms, rtol=1e-5)
    assert (ds["paper_norm"] < ds["norm_clipped"]).all()  # the blocks are part of the whole
    cos = [float(a @ b / (1e-6 + a.norm() * b.norm())) for a in blocks[:4] for b in blocks[:4]]
    assert float(ds["paper_confusion"]) == pytest.approx(min(cos), abs=1e-6)
    assert abs(float(ds["paper_confusion"]) - float(ds["confusion"])) > 1e-3

    model.zero_grad()
    action_loss(model, batch).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    tensor_norm = {k: float(v.norm()) for k, v in released_per_tensor(model).items()}
    assert list(ds.released_tensor.values[:3]) == [
        "0.ln_1.weight",
        "0.ln_1.bias",
        "0.attn.c_attn.weight",
    ]
    np.testing.assert_allclose(
        ds["paper_tensor_norm"].sel(released_tensor=list(tensor_norm)), list(tensor_norm.values()),
        rtol=1e-5,
    )  # fmt: skip
    total = sum(tensor_norm.values())
    ln_1 = (tensor_norm["0.ln_1.weight"] + tensor_norm["0.ln_1.bias"]) / total
    assert first_norm_share(ds) == pytest.approx(ln_1, rel=1e-5)
    # without the paper variant: the mean per-sample squared-norm share of ln1.w and ln1.b
    plain = ds.drop_vars(["paper_share", "paper_tensor_norm", "released_tensor"])
    correct = ds["share"].sel(tensor=["backbone.blocks.0.ln1.w", "backbone.blocks.0.ln1.b"])
    assert first_norm_share(plain) == pytest.approx(float(correct.sum("tensor").mean()))
    assert first_norm_share(plain) != pytest.approx(first_norm_share(ds), rel=1e-2)
    table = DIAGNOSTIC.summary(ds.assign_attrs(run="r", epoch=1))
    rows = {row[0]: row for row in table.rows}
    assert all(len(row) == len(table.header) for row in table.rows)
    assert rows["paper's formula: share of 0.ln_1 (weight + bias)"][1] == first_norm_share(ds)
    assert rows["paper's formula: confusion, block tensors"][1] == float(ds["paper_confusion"])
    assert rows["share: block 0's ln1 (w + b)"][1] == first_norm_share(plain)
    assert DIAGNOSTIC.plot(ds.assign_attrs(run="r", epoch=1), tmp_path / "g.png").stat().st_size


def test_finding_compares_image_with_random():
    f = DIAGNOSTIC.finding
    assert (f.a, f.b, f.expect, f.value) == ("image", "random", "greater", first_norm_share)
    assert "released formula" in f.statistic and "89%" in f.statistic
    options = DIAGNOSTIC.options(Settings(paper_variants=False, gradient_epoch=3), None)
    assert options["paper_variant"] is False and options["epoch"] == 3


def test_cli_writes_dataset_and_figure(run_dir):
    args = "--epoch 1 --samples 8 --confusion-samples 4".split()
    res = runner.invoke(app, ["gradients", str(run_dir), *args])
    assert res.exit_code == 0, res.output
    assert "confusion" in res.output and "backbone.blocks" in res.output
    ds = xr.open_dataset(run_dir / "diagnostics" / "gradients.nc")
    assert ds.sizes["sample"] == 8 and ds.sizes["pair"] == 6
    assert ds.attrs["epoch"] == 1 and ds.attrs["train_mode"] == 1
    assert np.isfinite(ds["norm"]).all() and -1 <= float(ds["confusion"]) <= 1
    assert (run_dir / "figures" / "gradients.png").stat().st_size > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--epoch", "7"], "no checkpoint for epoch(s) [7]"),
        (["--confusion-samples", "1"], "confusion needs"),
    ],
)
def test_cli_bad_input_is_one_line(run_dir, args, message):
    res = runner.invoke(app, ["gradients", str(run_dir), "--samples", "4", *args])
    assert res.exit_code == 1
    assert message in res.output and len(res.output.strip().splitlines()) == 1
