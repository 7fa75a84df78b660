"""A rollout replay: one episode of a checkpoint in its MuJoCo environment, a rendered frame per
step and, at every step, each head's attention from the token the action is read at (the last
state) over its context window.

Frames render offscreen in a subprocess (`dtlens.explore.render`) with `MUJOCO_GL=egl` (Debian:
libegl1, libegl-mesa0, libgl1-mesa-dri), else `osmesa` (libosmesa6); a `MUJOCO_GL` the user set
is the only one tried.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from PIL import Image

import dtlens
from dtlens.data.scores import target_return
from dtlens.errors import DtlensError
from dtlens.explore.jobs import Progress
from dtlens.interp.inputs import TOKEN_LETTERS
from dtlens.train.run import Run

BACKENDS = ("egl", "osmesa")
NO_GL = (
    "rollout replay needs offscreen OpenGL for MuJoCo and neither MUJOCO_GL=egl nor osmesa "
    "renders here: install Debian's libegl1 libegl-mesa0 libgl1-mesa-dri (egl) or libosmesa6 "
    "(osmesa)"
)
WIDTH, HEIGHT = 320, 240


@dataclass
class Replay:
    frames: list[bytes]  # PNG, one per step (the state the step's action was chosen in)
    rewards: list[float]
    attention: list[list[list[list[float]]]]  # step -> layer -> head -> key
    labels: list[list[str]]  # step -> key token labels
    env_id: str
    backend: str

    def summary(self) -> dict:
        return {
            "steps": len(self.frames),
            "rewards": self.rewards,
            "return": float(np.sum(self.rewards)),
            "attention": self.attention,
            "labels": self.labels,
            "env_id": self.env_id,
            "backend": self.backend,
        }


def render_frames(env_id: str, qpos: np.ndarray, qvel: np.ndarray) -> tuple[np.ndarray, str]:
    """Frames of `env_id` at every state, and the MUJOCO_GL backend that drew them."""
    states = io.BytesIO()
    np.save(states, qpos, allow_pickle=False)
    np.save(states, qvel, allow_pickle=False)
    user = os.environ.get("MUJOCO_GL")
    here = str(Path(dtlens.__file__).resolve().parent.parent)
    path = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    failed = []
    for backend in [user] if user else BACKENDS:
        env = os.environ | {"MUJOCO_GL": backend, "PYOPENGL_PLATFORM": backend, "PYTHONPATH": path}
        command = [sys.executable, "-m", "dtlens.explore.render", env_id, str(WIDTH), str(HEIGHT)]
        done = subprocess.run(command, input=states.getvalue(), capture_output=True, env=env)
        if done.returncode == 0:
            return np.load(io.BytesIO(done.stdout), allow_pickle=False), backend
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        failed.append(f"{backend}: {lines[-1] if lines else 'failed'}")
    if user:
        raise DtlensError(f"MUJOCO_GL={user} does not render here ({failed[0]})")
    raise DtlensError(f"{NO_GL} ({'; '.join(failed)})")


def _png(frame: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(frame).save(out, format="PNG")
    return out.getvalue()


@torch.no_grad()
def replay(run: Run, epoch: int, steps: int, progress: Progress) -> Replay:
    """Roll out checkpoint `epoch` for at most `steps` steps from the run's seed, conditioned on
    the run's target return, as the training evaluation does; then render every state."""
    t, data = run.train_config, run.config["data"]
    env_id = t.env_id or data["env_id"]
    model = run.load_model(epoch)
    env = gym.make(env_id)
    obs, _ = env.reset(seed=t.seed)
    dev, k = model.device, t.context_len
    mean, std = (torch.as_tensor(data[x], dtype=torch.float32) for x in ("state_mean", "state_std"))
    states = torch.zeros(steps, model.cfg.state_dim)
    actions = torch.zeros(steps, model.cfg.act_dim)
    rtg = torch.zeros(steps, 1)
    timesteps = torch.arange(steps).clamp(max=model.cfg.max_ep_len - 1)
    rtg[0] = (t.target_return or target_return(env_id)) / t.rtg_scale
    qpos, qvel, rewards, attention, labels = [], [], [], [], []
    names = [f"backbone.blocks.{i}.attn.hook_pattern" for i in range(model.cfg.n_layers)]
    for step in range(steps):
        progress(f"rolling out {run.name}, epoch {epoch}: step {step + 1} of at most {steps}")
        qpos.append(env.unwrapped.data.qpos.copy())
        qvel.append(env.unwrapped.data.qvel.copy())
        states[step] = (torch.as_tensor(obs, dtype=torch.float32) - mean) / std
        lo = max(0, step + 1 - k)
        window = [x[None, lo : step + 1].to(dev) for x in (states, actions, rtg, timesteps)]
        preds, cache = model.run_with_cache(*window, names_filter=lambda n: n in names)
        query = 3 * (step + 1 - lo) - 2  # the last state token
        attention.append([np.round(cache[n][0, :, query].cpu().numpy(), 3).tolist() for n in names])
        labels.append([f"{TOKEN_LETTERS[p % 3]}_{lo + p // 3}" for p in range(3 * (step + 1 - lo))])
        actions[step] = preds[0, -1].float().cpu()
        obs, reward, term, trunc, _ = env.step(actions[step].numpy())
        rewards.append(float(reward))
        if term or trunc:
            break
        if step + 1 < steps:
            rtg[step + 1] = rtg[step] - reward / t.rtg_scale
    env.close()
    progress(f"rendering {len(qpos)} frames")
    frames, backend = render_frames(env_id, np.stack(qpos), np.stack(qvel))
    return Replay([_png(f) for f in frames], rewards, attention, labels, env_id, backend)
