"""What `dtlens reproduce` adds per run with its ablation in rollouts
(`dtlens.interp.analyses.ablation` with its `reproduce_options`: each block's attention and MLP
mean-ablated, at most 5 episodes of at most 200 steps per policy) against the peer the run already
pays for: its own final evaluation (`dtlens.train.evaluate` as training ran it, fused blocks, the
run's episodes and step limit).

Both are timed in this process on one torch thread, back to back, as CPU time (`process_time`),
so the ratio holds when other work shares the CPU.

    .venv/bin/python benchmarks/ablation_cost.py RUN [RUN ...]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine_line, markdown_table, single_thread  # noqa: E402
from dtlens.diagnostics.contract import Settings  # noqa: E402
from dtlens.interp.analyses.ablation import DIAGNOSTIC as ABLATION  # noqa: E402
from dtlens.interp.rollouts import Rollouts  # noqa: E402
from dtlens.train.evaluate import evaluate  # noqa: E402
from dtlens.train.run import Run  # noqa: E402


def cpu_seconds(fn) -> tuple[float, object]:
    start = time.process_time()
    result = fn()
    return time.process_time() - start, result


def measure(run: Run) -> list[object]:
    """The run's own evaluation and the reproduce ablation: CPU seconds, env steps, ratio."""
    how, model = Rollouts.of(run), run.load_model(-1)
    peer, res = cpu_seconds(
        lambda: evaluate(
            model,
            how.env_id,
            how.state_mean,
            how.state_std,
            how.target_return,
            episodes=how.episodes,
            context_len=how.context_len,
            rtg_scale=how.rtg_scale,
            max_steps=how.max_steps,
        )
    )
    ours, written = cpu_seconds(lambda: ABLATION.write(run, **ABLATION.options(Settings(), run)))
    steps = int(written.ds["length"].sum() + written.ds["baseline_length"].sum())
    return [
        run.name,
        f"{peer:.1f}",
        int(res.lengths.sum()),
        f"{ours:.1f}",
        steps,
        f"{ours / peer:.2f}",
    ]


def main(argv: list[str]) -> None:
    single_thread()
    rows = [measure(Run(path)) for path in argv]
    print(machine_line())
    print(
        markdown_table(
            [
                "run",
                "own evaluation (CPU s)",
                "env steps",
                "ablation (CPU s)",
                "env steps",
                "ratio",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
