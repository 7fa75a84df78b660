"""All-pairs layer CKA (unbiased linear, the paper's estimator): dtlens vs a straightforward numpy
implementation that builds and U-centres two n x n Gram matrices for every layer pair.

    python benchmarks/bench_cka.py [--quick] [--repeats 3] [--naive-budget 300]

The naive route is skipped where its Gram matrices would not fit in `--naive-memory-gb` or its
estimated time (extrapolated as n^2 from the last size it ran at) exceeds `--naive-budget`
seconds. Timings are the median of `--repeats` runs (one run for the naive route above 2000
samples); the BLAS thread count is printed with the table.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine_line, markdown_table, median_time  # noqa: E402
from dtlens.diagnostics.cka import cka_matrix  # noqa: E402


def naive_cka_matrix(layers: list[np.ndarray]) -> np.ndarray:
    """Unbiased linear CKA pair by pair, from two freshly built n x n Gram matrices each time."""

    def u_centred_gram(x: np.ndarray) -> np.ndarray:
        n = len(x)
        k = x @ x.T
        np.fill_diagonal(k, 0.0)
        row = k.sum(axis=1) / (n - 2)
        k = k - row[:, None] - row[None, :] + row.sum() / (n - 1)
        np.fill_diagonal(k, 0.0)
        return k

    out = np.empty((len(layers), len(layers)))
    for i, a in enumerate(layers):
        for j, b in enumerate(layers):
            k, m = u_centred_gram(a), u_centred_gram(b)
            out[i, j] = (k * m).sum() / np.sqrt((k * k).sum() * (m * m).sum())
    return out


def make_layers(n: int, n_layers: int, d: int, seed: int = 0) -> list[np.ndarray]:
    """A residual stream: each layer adds a random map of the previous one, plus noise."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    layers = []
    for _ in range(n_layers):
        x = (
            x
            + np.tanh(x @ rng.standard_normal((d, d)) / np.sqrt(d))
            + 0.1 * rng.standard_normal((n, d))
        )
        layers.append(x.copy())
    return layers


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one tiny size, for a smoke test")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--layers", type=int, default=13)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive-budget", type=float, default=300.0, help="seconds")
    parser.add_argument("--naive-memory-gb", type=float, default=2.0)
    args = parser.parse_args(argv)
    sizes, n_layers, d = ([200], 4, 16) if args.quick else (args.sizes, args.layers, args.d)

    rows, naive_rate = [], None  # naive seconds per n^2
    for n in sizes:
        layers = make_layers(n, n_layers, d)
        fast_s, fast = median_time(partial(cka_matrix, layers, debiased=True), args.repeats)
        row = {"n": n, "layers": n_layers, "d": d, "dtlens_s": fast_s, "naive_s": None,
               "speedup": None, "max_abs_diff": None, "note": ""}  # fmt: skip
        gram_gb = 4 * n * n * 8 / 1e9  # two Grams and two temporaries alive at once
        estimate = None if naive_rate is None else naive_rate * n * n
        if gram_gb > args.naive_memory_gb:
            row["note"] = f"naive skipped: needs ~{gram_gb:.0f} GB of Gram matrices"
        elif estimate is not None and estimate > args.naive_budget:
            row["note"] = f"naive skipped: estimated {estimate:.0f} s"
        else:
            repeats = args.repeats if n <= 2000 else 1
            naive_s, naive = median_time(partial(naive_cka_matrix, layers), repeats)
            naive_rate = naive_s / (n * n)
            row.update(naive_s=naive_s, speedup=naive_s / fast_s,
                       max_abs_diff=float(np.abs(naive - fast).max()))  # fmt: skip
        rows.append(row)

    print(
        f"\nAll-pairs unbiased linear CKA, {n_layers} layers x d={d}; median of {args.repeats} "
        f"(naive: 1 above 2000 samples)\n{machine_line()}\n"
    )
    cells = []
    for r in rows:
        naive = "-" if r["naive_s"] is None else f"{r['naive_s']:.4g}"
        speedup = "-" if r["speedup"] is None else f"{r['speedup']:.0f}x"
        diff = "-" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.1e}"
        cells.append([r["n"], f"{r['dtlens_s']:.4g}", naive, speedup, diff, r["note"]])
    print(
        markdown_table(
            ["n", "dtlens (s)", "naive numpy (s)", "speedup", "max abs diff", "note"], cells
        )
    )
    return rows


if __name__ == "__main__":
    main()
