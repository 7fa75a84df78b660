"""MI estimators' error in the shapes of dtlens's run-level analysis: an 11-d state X against a
128-d or 768-d representation Y, at n = 100 and n = 1000 samples.

    python benchmarks/bench_mi.py [--quick]

Cases, for each shape and n (each draw makes new samples and, where there is one, a new map A):

- independent: X ~ N(0, I_11), Y exponential (i.i.d. Exp(1) coordinates); I = 0, so the cell
  is the value itself, i.e. the absolute error in nats, averaged over the draws.
- linear 1 / 3 nats: Y = X A + s E, A ~ N(0, 1) / sqrt(11) of shape (11, dy), E ~ N(0, I), s
  set by bisection so that I(X; Y) = 1/2 log det(I + A A^T / s^2) is exactly 1 or 3 nats.
- + nuisance 1 / 3 nats: the same plus Z B, Z ~ N(0, I_32) independent of X and
  B ~ 2 N(0, 1) / sqrt(32) of shape (32, dy), a structured variance of Y unrelated to X;
  I = 1/2 log det(I + A C^-1 A^T) with C = B^T B + s^2 I, s again set by bisection.

Estimators (all `dtlens.diagnostics.mutual_info.estimate`): ``gcmi`` (the default, what the
analysis uses), ``gaussian`` (the plain Gaussian closed form), ``ksg`` (only where n > dx + dy:
its Gaussian reference needs more samples than dimensions; "n/a" elsewhere) and ``mine paper``
(``method="mine", preset="paper"``: the critic is trained and scored on the same samples, the
MINE paper's protocol; 300 passes here, 20 with --quick). MINE runs at n = 100 only: at
n = 1000 a pass is 20 steps instead of 2 and the column alone would take several minutes.

How to read the table: one row per shape (X x Y dimensions), n and estimator. "independent" is
the mean value on independent data, which should be 0. "null" is the mean of
`permutation_null(X, Y, 5)` on the first independent draw: what the estimator reads at this
shape and n with the dependence shuffled away, the level a value has to clear to mean anything
(MINE's paper protocol reads several nats there). The other cells are the mean value over the
draws and, in brackets, its error relative to the truth. Draws: 3 per case; ksg and MINE 2 of
the independent case and 1 of each dependent one. "s / estimate" is the mean time of one
estimate. "-" marks what is not run, to keep the benchmark under 5 minutes on 2 slow cores:
the 768-d ksg null (20 s an estimate), ksg and MINE on the nuisance cases. --quick (under 30 s):
128-d only, 1 draw, no nuisance cases, MINE 20 passes, the null for gcmi and MINE only.
"""

from __future__ import annotations

import argparse
import math
import sys
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine_line, markdown_table, timed  # noqa: E402
from dtlens.diagnostics.mutual_info import DEFAULT_METHOD, estimate, permutation_null  # noqa: E402
from dtlens.errors import DtlensError  # noqa: E402

DX = 11
NUISANCE = 32
#: (label, method, options); "mine paper" gets `iterations` from the command line.
ESTIMATORS: list[tuple[str, str, dict[str, Any]]] = [
    ("gcmi", DEFAULT_METHOD, {}),
    ("gaussian", "gaussian", {}),
    ("ksg", "ksg", {}),
    ("mine paper", "mine", {"preset": "paper"}),
]
#: the slow estimators: at most 2 draws of the independent case, 1 of each dependent case, no
#: nuisance cases
SLOW = {"ksg", "mine paper"}
#: (case label, true I in nats or 0, with nuisance)
CASES: list[tuple[str, float, bool]] = [
    ("independent", 0.0, False),
    ("linear 1 nat", 1.0, False),
    ("linear 3 nats", 3.0, False),
    ("+ nuisance 1 nat", 1.0, True),
    ("+ nuisance 3 nats", 3.0, True),
]


def noise_scale(a: np.ndarray, target: float, b: np.ndarray | None = None) -> float:
    """The s at which 1/2 log det(I + A C^-1 A^T) = `target` nats, C = B^T B + s^2 I (B^T B = 0
    without `b`), by bisection on log s (the MI falls as s grows)."""
    if b is None:
        lam, av = np.zeros(a.shape[1]), a
    else:
        lam, v = np.linalg.eigh(b.T @ b)
        av = a @ v

    def mi(s: float) -> float:
        m = (av / (lam + s * s)) @ av.T
        return 0.5 * np.linalg.slogdet(np.eye(len(a)) + m)[1]

    lo, hi = math.log(1e-4), math.log(1e4)
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mi(math.exp(mid)) > target else (lo, mid)
    return math.exp((lo + hi) / 2)


