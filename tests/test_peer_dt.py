"""The peer DT harness (benchmarks/peer_dt.py): CORL's masking and sampling, end to end."""

from __future__ import annotations

import numpy as np
import torch

from benchmarks import peer_dt


def test_end_padding_leaves_the_real_steps_alone():
    """Windows are padded at the end: the real steps' actions do not see the padding (mask or
    not), and the padded queries stay finite (each still has real keys before it)."""
    cfg = peer_dt.PeerConfig(context_len=4)
    model = peer_dt.PeerDT(cfg, state_dim=3, act_dim=2).eval()
    g = torch.Generator().manual_seed(0)
    states, actions = torch.randn(2, 4, 3, generator=g), torch.rand(2, 4, 2, generator=g)
    rtg, timesteps = torch.randn(2, 4, generator=g), torch.arange(4).expand(2, -1)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    padded = model(states, actions, rtg, timesteps, mask)
    assert torch.isfinite(padded).all()
    torch.testing.assert_close(padded[0, :2], model(states, actions, rtg, timesteps)[0, :2])
    moved = states.clone()
    moved[0, :2] += 1.0  # the real steps do drive the output
    assert not torch.allclose(model(moved, actions, rtg, timesteps, mask)[0, :2], padded[0, :2])


def test_windows_follow_the_data():
    from dtlens.data import load_dataset

    dataset = load_dataset("mini/hopper-medium")
    cfg = peer_dt.PeerConfig(batch_size=16)
    windows = peer_dt.Windows(dataset, cfg, np.random.default_rng(0))
    states, actions, rtg, timesteps, mask = windows.sample()
    assert states.shape == (16, 20, dataset.obs_dim) and mask.dtype == torch.bool
    assert (timesteps[:, 1:] - timesteps[:, :-1] == 1).all()
    assert (actions[~mask] == 0).all() and (actions[mask].abs() > 0).any()
    # returns-to-go fall by the scaled reward along a window
    ep_states, ep_actions, ep_rtg = windows.episodes[0]
    np.testing.assert_allclose(ep_rtg[0] - ep_rtg[1], dataset.rewards[0] * 1e-3, rtol=1e-4)


def test_train_and_evaluate_end_to_end(tmp_path):
    out = tmp_path / "peer.json"
    record = peer_dt.main(
        [
            "--steps",
            "4",
            "--eval-every",
            "2",
            "--eval-episodes",
            "2",
            "--warmup",
            "2",
            "--out",
            str(out),
        ]
    )
    assert [row["step"] for row in record["evals"]] == [2, 4]
    assert out.is_file() and np.isfinite(record["evals"][-1]["score_mean"])
