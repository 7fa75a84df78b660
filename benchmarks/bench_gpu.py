"""On a CUDA GPU: the paper-size training step of dtlens vs HF DecisionTransformerModel (fp32 and
bf16), capture throughput, per-sample gradients at GPT-2 size, rollout env steps/s, and the
projected wall time of `dtlens reproduce --preset paper` on 1 and N GPUs.

Without a CUDA device it prints "no CUDA device" and exits 0 (nothing is measured). Every
measurement reuses the CPU benchmarks' functions on the device; each ratio compares two things
timed in this process on the same device:

- training step (`bench_train_step`): dtlens vs HF (its default attention) at GPT-2 size
  (12 x 768 x 12, K=20, batch 64, the paper's dropout, AdamW, clip 0.25), in fp32 and in bf16
  autocast; the ratio is dtlens / HF at the same precision;
- capture (`dtlens.capture.capture`, resid_post + pattern of every block, 256 samples a pass):
  samples/s, and its time over a plain forward pass of the same samples;
- per-sample gradients (`bench_confusion`): 50 samples of a GPT-2-size DT, the Gram route
  (dtlens) and, where it fits in 80% of the free memory, the materialised route; peak memory is
  `torch.cuda.max_memory_allocated` above the model;
- rollouts (`dtlens.train.evaluate`, Hopper-v5, 10 episodes side by side) of a GPT-2-size DT:
  env steps/s on the GPU and on the CPU;
- projection: the paper preset's plan (`dtlens.experiments.reproduce.plan`), each run's steps
  times the measured fp32 step time of its backbone (GPT-2, ImageGPT-small 24 x 512 x 8, the
  paper's 12 x 768 1-head random init; K=1 runs at the K=20 time, an upper bound), plus its
  evaluations at the measured rollout rate (every episode at its step cap, an upper bound),
  spread over N GPUs longest run first; diagnostics are not included.

    .venv/bin/python benchmarks/bench_gpu.py [--quick] [--gpus 1 8] [--device cuda:0]

`--device cpu` runs the same code on the CPU (the test does, at `--quick` sizes).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import bench_confusion, bench_train_step  # noqa: E402
from benchmarks.common import (  # noqa: E402
    GIB,
    PeakRSS,
    alternate,
    available_gib,
    machine_line,
    markdown_table,
)
from dtlens import DecisionTransformer, DTConfig  # noqa: E402
from dtlens.model.config import PAPER_RANDOM, BackboneConfig  # noqa: E402

GPT2 = BackboneConfig(n_layers=12, d_model=768, n_heads=12, d_mlp=3072, act_fn="gelu_new")
IMAGEGPT = BackboneConfig(24, 512, 8, 2048, act_fn="quick_gelu", normalization_type="RMS")
QUICK = BackboneConfig(n_layers=2, d_model=32, n_heads=2, d_mlp=128)
#: init of a paper run -> its backbone (block-swap runs bring theirs in `size`).
PAPER_INITS = {"gpt2": GPT2, "imagegpt": IMAGEGPT, "random-paper": PAPER_RANDOM}


# -- device helpers ------------------------------------------------------------------------------
def synced(fn: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """`fn`, returning only once the device has finished its work."""

    def run() -> object:
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out

    return run


def bf16(fn: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """`fn` under bfloat16 autocast."""

    def run() -> object:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            return fn()

    return run


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict]:
    """`with peak_memory(dev) as m: ...`: m["bytes"], the peak above the start (CUDA: allocated
    memory; CPU: resident set)."""
    out: dict = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield out
        torch.cuda.synchronize(device)
        out["bytes"] = torch.cuda.max_memory_allocated(device) - base
    else:
        with PeakRSS() as peak:
            yield out
        out["bytes"] = peak.peak


def free_bytes(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return available_gib() * GIB


def dt_of(size: BackboneConfig, device: torch.device) -> DecisionTransformer:
    cfg = DTConfig(state_dim=bench_train_step.STATE, act_dim=bench_train_step.ACT, backbone=size)
    return DecisionTransformer(cfg, seed=0).to(device)


# -- measurements --------------------------------------------------------------------------------
def train_steps(size_name: str, size: tuple, batch: int, repeats: int, device) -> list[dict]:
    """dtlens vs HF training step, fp32 and bf16 autocast, round-robin on `device`."""
    hf_cpu = bench_train_step.hf_model(*size)
    data = bench_train_step.make_batch(batch).to(device)
    steps: dict[str, Callable[[], object]] = {}
    for precision in ("fp32", "bf16"):
        dt = DecisionTransformer.from_hf(hf_cpu).to(device).train()
        hf = bench_train_step.hf_model(*size).to(device).train()  # same seed: same weights
        ours = bench_train_step.dtlens_step(dt, data, None)
        theirs = bench_train_step.hf_step(hf, data, None)
        if precision == "bf16":
            ours, theirs = bf16(ours, device), bf16(theirs, device)
        steps[f"dtlens {precision}"] = synced(ours, device)
        steps[f"HF {precision}"] = synced(theirs, device)
    print(f"{size_name}: timing {len(steps)} training steps x {repeats}", file=sys.stderr)
    times = alternate(steps, repeats=repeats, warmup=2)
    return [
        {"section": "train step", "model": size_name, "batch": batch, "variant": name,
         "seconds": times[name], "peer": f"HF {name.split()[-1]}",
         "ratio": times[name] / times[f"HF {name.split()[-1]}"]}
        for name in steps
    ]  # fmt: skip


def step_time(size: BackboneConfig, batch: int, repeats: int, device) -> float:
    """Seconds of one fp32 dtlens training step of a DT with backbone `size`."""
    step = bench_train_step.dtlens_step(
        dt_of(size, device).train(), bench_train_step.make_batch(batch).to(device), None
    )
    return alternate({"step": synced(step, device)}, repeats=repeats, warmup=2)["step"]


def capture_rate(size: BackboneConfig, n: int, device) -> list[dict]:
    """Capture of resid_post and pattern vs a plain forward pass, samples/s."""
    from dtlens.capture import capture

    dt = dt_of(size, device).eval()
    data = bench_train_step.make_batch(n)

    @torch.inference_mode()
    def forward() -> None:
        for i in range(0, n, 256):
            b = data.index(slice(i, i + 256)).to(device)
            dt(b.states, b.actions, b.returns_to_go, b.timesteps, b.attention_mask)

    routes = {
        "capture resid_post + pattern": synced(
            lambda: capture(dt, data, ["resid_post", "pattern"], batch_size=256), device
        ),
        "plain forward": synced(forward, device),
    }
    times = alternate(routes, repeats=3, warmup=1)
    return [
        {"section": "capture", "model": f"{size.n_layers} x {size.d_model}", "samples": n,
         "variant": name, "seconds": times[name], "samples_per_s": n / times[name],
         "ratio": times[name] / times["plain forward"], "peer": "plain forward"}
        for name in routes
    ]  # fmt: skip


def per_sample_gradients(size: BackboneConfig, device) -> list[dict]:
    """bench_confusion's two routes on a DT of `size`: seconds and peak memory."""
    rows = []
    model = dt_of(size, device)
    batch = bench_confusion.make_batch(bench_confusion.SAMPLES).to(device)
    params = bench_confusion.n_params(model)
    for route, fn in bench_confusion.ROUTES.items():
        need = bench_confusion.predicted_gib(route, params) * GIB
        row = {"section": "per-sample gradients", "model": f"{size.n_layers} x {size.d_model}",
               "samples": bench_confusion.SAMPLES, "variant": route, "params": params}  # fmt: skip
        if need > 0.8 * free_bytes(device):
            rows.append(row | {"skipped": f"needs {need / GIB:.0f} GiB"})
            continue
        with peak_memory(device) as mem:
            t0 = time.perf_counter()
            confusion = synced(lambda fn=fn: fn(model, batch), device)()
            seconds = time.perf_counter() - t0
        rows.append(row | {"seconds": seconds, "peak_gib": mem["bytes"] / GIB,
                           "confusion": confusion})  # fmt: skip
    return rows


