"""Capture speed and peak memory: dtlens (streamed and in memory) vs HF DecisionTransformerModel.

The peer is HF `DecisionTransformerModel(output_hidden_states=True, output_attentions=True)` of
the same size and weights (dtlens's model is converted from it), its hidden states and attentions
converted by hand into the same xarray layout and written to netCDF. Each case runs in its own
process; peak memory is the highest RSS above the RSS before the capture (sampled every 2 ms),
after a warm-up of both on two samples.

    .venv/bin/python benchmarks/bench_capture.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import MIB, PeakRSS, machine_line, markdown_table, run_child  # noqa: E402
from dtlens import DecisionTransformer  # noqa: E402
from dtlens.capture import capture, capture_to_netcdf, save_capture  # noqa: E402
from dtlens.data.windows import Batch  # noqa: E402
from dtlens.model.dt import TOKEN_TYPES  # noqa: E402

SIZE = dict(state_dim=11, act_dim=3, hidden_size=128, n_layer=3, n_head=4, n_inner=512)
K = 20
HOOKS = ["resid_post", "pattern"]


def hf_model():
    from transformers import DecisionTransformerConfig, DecisionTransformerModel

    torch.manual_seed(0)
    cfg = DecisionTransformerConfig(
        **SIZE, max_ep_len=1000, n_positions=1024, activation_function="gelu_new"
    )
    cfg._attn_implementation = "eager"  # sdpa returns no attention weights
    return DecisionTransformerModel(cfg).eval()


def make_batch(n: int, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, K, dtype=torch.long)
    pad = torch.randint(0, K, (n,), generator=g) * (torch.rand(n, generator=g) < 0.2)
    mask[torch.arange(K)[None, :] < pad[:, None]] = 0
    return Batch(
        states=torch.randn(n, K, SIZE["state_dim"], generator=g),
        actions=torch.rand(n, K, SIZE["act_dim"], generator=g) * 2 - 1,
        returns_to_go=torch.randn(n, K, 1, generator=g),
        timesteps=torch.randint(0, 1000, (n, K), generator=g),
        attention_mask=mask,
    )


@torch.inference_mode()
def hf_capture(hf, batch: Batch, batch_size: int) -> xr.Dataset:
    """The peer: HF hidden states and attentions, converted by hand to the dtlens layout."""
    resid, pattern = [], []
    for i in range(0, len(batch), batch_size):
        b = batch.index(slice(i, i + batch_size))
        out = hf(
            states=b.states,
            actions=b.actions,
            rewards=None,
            returns_to_go=b.returns_to_go,
            timesteps=b.timesteps,
            attention_mask=b.attention_mask,
            output_hidden_states=True,
            output_attentions=True,
        )
        # hidden_states: embeddings, then each block's output (the last one after ln_f).
        resid.append(torch.stack(out.hidden_states[1:], dim=1).float().numpy())
        pattern.append(torch.stack(out.attentions, dim=1).float().numpy())
    position = np.arange(3 * K)
    return xr.Dataset(
        {
            "resid_post": (("sample", "layer", "position", "d_model"), np.concatenate(resid)),
            "pattern": (("sample", "layer", "head", "query", "key"), np.concatenate(pattern)),
            "valid": (("sample", "position"), batch.attention_mask.bool().repeat_interleave(3, 1)),
            "timesteps": (("sample", "step"), batch.timesteps.numpy()),
        },
        coords={
            "sample": np.arange(len(batch)),
            "layer": np.arange(SIZE["n_layer"]),
            "position": position,
            "token_type": ("position", np.array(TOKEN_TYPES)[position % 3]),
            "timestep": ("position", position // 3),
            "query": position,
            "key": position,
        },
    )


def measure(case: str, n: int, chunk: int, repeats: int) -> dict:
    """Run one case `repeats` times in this process: median seconds and peak extra RSS; every
    case runs `chunk` samples per forward pass."""
    hf = hf_model()
    dt = DecisionTransformer.from_hf(hf).eval()
    batch = make_batch(n)
    run = {
        "dtlens stream": lambda p: capture_to_netcdf(dt, batch, p, HOOKS, chunk, chunk),
        "dtlens memory": lambda p: save_capture(capture(dt, batch, HOOKS, chunk), p),
        "HF peer": lambda p: hf_capture(hf, batch, chunk).to_netcdf(p, engine="netcdf4"),
    }[case]
    with tempfile.TemporaryDirectory() as tmp:  # warm-up: lazy imports, thread pools, caches
        capture(dt, make_batch(2), HOOKS)
        hf_capture(hf, make_batch(2), chunk).to_netcdf(Path(tmp) / "warm.nc", engine="netcdf4")
    times = []
    with PeakRSS(sample_every=0.002) as peak, tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            t0 = time.perf_counter()
            run(Path(tmp) / f"{r}.nc")
            times.append(time.perf_counter() - t0)
        size = (Path(tmp) / "0.nc").stat().st_size
    return {
        "case": case,
        "samples": n,
        "seconds": statistics.median(times),
        "peak_mib": peak.peak / MIB,
        "file_mib": size / MIB,
    }


def check_agreement() -> None:
    """dtlens and the peer capture the same numbers on valid positions (the peer's last hidden
    state has ln_f applied, so the last layer is left out)."""
    hf = hf_model()
    dt = DecisionTransformer.from_hf(hf).eval()
    batch = make_batch(16, seed=1)
    ours, theirs = capture(dt, batch, HOOKS), hf_capture(hf, batch, 8)
    valid = ours["valid"].values
    q = valid[:, None, :, None]  # (sample, layer, position, d_model)
    a, b = ours["resid_post"].values[:, :-1], theirs["resid_post"].values[:, :-1]
    np.testing.assert_allclose(np.where(q, a, 0), np.where(q, b, 0), atol=1e-4, rtol=0)
    qk = valid[:, None, None, :, None] & valid[:, None, None, None, :]
    pa, pb = ours["pattern"].values, theirs["pattern"].values
    np.testing.assert_allclose(np.where(qk, pa, 0), np.where(qk, pb, 0), atol=1e-5, rtol=0)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="128 and 512 samples, 2 repeats")
    parser.add_argument("--counts", type=int, nargs="+", help="sample counts (default 512 4096)")
    parser.add_argument("--repeats", type=int, help="default 3 (2 with --quick)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)  # case n chunk repeats
    args = parser.parse_args(argv)
    if args.child:
        case, *sizes = args.child
        print(json.dumps(measure(case, *map(int, sizes))))
        return []
    check_agreement()
    counts, chunk, repeats = ((128, 512), 64, 2) if args.quick else ((512, 4096), 256, 3)
    counts, repeats = args.counts or counts, args.repeats or repeats
    rows = []
    for n in counts:
        for case in ("dtlens stream", "dtlens memory", "HF peer"):
            rows.append(run_child([__file__, "--child", case, str(n), str(chunk), str(repeats)]))
    print_table(rows, chunk, repeats)
    return rows


def print_table(rows: list[dict], chunk: int, repeats: int) -> None:
    peer = {r["samples"]: r for r in rows if r["case"] == "HF peer"}
    print(
        f"\ncapture of {HOOKS} (all {SIZE['n_layer']} blocks), d={SIZE['hidden_size']}, "
        f"{SIZE['n_head']} heads, K={K}; {chunk} samples per forward (and per streamed chunk); "
        f"median of {repeats}; each case in its own process\n{machine_line()}\n"
    )
    cells = []
    for r in rows:
        p = peer[r["samples"]]
        cells.append([
            r["case"], r["samples"], f"{r['seconds']:.2f}", f"{r['seconds'] / p['seconds']:.2f}",
            f"{r['peak_mib']:.0f}", f"{r['peak_mib'] / p['peak_mib']:.2f}", f"{r['file_mib']:.0f}",
        ])  # fmt: skip
    headers = ["case", "samples", "time (s)", "time / HF", "peak RSS above start (MiB)",
               "peak / HF", "file (MiB)"]  # fmt: skip
    print(markdown_table(headers, cells))


if __name__ == "__main__":
    main()
