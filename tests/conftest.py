"""Shared fixtures: tiny models and inputs, built by the tests themselves."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from dtlens import DecisionTransformer, DTConfig
from dtlens.model import BackboneConfig

TINY = BackboneConfig(n_layers=2, d_model=16, n_heads=2, d_mlp=32)


def pytest_configure(config) -> None:
    """Under pytest-xdist (`make test`: a worker per core) each worker gets its share of the
    cores as torch threads: more would wait for each other on a busy machine."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


#: Test modules whose tests run longest after the paper-scale ones (minutes: the GPU-check
#: rehearsal, the tiny reproductions), started first.
LONGEST = ("test_gpu_check.py", "test_reproduce.py")


def pytest_collection_modifyitems(config, items) -> None:
    """Longest first (paper-scale, then LONGEST, then the other slow tests, then the rest), so
    that under pytest-xdist (`--dist loadgroup`, which hands out work in this order) the long
    ones start at once on different workers and the short ones fill in around them."""

    def rank(item) -> int:
        if item.get_closest_marker("paper_scale"):
            return 0
        if item.path.name in LONGEST:
            return 1
        return 2 if item.get_closest_marker("slow") else 3

    items.sort(key=rank)  # stable: collection order within a rank


@pytest.fixture
def tiny_cfg() -> DTConfig:
    return DTConfig(state_dim=5, act_dim=2, backbone=TINY, max_ep_len=50)


@pytest.fixture
def tiny_dt(tiny_cfg) -> DecisionTransformer:
    return DecisionTransformer(tiny_cfg, seed=1).eval()


def dt_inputs(cfg: DTConfig, batch: int = 3, steps: int = 4, pad: int = 0, seed: int = 0):
    """Random DT inputs; the first `pad` steps of every row after the first are padding."""
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(batch, steps, cfg.state_dim, generator=g)
    actions = torch.rand(batch, steps, cfg.act_dim, generator=g) * 2 - 1
    rtg = torch.randn(batch, steps, 1, generator=g)
    timesteps = torch.randint(0, cfg.max_ep_len, (batch, steps), generator=g)
    mask = torch.ones(batch, steps, dtype=torch.long)
    mask[1:, :pad] = 0
    return states, actions, rtg, timesteps, mask


@torch.no_grad()
def perturb_(module: torch.nn.Module, scale: float = 0.5, seed: int = 0) -> torch.nn.Module:
    """Move every parameter away from its default init (norm weights != 1, biases != 0)."""
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.add_(torch.randn(p.shape, generator=g) * scale * (p.std() if p.numel() > 1 else 1.0))
        if p.ndim == 1:
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return module


@pytest.fixture(scope="session")
def hopper_file(tmp_path_factory):
    """A small random-policy Hopper-v5 dataset in D4RL layout."""
    from dtlens.data.collect import collect_to_file

    path = tmp_path_factory.mktemp("data") / "hopper-random.hdf5"
    return collect_to_file(path, "Hopper-v5", "random", transitions=2000, seed=0)


def tiny_train_config(dataset, **changes):
    """A TrainConfig that runs in about a second: tiny backbone, few steps, short rollouts."""
    from dtlens.train.config import TrainConfig

    base = dict(
        dataset=str(dataset),
        size=TINY,
        epochs=2,
        steps_per_epoch=3,
        batch_size=4,
        context_len=4,
        warmup_steps=2,
        eval_episodes=1,
        eval_max_steps=10,
        probe_size=6,
    )
    return TrainConfig(**(base | changes))


@pytest.fixture(scope="session")
def trained_tiny_run(hopper_file, tmp_path_factory):
    """The folder of one tiny training run (`tiny_train_config`, no evaluation), trained once
    per test process; tests use it through `tiny_run`, never directly."""
    from dtlens.train.loop import train

    out = tmp_path_factory.mktemp("tiny-run") / "run"
    return train(tiny_train_config(hopper_file, eval_episodes=0), out, progress=False).path


@pytest.fixture(scope="module")
def tiny_run(trained_tiny_run, tmp_path_factory):
    """A test module's own copy of the shared tiny run: its tests may write captures and
    diagnostics into it without touching another module's."""
    from dtlens.train.run import Run

    out = tmp_path_factory.mktemp("run") / "run"
    shutil.copytree(trained_tiny_run, out)
    return Run(out)