def rollout_rate(size: BackboneConfig, episodes: int, max_steps: int, device) -> list[dict]:
    """dtlens `evaluate` on Hopper-v5: env steps/s with the DT on `device` and on the CPU."""
    from dtlens.data import load_dataset, target_return
    from dtlens.train.evaluate import evaluate

    data = load_dataset("mini/hopper-medium")
    target = target_return("Hopper-v5")
    rows = []
    for where in dict.fromkeys([device, torch.device("cpu")]):
        dt = dt_of(size, where).eval()
        run = synced(
            lambda dt=dt: evaluate(dt, "Hopper-v5", data.state_mean, data.state_std, target,
                                   episodes=episodes, max_steps=max_steps, seed=0),
            where,
        )  # fmt: skip
        run()  # warm-up
        t0 = time.perf_counter()
        res = run()
        seconds = time.perf_counter() - t0
        steps = int(res.lengths.sum())
        rows.append({"section": "rollout", "model": f"{size.n_layers} x {size.d_model}",
                     "variant": f"evaluate on {where}", "episodes": episodes,
                     "env_steps": steps, "seconds": seconds,
                     "steps_per_s": steps / seconds})  # fmt: skip
    return rows


def paper_runs() -> list:
    """Every run of the paper preset's plan (its inputs are named, not read)."""
    from dtlens.experiments.presets import paper
    from dtlens.experiments.reproduce import plan

    return [s for p in plan(paper("gpt2", "imagegpt", "d4rl")) for s in p.specs()]


