"""How often `dtlens.stats.aggregate` calls a difference when no task differs (nominal 5%).

Each simulated study has T tasks with n seeds a side, all drawn from one normal per task (task t
on scale t + 1); the rate is the share of studies whose two-sided verdict is "holds".

    .venv/bin/python benchmarks/calibration_aggregate.py [--studies 4000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dtlens.stats import aggregate  # noqa: E402

SETTINGS = [(3, 1), (3, 3), (5, 3), (10, 3)]  # (seeds a side, tasks)


def null_rate(seeds: int, tasks: int, studies: int, rng: np.random.Generator) -> float:
    called = 0
    for _ in range(studies):
        per_task = {
            f"t{t}": (rng.normal(size=seeds) * (t + 1), rng.normal(size=seeds) * (t + 1))
            for t in range(tasks)
        }
        called += aggregate(per_task, expect="two-sided").verdict == "holds"
    return called / studies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    print("| seeds a side | tasks | null studies called different (nominal 0.05) |")
    print("|---|---|---|")
    for seeds, tasks in SETTINGS:
        print(f"| {seeds} | {tasks} | {null_rate(seeds, tasks, args.studies, rng):.3f} |")


if __name__ == "__main__":
    main()
