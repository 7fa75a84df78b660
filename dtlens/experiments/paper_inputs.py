"""Stand-ins for the paper preset's inputs, made offline by project code.

`write_paper_inputs(root)` writes what `dtlens reproduce --preset paper` reads, at the real sizes:
```
root/gpt2/  root/imagegpt/        HF directories, published configs, random weights
root/d4rl/{hopper,halfcheetah,walker2d}-medium-v2.hdf5    D4RL layout, collected with the
                                  committed medium policies on the gymnasium v5 environments
```
For tests, benchmarks and dry runs where the real weights and D4RL files are not at hand.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dtlens.data.collect import collect_to_file
from dtlens.experiments.presets import PAPER_ENVS
from dtlens.model.synthetic import write_random_hf_model


@dataclass(frozen=True)
class PaperInputs:
    """The three inputs of the paper preset (`--gpt2`, `--imagegpt`, `--d4rl-dir`)."""

    gpt2: Path
    imagegpt: Path
    d4rl_dir: Path


def write_paper_inputs(
    root: str | os.PathLike, transitions: int = 3000, seed: int = 0
) -> PaperInputs:
    """Write (or reuse, where already written) the stand-in inputs under `root`: each dataset
    holds `transitions` steps of its task's committed medium policy from `seed`."""
    root = Path(root)
    inputs = PaperInputs(root / "gpt2", root / "imagegpt", root / "d4rl")
    for kind, path in (("gpt2", inputs.gpt2), ("imagegpt", inputs.imagegpt)):
        if not (path / "config.json").is_file():
            write_random_hf_model(kind, path, seed=seed)
    for label, env_id in PAPER_ENVS.items():
        path = inputs.d4rl_dir / f"{label}-medium-v2.hdf5"
        if not path.is_file():
            collect_to_file(path, env_id, "medium", transitions=transitions, seed=seed)
    return inputs
