"""Offscreen frames of MuJoCo states, in a process of their own (MuJoCo fixes its GL backend,
`MUJOCO_GL`, when it is first imported, which in a long-lived process may already have happened):

    python -m dtlens.explore.render ENV_ID WIDTH HEIGHT < qpos.npy qvel.npy > frames.npy

reads every step's qpos then qvel (.npy, one after the other on stdin), sets the environment to
each state and writes the frames (uint8, step x height x width x 3, .npy on stdout), as the
environment's own `rgb_array` renderer draws them (its camera, tracking the body).
"""

from __future__ import annotations

import io
import sys

import gymnasium as gym
import numpy as np


def main() -> None:
    env_id, width, height = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    states = io.BytesIO(sys.stdin.buffer.read())  # np.load needs a seekable file
    qpos = np.load(states, allow_pickle=False)
    qvel = np.load(states, allow_pickle=False)
    env = gym.make(env_id, render_mode="rgb_array", width=width, height=height)
    env.reset(seed=0)
    frames = np.empty((len(qpos), height, width, 3), np.uint8)
    for i, (p, v) in enumerate(zip(qpos, qvel, strict=True)):
        env.unwrapped.set_state(p, v)
        frames[i] = env.render()
    env.close()
    np.save(sys.stdout.buffer, frames, allow_pickle=False)


if __name__ == "__main__":
    main()
