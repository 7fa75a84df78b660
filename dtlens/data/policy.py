"""Behaviour policies: small tanh MLP actors stored as safetensors + JSON, run in numpy.

The embedded ones (`dtlens/assets/policies/`) are listed in that folder's `manifest.json` with the
sha256 of both files and their recorded return; loading one by name checks its bytes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dtlens.data.manifest import read_manifest, update_manifest
from dtlens.errors import DtlensError
from dtlens.io import file_sha256, load_json, load_tensors, save_json, save_tensors
from dtlens.paths import POLICY_ASSETS

POLICY_DIR = POLICY_ASSETS


class MLPPolicy:
    """A deterministic actor: ReLU hidden layers, tanh output scaled to the action bounds.

    `weights` is a list of (W (out, in), b (out,)) per linear layer. `act` takes a batch of
    observations (n, obs_dim) and returns actions (n, act_dim), optionally with Gaussian noise.
    """

    def __init__(
        self,
        weights: list[tuple[np.ndarray, np.ndarray]],
        env_id: str = "",
        action_low: float | np.ndarray = -1.0,
        action_high: float | np.ndarray = 1.0,
        info: dict[str, Any] | None = None,
    ) -> None:
        self.weights = [(w.astype(np.float32), b.astype(np.float32)) for w, b in weights]
        self.env_id = env_id
        self.act_dim = self.weights[-1][0].shape[0]
        self.obs_dim = self.weights[0][0].shape[1]
        self.low = np.broadcast_to(np.asarray(action_low, np.float32), (self.act_dim,))
        self.high = np.broadcast_to(np.asarray(action_high, np.float32), (self.act_dim,))
        self.info = info or {}

    def act(
        self, obs: np.ndarray, noise: float = 0.0, rng: np.random.Generator | None = None
    ) -> np.ndarray:
        h = np.asarray(obs, np.float32)
        for w, b in self.weights[:-1]:
            h = np.maximum(h @ w.T + b, 0.0)
        w, b = self.weights[-1]
        a = np.tanh(h @ w.T + b)
        if noise > 0:
            rng = rng if rng is not None else np.random.default_rng()
            a = np.clip(a + noise * rng.standard_normal(a.shape, dtype=np.float32), -1.0, 1.0)
        return self.low + (a + 1.0) * 0.5 * (self.high - self.low)

    def save(self, stem: str | os.PathLike, extra: dict[str, Any]) -> None:
        """Write `stem.safetensors` (layers.{i}.weight/bias) and `stem.json` (architecture)."""
        stem = Path(stem)
        tensors = {}
        for i, (w, b) in enumerate(self.weights):
            tensors[f"layers.{i}.weight"] = torch.from_numpy(w)
            tensors[f"layers.{i}.bias"] = torch.from_numpy(b)
        save_tensors(tensors, stem.with_suffix(".safetensors"))
        meta = {
            "env_id": self.env_id,
            "architecture": {
                "layers": [list(w.shape[::-1]) for w, _ in self.weights],
                "hidden_activation": "relu",
                "output_activation": "tanh",
            },
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "obs_normalization": None,
            "action_low": self.low.tolist(),
            "action_high": self.high.tolist(),
        }
        save_json({**self.info, **extra, **meta}, stem.with_suffix(".json"))

    @classmethod
    def load(cls, stem: str | os.PathLike) -> MLPPolicy:
        stem = Path(stem)
        meta = load_json(stem.with_suffix(".json"))
        tensors = load_tensors(stem.with_suffix(".safetensors"))
        n = len(meta["architecture"]["layers"])
        try:
            weights = [
                (tensors[f"layers.{i}.weight"].numpy(), tensors[f"layers.{i}.bias"].numpy())
                for i in range(n)
            ]
        except KeyError as e:
            raise DtlensError(f"{stem}.safetensors: missing key {e}") from None
        return cls(weights, meta["env_id"], meta["action_low"], meta["action_high"], meta)


def load_policy(name: str, folder: Path = POLICY_DIR) -> MLPPolicy:
    """An embedded policy by name, e.g. 'hopper-medium' (its bytes checked against `folder`'s
    manifest), or a path stem."""
    stem = folder / name
    if Path(name).name == name and stem.with_suffix(".json").is_file():
        check_policy(name, folder)
        return MLPPolicy.load(stem)
    stem = Path(name).with_suffix("")
    if not stem.with_suffix(".json").is_file():
        known = sorted(p.stem for p in folder.glob("*.json") if p.name != "manifest.json")
        raise DtlensError(f"{name}: unknown policy (embedded: {', '.join(known) or 'none'})")
    return MLPPolicy.load(stem)


def policy_entry(name: str, folder: Path = POLICY_DIR) -> dict[str, Any]:
    """The manifest entry of the policy files `folder/name.{safetensors,json}`."""
    stem = folder / name
    info = load_json(stem.with_suffix(".json"))
    return {
        "file": stem.with_suffix(".safetensors").name,
        "sha256": file_sha256(stem.with_suffix(".safetensors")),
        "json_sha256": file_sha256(stem.with_suffix(".json")),
        "return_mean": info.get("return_mean"),
        "training_step": info.get("training_step"),
    }


def record_policy(name: str, folder: Path = POLICY_DIR) -> Path:
    """Write `name`'s entry (sha256 of both files, recorded return) to `folder`'s manifest."""
    return update_manifest(folder, name, policy_entry(name, folder))


def check_policy(name: str, folder: Path = POLICY_DIR) -> None:
    """Refuse, in one line, embedded policy files that do not match the manifest."""
    entry = read_manifest(folder).get(name)
    if entry is None:
        raise DtlensError(
            f"{name}: no entry in {folder / 'manifest.json'}: record it with "
            "`python scripts/train_policies.py --export-only`"
        )
    found = policy_entry(name, folder)
    for key in ("sha256", "json_sha256"):
        if found[key] != entry[key]:
            raise DtlensError(
                f"{folder / name}: policy files do not match the manifest ({key} "
                f"{found[key][:12]}..., recorded {entry[key][:12]}...): reinstall dtlens"
            )


def evaluate_policy(
    policy: MLPPolicy | None, env_id: str, episodes: int = 10, seed: int = 0
) -> np.ndarray:
    """Undiscounted returns of `episodes` deterministic episodes (None = uniform random actions)."""
    return rollout_stats(policy, env_id, episodes, seed)["returns"]


def rollout_stats(
    policy: MLPPolicy | None, env_id: str, episodes: int = 10, seed: int = 0
) -> dict[str, np.ndarray]:
    """Per episode (reset with seed + i): return, length and final `x_position` (0 if absent)."""
    import gymnasium as gym

    env = gym.make(env_id)
    env.action_space.seed(seed)
    stats: dict[str, list[float]] = {"returns": [], "lengths": [], "x_position": []}
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        total, steps, done, info = 0.0, 0, False, {}
        while not done:
            action = env.action_space.sample() if policy is None else policy.act(obs[None])[0]
            obs, reward, terminated, truncated, info = env.step(action)
            total, steps = total + float(reward), steps + 1
            done = terminated or truncated
        stats["returns"].append(total)
        stats["lengths"].append(steps)
        stats["x_position"].append(float(info.get("x_position", 0.0)))
    env.close()
    return {k: np.asarray(v) for k, v in stats.items()}