def run_size(spec) -> BackboneConfig:
    """The backbone of a paper run: its init's, or (block swap, random init) its `size`."""
    return PAPER_INITS.get(spec.cfg.init, spec.cfg.size)


def project(runs: list, step_seconds: dict, env_steps_per_s: float, gpus: list[int]) -> list:
    """The paper preset's training and evaluation time on 1 and N GPUs (see the docstring)."""
    hours = []
    for spec in runs:
        t = spec.cfg
        train_s = t.epochs * t.steps_per_epoch * step_seconds[run_size(spec)]
        evaluations = len({*range(t.eval_every, t.epochs + 1, t.eval_every), t.epochs})
        eval_s = evaluations * t.eval_episodes * t.eval_max_steps / env_steps_per_s
        hours.append((train_s + eval_s) / 3600)
    rows = []
    for n in gpus:
        load = [0.0] * n
        for h in sorted(hours, reverse=True):  # longest run first, to the least-loaded GPU
            load[load.index(min(load))] += h
        rows.append({"section": "projection", "gpus": n, "runs": len(runs),
                     "hours": max(load), "run_hours": sum(hours)})  # fmt: skip
    return rows


# -- main ----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny models, few repeats")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N (cpu: the code path)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--gpus", type=int, nargs="+", help="GPU counts (default 1 2 4 8, all)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: the GPU benchmark measures nothing on this machine")
        return []
    gpus = args.gpus or sorted(
        {1, 2, 4, 8, torch.cuda.device_count() if device.type == "cuda" else 1}
    )
    if args.quick:
        sizes = {"2 x 32": (2, 32, 2, 128)}
        batch, repeats, samples, episodes, max_steps, big = 8, 2, 32, 2, 10, QUICK
    else:
        sizes = {"GPT-2 12 x 768": bench_train_step.SIZES["paper 12 x 768"]}
        batch, repeats, samples, episodes, max_steps, big = 64, args.repeats, 1000, 10, 200, GPT2
    rows = []
    for name, size in sizes.items():
        rows += train_steps(name, size, batch, repeats, device)
    rows += capture_rate(big, samples, device)
    rows += per_sample_gradients(big, device)
    rows += rollout_rate(big, episodes, max_steps, device)
    runs = paper_runs()
    seconds = {
        size: step_time(QUICK if args.quick else size, batch, repeats, device)
        for size in dict.fromkeys(run_size(s) for s in runs)
    }
    rate = next(r["steps_per_s"] for r in rows if r["variant"] == f"evaluate on {device}")
    rows += project(runs, seconds, rate, gpus)
    print_tables(rows, device, seconds)
    return rows


def print_tables(rows: list[dict], device: torch.device, seconds: dict) -> None:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"\n{name} ({device}); {machine_line()}\n")
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["section"], []).append(r)
    print(markdown_table(
        ["model", "batch", "variant", "step (ms)", "peer", "ratio to peer"],
        [[r["model"], r["batch"], r["variant"], f"{1e3 * r['seconds']:.1f}", r["peer"],
          f"{r['ratio']:.2f}"] for r in by["train step"]],
    ))  # fmt: skip
    print()
    print(markdown_table(
        ["model", "samples", "variant", "seconds", "samples/s", "ratio to plain forward"],
        [[r["model"], r["samples"], r["variant"], f"{r['seconds']:.3f}",
          f"{r['samples_per_s']:.0f}", f"{r['ratio']:.2f}"] for r in by["capture"]],
    ))  # fmt: skip
    print()
    print(markdown_table(
        ["model", "samples", "route", "seconds", "peak memory (GiB)", "confusion"],
        [[r["model"], r["samples"], r["variant"], r.get("skipped") or f"{r['seconds']:.2f}",
          f"{r['peak_gib']:.2f}" if "peak_gib" in r else None,
          f"{r['confusion']:.4f}" if "confusion" in r else None]
         for r in by["per-sample gradients"]],
    ))  # fmt: skip
    print()
    print(markdown_table(
        ["model", "route", "episodes", "env steps", "env steps/s"],
        [[r["model"], r["variant"], r["episodes"], r["env_steps"], f"{r['steps_per_s']:.0f}"]
         for r in by["rollout"]],
    ))  # fmt: skip
    steps = ", ".join(
        f"{s.n_layers} x {s.d_model} x {s.n_heads} heads {1e3 * t:.1f} ms"
        for s, t in seconds.items()
    )
    print(f"\nreproduce --preset paper, projected (fp32 step times: {steps}):\n")
    print(markdown_table(
        ["GPUs", "runs", "projected wall time (h)", "sum over runs (h)"],
        [[r["gpus"], r["runs"], f"{r['hours']:.1f}", f"{r['run_hours']:.1f}"]
         for r in by["projection"]],
    ))  # fmt: skip


if __name__ == "__main__":
    main()
