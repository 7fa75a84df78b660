"""Per-sample gradient statistics (`gradient_stats`) vs the loop any user would write.

Two peers, both one backward pass per sample (`action_loss` of a one-sample batch, the model's
default path): "concatenated" puts each sample's gradients into one row and takes the norms and
the Gram of the (n, P) matrix in float64, as such a loop is first written (the peer of issue
31's measurement); "tensor by tensor" stacks each tensor's per-sample gradients and applies
dtlens's own reduction (`GramAccumulator(fast=True)`, its diagonal the squared norms), so that
its ratio measures only how the per-sample gradients are made. Both hold every sample's gradient
at once. dtlens: `gradient_stats` with its defaults (batched forward and backward passes of
chunks of samples, `dtlens.diagnostics.batched_grads`). Eval mode (the loop cannot reproduce the
per-sample dropout masks of a batched forward), a random-weight DT, `bench_confusion`'s random
windows of K=20 (60 tokens, a fifth left-padded), every sample in the Gram.

Each route runs in a process of its own, the three alternating (`--repeats` times each), so that
a change in the machine's load touches each alike; time is the median, peak the highest VmHWM
above the RSS once the model and batch are built. The table also gives how far dtlens's norms
and confusion are from the concatenated loop's (float64 products).

    .venv/bin/python benchmarks/bench_gradient_stats.py [--quick] [--repeats N] [--samples N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from torch import Tensor  # noqa: E402

from benchmarks.bench_confusion import K, make_batch, make_model  # noqa: E402
from benchmarks.common import (  # noqa: E402
    GIB,
    PeakRSS,
    machine_line,
    markdown_table,
    run_child,
    single_thread,
)
from dtlens import DecisionTransformer  # noqa: E402
from dtlens.data.windows import Batch  # noqa: E402
from dtlens.diagnostics.analyses.gradients import gradient_stats  # noqa: E402
from dtlens.diagnostics.gradients import GramAccumulator  # noqa: E402
from dtlens.diagnostics.per_sample import used_parameters  # noqa: E402
from dtlens.train.loop import action_loss  # noqa: E402

#: name -> (layers, d_model, heads); the suite's is GPT-2 small's size.
SIZES = {"GPT-2 small 12 x 768": (12, 768, 12), "2 x 64": (2, 64, 2)}
LIMIT_GIB = 3.0  # the bound on dtlens's peak


def one_backward_per_sample(model: DecisionTransformer, batch: Batch) -> list[tuple[Tensor, ...]]:
    """Each sample's gradient of its own action loss w.r.t. every parameter the DT uses."""
    params = [model.get_parameter(name) for name in used_parameters(model)]
    return [torch.autograd.grad(action_loss(model, batch.index([i])), params)
            for i in range(len(batch))]  # fmt: skip


def loop_route(model: DecisionTransformer, batch: Batch) -> tuple[np.ndarray, float]:
    """The loop with dtlens's reductions, tensor by tensor; (norms, confusion of all samples)."""
    per_sample = one_backward_per_sample(model, batch)
    gram, sq = GramAccumulator(len(batch), fast=True), np.zeros(len(batch))
    for t in range(len(per_sample[0])):
        g = torch.stack([grads[t] for grads in per_sample]).flatten(1)
        sq += gram.update(g)
    return np.sqrt(sq), gram.confusion()


def concatenated_route(model: DecisionTransformer, batch: Batch) -> tuple[np.ndarray, float]:
    """The loop as first written: each sample's gradients concatenated into one row, then the
    norms and the Gram of the (n, P) matrix in float64."""
    G = torch.stack([torch.cat([g.flatten() for g in grads])
                     for grads in one_backward_per_sample(model, batch)]).double()  # fmt: skip
    gram = GramAccumulator(len(batch))
    gram.gram = (G @ G.T).numpy()
    return gram.norms(), gram.confusion()


def dtlens_route(model: DecisionTransformer, batch: Batch) -> tuple[np.ndarray, float]:
    ds = gradient_stats(model, batch, n_confusion=len(batch), train_mode=False)
    return ds["norm"].values, float(ds["confusion"])


ROUTES = {
    "loop, Gram of the concatenated gradients": concatenated_route,
    "loop, Gram tensor by tensor": loop_route,
    "dtlens gradient_stats": dtlens_route,
}


def measure(route: str, size: str, samples: int) -> dict:
    """One run of `route` in this process: seconds, peak RSS above the start, the numbers."""
    single_thread()
    model, batch = make_model(*SIZES[size]).eval(), make_batch(samples)
    with PeakRSS() as peak:
        start = time.perf_counter()
        norms, confusion = ROUTES[route](model, batch)
        seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "peak_gib": peak.peak / GIB,
        "norms": norms.tolist(),
        "confusion": confusion,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model, one repeat, in process")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each route")
    parser.add_argument("--samples", type=int, default=8, help="windows (all in the Gram)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        route, size, samples = args.child
        print(json.dumps(measure(route, size, int(samples))))
        return []
    size = "2 x 64" if args.quick else "GPT-2 small 12 x 768"
    repeats = 1 if args.quick else args.repeats
    runs: dict[str, list[dict]] = {route: [] for route in ROUTES}
    for _ in range(repeats):
        for route in ROUTES:  # alternating
            if args.quick:  # in this process: the test's smoke run, no peak of its own
                out = measure(route, size, args.samples)
            else:
                out = run_child([__file__, "--child", route, size, str(args.samples)])
            print({"route": route, "seconds": out["seconds"]}, file=sys.stderr, flush=True)
            runs[route].append(out)
    loop = runs["loop, Gram of the concatenated gradients"]  # float64 throughout
    ref = np.asarray(loop[0]["norms"])
    rows = []
    for route, done in runs.items():
        norms = np.asarray(done[0]["norms"])
        rows.append({
            "model": size, "samples": args.samples, "route": route,
            "seconds": statistics.median(r["seconds"] for r in done),
            "peak_gib": max(r["peak_gib"] for r in done),
            "norm_rel_diff": float(np.max(np.abs(norms - ref) / ref)),
            "confusion_diff": abs(done[0]["confusion"] - loop[0]["confusion"]),
        })  # fmt: skip
    ours = rows[-1]
    for row in rows:
        row["speedup"] = row["seconds"] / ours["seconds"]
    print_table(rows, repeats)
    return rows


def print_table(rows: list[dict], repeats: int) -> None:
    r0 = rows[0]
    print(
        f"\nper-sample gradient norms and the Gram (confusion) of {r0['samples']} windows of "
        f"K={K} (60 tokens), {r0['model']} DT with random weights, eval mode; each route in a "
        f"process of its own, the three alternating, median of {repeats}; peak = VmHWM above the "
        f"RSS with the model and batch built; differences from the concatenated loop's (float64) "
        f"numbers\n"
        f"{machine_line()}\n"
    )
    cells = [
        [r["route"], f"{r['seconds']:.1f}", f"{r['peak_gib']:.2f}", f"{r['speedup']:.2f}",
         f"{r['norm_rel_diff']:.1e}", f"{r['confusion_diff']:.1e}"]
        for r in rows
    ]  # fmt: skip
    headers = ["route", "time (s)", "peak above start (GiB)", "time / dtlens's",
               "max relative norm difference", "confusion difference"]  # fmt: skip
    print(markdown_table(headers, cells))


if __name__ == "__main__":
    main()