def sample(case: int, dy: int, n: int, draw: int) -> tuple[np.ndarray, np.ndarray]:
    """(X, Y) of one draw of CASES[case]."""
    _, true, nuisance = CASES[case]
    rng = np.random.default_rng([dy, n, case, draw])
    x = rng.standard_normal((n, DX))
    if true == 0:
        return x, rng.exponential(size=(n, dy))
    a = rng.standard_normal((DX, dy)) / math.sqrt(DX)
    b = 2 * rng.standard_normal((NUISANCE, dy)) / math.sqrt(NUISANCE) if nuisance else None
    y = x @ a + noise_scale(a, true, b) * rng.standard_normal((n, dy))
    if b is not None:
        y += rng.standard_normal((n, NUISANCE)) @ b
    return x, y


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="128-d only, 1 draw, short MINE")
    parser.add_argument("--draws", type=int, help="draws per case (default 3, --quick 1)")
    parser.add_argument("--mine-iterations", type=int, help="default 300, --quick 20")
    args = parser.parse_args(argv)
    draws = args.draws or (1 if args.quick else 3)
    iterations = args.mine_iterations or (20 if args.quick else 300)
    dims, ns = ([128], [100, 1000]) if args.quick else ([128, 768], [100, 1000])
    cases = [c for c in range(len(CASES)) if not (args.quick and CASES[c][2])]
    torch.set_num_threads(1)  # the critics are small; two threads only contend

    rows: list[dict] = []
    table = []
    for dy in dims:
        for n in ns:
            shape = f"{DX} x {dy}"
            data = {(c, d): sample(c, dy, n, d) for c in cases for d in range(draws)}
            for label, method, options in ESTIMATORS:
                if label == "mine paper":
                    if n > 100:
                        continue
                    options = options | {"iterations": iterations}
                run = partial(estimate, method=method, **options)
                cells: list[str | None] = []
                spent: list[float] = []
                null = None
                for c in cases:
                    case, true, nuisance = CASES[c]
                    if label in SLOW and nuisance:
                        cells.append(None)
                        continue
                    k = draws if label not in SLOW else min(draws, 2 if true == 0 else 1)
                    try:
                        results = [timed(partial(run, *data[c, d], seed=d)) for d in range(k)]
                    except DtlensError:
                        cells.append("n/a")
                        continue
                    values = [r.value for _, r in results]
                    seconds = [s for s, _ in results]
                    spent += seconds
                    value = float(np.nanmean(values)) if any(np.isfinite(values)) else math.nan
                    error = value - true if true == 0 else (value - true) / true
                    row = {"case": case, "shape": shape, "n": n, "true": true,
                           "estimator": label, "value": value, "error": error,
                           "relative": true != 0, "seconds": float(np.mean(seconds)),
                           "draws": k, "values": values}  # fmt: skip
                    if true == 0:
                        cells.append(f"{value:+.3f}")
                        skip_null = (args.quick and label not in ("gcmi", "mine paper")) or (
                            label == "ksg" and dy > 128
                        )
                        if not skip_null:
                            x, y = data[c, 0]
                            null = float(
                                np.mean(permutation_null(x, y, 5, method=method, **options))
                            )
                        row["null"] = null
                    else:
                        cells.append(f"{value:.3f} ({error:+.0%})")
                    rows.append(row)
                null_cell = None if null is None else f"{null:+.3f}"
                time_cell = f"{np.mean(spent):.2g}" if spent else None
                table.append([shape, n, label, cells[0], null_cell, *cells[1:], time_cell])

    headers = ["X x Y", "n", "estimator", "independent", "null"]
    headers += [CASES[c][0] for c in cases[1:]] + ["s / estimate"]
    print(
        f"\nMI estimates in nats against the truth: independent data (I = 0, the mean value), its "
        f"permutation null (mean of 5 shuffles), and noisy Gaussian linear maps (mean value, "
        f"relative error); {draws} draw(s) per case, ksg and mine paper at most 2 of the "
        f"independent case and 1 of each dependent one; mine paper = MINE trained and scored on "
        f"the same samples, {iterations} passes, n = 100 only\n{machine_line()}\n"
    )
    print(markdown_table(headers, table))
    return rows


if __name__ == "__main__":
    main()
