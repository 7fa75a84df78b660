"""On a CUDA device (`pytest -m cuda`, which `benchmarks/gpu_check.sh` runs): the DT, per-sample
gradients, training and capture give the CPU's numbers. Skipped without CUDA;
`DTLENS_TEST_DEVICE=cpu` runs the same checks on the CPU (`gpu_check.sh --rehearse`)."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch

from dtlens import DecisionTransformer
from dtlens.capture import capture
from dtlens.data.windows import Batch
from dtlens.diagnostics.analyses.gradients import gradient_stats
from dtlens.train.loop import train
from dtlens.train.run import Run
from tests.conftest import dt_inputs, perturb_, tiny_train_config

DEVICE = os.environ.get("DTLENS_TEST_DEVICE", "cuda")
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        DEVICE.startswith("cuda") and not torch.cuda.is_available(), reason="no CUDA device"
    ),
]


@pytest.fixture
def model(tiny_cfg) -> DecisionTransformer:
    return perturb_(DecisionTransformer(tiny_cfg, seed=1)).eval()


@pytest.fixture
def batch(tiny_cfg) -> Batch:
    return Batch(*dt_inputs(tiny_cfg, batch=5, steps=4, pad=2))


def test_forward_and_hooked_path_equal_the_cpu(model, batch):
    inputs = list(vars(batch).values())
    cpu = model(*inputs)
    on_device = copy.deepcopy(model).to(DEVICE)
    assert on_device.device.type == torch.device(DEVICE).type
    moved = [x.to(DEVICE) for x in inputs]
    torch.testing.assert_close(on_device(*moved).cpu(), cpu, atol=1e-4, rtol=1e-4)
    real = batch.attention_mask.bool()  # the fused blocks differ at padded steps, never read
    with on_device.hooked_path():
        hooked = on_device(*moved).cpu()
    torch.testing.assert_close(hooked[real], cpu[real], atol=1e-4, rtol=1e-4)


def test_gradient_statistics_equal_the_cpu(model, batch):
    cpu = gradient_stats(model, batch, n_confusion=3, train_mode=False, chunk_size=2)
    dev = gradient_stats(
        copy.deepcopy(model).to(DEVICE), batch, n_confusion=3, train_mode=False, chunk_size=2
    )
    np.testing.assert_allclose(dev["tensor_norm"], cpu["tensor_norm"], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(dev["cosine"], cpu["cosine"], atol=1e-5)
    train_mode = gradient_stats(copy.deepcopy(model).to(DEVICE), batch, n_confusion=3, seed=1)
    assert np.isfinite(train_mode["norm"]).all()


def test_train_and_capture_on_the_device(hopper_file, tmp_path):
    cfg = tiny_train_config(hopper_file, epochs=1, eval_episodes=1, device=DEVICE)
    run = train(cfg, tmp_path / "run", progress=False)
    on_device = Run(run.path, device=DEVICE)
    model = on_device.load_model(-1)
    assert model.device.type == torch.device(DEVICE).type
    probe = on_device.probe_batch()
    ds = capture(model, probe, ["resid_post"])
    ref = capture(Run(run.path).load_model(-1), probe, ["resid_post"])
    np.testing.assert_allclose(ds["resid_post"], ref["resid_post"], atol=1e-4, rtol=1e-4)
