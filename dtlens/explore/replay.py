"""A rollout replay: one episode of a checkpoint in its MuJoCo environment, a rendered frame per
step and, at every step, each head's attention from the token the action is read at (the last
state) over its context window.

Frames render offscreen with `MUJOCO_GL=egl` (Debian: libegl1, libegl-mesa0, libgl1-mesa-dri),
else `osmesa` (libosmesa6): the first that renders in a subprocess is set before MuJoCo is first
imported in this process. `MUJOCO_GL` set by the user is kept.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from PIL import Image

from dtlens.data.scores import target_return
from dtlens.errors import DtlensError
from dtlens.explore.jobs import Progress
from dtlens.interp.inputs import TOKEN_LETTERS
from dtlens.train.run import Run

BACKENDS = ("egl", "osmesa")
PROBE = (
    "import mujoco; m = mujoco.MjModel.from_xml_string('<mujoco/>'); r = mujoco.Renderer(m, 8, 8);"
    " r.update_scene(mujoco.MjData(m)); r.render()"
)
NO_GL = (
    "rollout replay needs offscreen OpenGL for MuJoCo and neither MUJOCO_GL=egl nor osmesa "
    "renders here: install Debian's libegl1 libegl-mesa0 libgl1-mesa-dri (egl) or libosmesa6 "
    "(osmesa), or set MUJOCO_GL yourself"
)
WIDTH, HEIGHT = 320, 240


def choose_gl() -> str | None:
    """The MuJoCo rendering backend to use (set in `MUJOCO_GL` for this process), or None."""
    if os.environ.get("MUJOCO_GL"):
        return os.environ["MUJOCO_GL"]
    if "mujoco" in sys.modules:  # already imported: its backend is fixed
        return None
    for backend in BACKENDS:
        env = os.environ | {"MUJOCO_GL": backend, "PYOPENGL_PLATFORM": backend}
        probe = subprocess.run(
            [sys.executable, "-c", PROBE], env=env, capture_output=True, timeout=120
        )
        if probe.returncode == 0:
            os.environ["MUJOCO_GL"] = os.environ["PYOPENGL_PLATFORM"] = backend
            return backend
    return None


@dataclass
class Replay:
    frames: list[bytes]  # PNG, one per step (before the step's action)
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


def _png(frame: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(frame).save(out, format="PNG", optimize=False)
    return out.getvalue()


@torch.no_grad()
def replay(run: Run, epoch: int, steps: int, progress: Progress) -> Replay:
    """Roll out checkpoint `epoch` for at most `steps` steps from the run's first evaluation
    seed, conditioned on the run's target return, as the training evaluation does."""
    backend = choose_gl()
    if backend is None:
        raise DtlensError(NO_GL)
    t, data = run.train_config, run.config["data"]
    env_id = t.env_id or data["env_id"]
    model = run.load_model(epoch)
    progress(f"rolling out {run.name}, epoch {epoch} ({backend})")
    try:
        env = gym.make(env_id, render_mode="rgb_array", width=WIDTH, height=HEIGHT)
        obs, _ = env.reset(seed=t.seed)
        first = env.render()
    except Exception as e:  # the GL context fails only when used
        raise DtlensError(f"{NO_GL} ({type(e).__name__}: {e})") from None
    dev, k = model.device, t.context_len
    mean, std = (torch.as_tensor(data[x], dtype=torch.float32) for x in ("state_mean", "state_std"))
    states = torch.zeros(steps, model.cfg.state_dim)
    actions = torch.zeros(steps, model.cfg.act_dim)
    rtg = torch.zeros(steps, 1)
    timesteps = torch.arange(steps).clamp(max=model.cfg.max_ep_len - 1)
    rtg[0] = (t.target_return or target_return(env_id)) / t.rtg_scale
    frames, rewards, attention, labels = [_png(first)], [], [], []
    names = [f"backbone.blocks.{i}.attn.hook_pattern" for i in range(model.cfg.n_layers)]
    for step in range(steps):
        states[step] = (torch.as_tensor(obs, dtype=torch.float32) - mean) / std
        lo = max(0, step + 1 - k)
        window = [x[None, lo : step + 1].to(dev) for x in (states, actions, rtg, timesteps)]
        preds, cache = model.run_with_cache(*window, names_filter=lambda n: n in names)
        query = 3 * (step + 1 - lo) - 2  # the last state token
        attention.append([np.round(cache[n][0, :, query].cpu().numpy(), 3).tolist() for n in names])
        labels.append([f"{TOKEN_LETTERS[p % 3]}_{lo + p // 3}" for p in range(3 * (step + 1 - lo))])
        action = preds[0, -1].float().cpu()
        actions[step] = action
        obs, reward, term, trunc, _ = env.step(action.numpy())
        rewards.append(float(reward))
        if step + 1 < steps:
            rtg[step + 1] = rtg[step] - reward / t.rtg_scale
        if term or trunc or step + 1 == steps:
            break
        frames.append(_png(env.render()))
        progress(f"rolling out {run.name}, epoch {epoch}: step {step + 1} of at most {steps}")
    env.close()
    return Replay(frames, rewards, attention, labels, env_id, backend)
