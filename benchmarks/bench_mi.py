"""Every MI estimator's error and run time on cases of known mutual information.

    python benchmarks/bench_mi.py [--quick] [--n 3000]

Cases: jointly Gaussian d x d (`random_gaussian_cov`, canonical correlations in [0.5, 0.9]),
independent 5 x 5 (Gaussian X, exponential Y; I = 0), and a non-Gaussian 3 x 3 case, the Gaussian
one with every coordinate warped by a monotone map (x^3, tanh(y) + 2y), which keeps I unchanged.
The critic methods run a fixed budget of Adam steps (see CRITIC), not the paper's 1000 passes.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine_line, markdown_table, timed  # noqa: E402
from dtlens.diagnostics.mutual_info import (  # noqa: E402
    estimate,
    gaussian_mi,
    random_gaussian_cov,
)

#: (label, method, options). MINE keeps the paper's 3 x 400 critic, lr 1e-4 and batch 50.
ESTIMATORS: list[tuple[str, str, dict[str, Any]]] = [
    ("ksg (default)", "ksg", {}),
    ("ksg plain", "ksg", {"preset": "plain"}),
    ("gaussian", "gaussian", {}),
    ("gaussian copula", "gaussian", {"copula": True}),
    ("mine held-out", "mine", {"iterations": 40}),
    ("mine paper", "mine", {"preset": "paper", "iterations": 20}),
    ("infonce held-out", "infonce", {"hidden": (64, 64), "lr": 1e-3, "iterations": 40}),
]


def cases(n: int, dims: list[int]) -> list[tuple[str, np.ndarray, np.ndarray, float]]:
    out = []
    for d in dims:
        cov = random_gaussian_cov(d, d, seed=d, rho=(0.5, 0.9))
        xy = np.random.default_rng(d).multivariate_normal(np.zeros(2 * d), cov, size=n)
        out.append((f"gaussian {d}x{d}", xy[:, :d], xy[:, d:], gaussian_mi(cov, d)))
    rng = np.random.default_rng(0)
    out.append(("independent 5x5", rng.standard_normal((n, 5)), rng.exponential(size=(n, 5)), 0.0))
    _, x, y, true = next(c for c in out if c[0] == "gaussian 3x3") if 3 in dims else out[0]
    out.append(("warped gaussian", x**3, np.tanh(y) + 2 * y, true))
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few samples, short training")
    parser.add_argument("--n", type=int, default=3000)
    args = parser.parse_args(argv)
    n, dims = (400, [1, 3]) if args.quick else (args.n, [1, 2, 3, 5])
    torch.set_num_threads(1)  # the critics are small; two threads only contend

    rows = []
    for case, x, y, true in cases(n, dims):
        for label, method, options in ESTIMATORS:
            if args.quick and method in ("mine", "infonce"):
                options = options | {"iterations": 2}
            seconds, result = timed(partial(estimate, x, y, method=method, **options))
            value = result.value
            error = value - true if true == 0 else (value - true) / true
            rows.append({"case": case, "true": true, "estimator": label, "value": value,
                         "error": error, "relative": true != 0, "seconds": seconds})  # fmt: skip

    labels = [label for label, _, _ in ESTIMATORS]
    print(
        f"\nMI estimates, n = {n}: value (relative error, or absolute where I = 0), time of one "
        f"run\n{machine_line()}\n"
    )
    table = []
    for case in dict.fromkeys(r["case"] for r in rows):
        cells = []
        for r in (r for r in rows if r["case"] == case):
            err = f"{r['error']:+.1%}" if r["relative"] else f"{r['error']:+.3f}"
            cells.append(f"{r['value']:.3f} ({err}) {r['seconds']:.2g}s")
        true = next(r["true"] for r in rows if r["case"] == case)
        table.append([case, f"{true:.3f}", *cells])
    print(markdown_table(["case", "true (nats)", *labels], table))
    return rows


if __name__ == "__main__":
    main()
