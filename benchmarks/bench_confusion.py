"""Gradient confusion of 50 per-sample gradients: Gram route vs materialising every gradient.

- Gram route (dtlens): `iter_per_sample_grads` one transformer block at a time, each tensor's
  (n, p) gradients added to a `GramAccumulator` and dropped; the (n, P) matrix never exists.
- Materialised route: every per-sample gradient at once (one vmap over all parameters per chunk
  of samples), then the (n, P) matrix by concatenation and `gradient_confusion(G)`.

Both differentiate the same model on the same batch in train mode with the same dropout masks,
so they must agree on the confusion. Each case runs in its own process; peak memory is the
kernel's high-water mark of the resident set (VmHWM, reset after the model and batch are built)
minus the RSS at that point. A case whose predicted memory exceeds 80% of what the machine has
available is skipped, not run.

    .venv/bin/python benchmarks/bench_confusion.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    GIB,
    PeakRSS,
    available_gib,
    machine_line,
    markdown_table,
    run_child,
)
from dtlens import DecisionTransformer, DTConfig  # noqa: E402
from dtlens.data.windows import Batch  # noqa: E402
from dtlens.diagnostics.gradients import GramAccumulator, gradient_confusion  # noqa: E402
from dtlens.diagnostics.per_sample import iter_per_sample_grads  # noqa: E402
from dtlens.model import BackboneConfig  # noqa: E402

SAMPLES = 50
CHUNK = 16  # samples per vmapped pass, dtlens's default
K = 20
#: name, layers, d_model, heads; the last is GPT-2 small's size.
SIZES = [("12 x 384", 12, 384, 6), ("GPT-2 small 12 x 768", 12, 768, 12)]
QUICK_SIZES = [("2 x 64", 2, 64, 2), ("4 x 128", 4, 128, 4)]


def make_model(layers: int, d: int, heads: int) -> DecisionTransformer:
    backbone = BackboneConfig.sized(layers, d, heads)
    return DecisionTransformer(DTConfig(state_dim=11, act_dim=3, backbone=backbone), seed=0)


def make_batch(n: int, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, K, dtype=torch.long)
    mask[: n // 5, : K // 2] = 0  # a fifth of the windows left-padded
    return Batch(
        states=torch.randn(n, K, 11, generator=g),
        actions=torch.rand(n, K, 3, generator=g) * 2 - 1,
        returns_to_go=torch.randn(n, K, 1, generator=g),
        timesteps=torch.randint(0, 1000, (n, K), generator=g),
        attention_mask=mask,
    )


def gram_route(model: DecisionTransformer, batch: Batch) -> float:
    acc = GramAccumulator(len(batch))
    for _, g in iter_per_sample_grads(model, batch, chunk_size=CHUNK):
        acc.update(g)
    return acc.confusion()


def materialised_route(model: DecisionTransformer, batch: Batch) -> float:
    grads = iter_per_sample_grads(model, batch, chunk_size=CHUNK, group_by="all")
    G = torch.cat([g.flatten(1) for _, g in grads], dim=1)
    return gradient_confusion(G)


ROUTES = {"Gram (dtlens)": gram_route, "materialised": materialised_route}


def n_params(model: DecisionTransformer) -> int:
    return sum(p.numel() for p in model.parameters())


def measure(route: str, layers: int, d: int, heads: int) -> dict:
    """Run one route once in this process: seconds, peak RSS above the start, confusion."""
    model = make_model(layers, d, heads)
    batch = make_batch(SAMPLES)
    with PeakRSS() as peak:  # the kernel's high-water mark, reset here
        t0 = time.perf_counter()
        confusion = ROUTES[route](model, batch)
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_gib": peak.peak / GIB, "confusion": confusion}


def predicted_gib(route: str, params: int) -> float:
    """The per-sample gradients a route holds at once (the materialised one twice: the
    per-tensor buffers and their concatenation); activations not counted."""
    if route == "materialised":
        return 2 * SAMPLES * params * 4 / GIB
    return 0.0


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small models")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per case")
    parser.add_argument(
        "--models", nargs="+", help="model names to run (default: both of the mode's sizes)"
    )
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        route, layers, d, heads = args.child
        print(json.dumps(measure(route, int(layers), int(d), int(heads))))
        return []
    rows = []
    sizes = QUICK_SIZES if args.quick else SIZES
    if args.models:
        sizes = [s for s in QUICK_SIZES + SIZES if s[0] in args.models]
    for name, layers, d, heads in sizes:
        params = n_params(make_model(layers, d, heads))
        for route in ROUTES:
            row = {"model": name, "params": params, "route": route}
            need, have = predicted_gib(route, params), available_gib()
            if need > 0.8 * have:
                row["skipped"] = f"needs > {need:.0f} GiB, {have:.0f} GiB available"
            else:
                threads = ["--threads", str(args.threads)] if args.threads else []
                sizes_args = [str(layers), str(d), str(heads)]
                row |= run_child([__file__, *threads, "--child", route, *sizes_args])
            print(row, file=sys.stderr)
            rows.append(row)
    print_table(rows, torch.get_num_threads())
    return rows


def print_table(rows: list[dict], threads: int) -> None:
    print(
        f"\ngradient confusion of {SAMPLES} per-sample gradients (train mode), DT with K={K} "
        f"(60 tokens), {CHUNK} samples per vmapped pass; one run of each route, each in its own "
        f"process; {threads} torch thread(s)\n{machine_line()}\n"
    )
    gram = {r["model"]: r for r in rows if r["route"] == "Gram (dtlens)"}
    cells = []
    for r in rows:
        head = [r["model"], f"{r['params'] / 1e6:.1f} M", r["route"]]
        if "skipped" in r:
            cells.append([*head, f"skipped: {r['skipped']}", "", "", "", ""])
            continue
        g = gram[r["model"]]
        cells.append([
            *head, f"{r['seconds']:.1f}", f"{r['peak_gib']:.2f}",
            f"{r['seconds'] / g['seconds']:.2f}", f"{r['peak_gib'] / g['peak_gib']:.2f}",
            f"{r['confusion']:.6f}",
        ])  # fmt: skip
    headers = ["model", "parameters", "route", "time (s)", "peak RSS above start (GiB)",
               "time / Gram", "peak / Gram", "confusion"]  # fmt: skip
    print(markdown_table(headers, cells))


if __name__ == "__main__":
    main()
