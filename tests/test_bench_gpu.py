"""`benchmarks/bench_gpu.py`: without CUDA it says so and exits 0; its code path runs end to end
on the CPU at its smallest size (`--device cpu --quick`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_no_cuda_device_exits_zero():
    out = subprocess.run([sys.executable, str(BENCH)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "no CUDA device" in out.stdout


@pytest.mark.slow
def test_code_path_on_cpu():
    from benchmarks import bench_gpu

    rows = bench_gpu.main(["--quick", "--device", "cpu", "--gpus", "1", "8"])
    by = {}
    for r in rows:
        by.setdefault(r["section"], []).append(r)
    assert {r["variant"] for r in by["train step"]} == {
        "dtlens fp32", "HF fp32", "dtlens bf16", "HF bf16"
    }  # fmt: skip
    assert all(r["seconds"] > 0 for r in by["train step"] + by["capture"] + by["rollout"])
    gram, materialised = by["per-sample gradients"]
    assert gram["confusion"] == pytest.approx(materialised["confusion"], abs=1e-5)
    one, eight = by["projection"]
    assert one["runs"] == eight["runs"] > 0
    assert one["hours"] == pytest.approx(one["run_hours"])  # one GPU runs everything in turn
    assert one["hours"] / 8 <= eight["hours"] < one["hours"]
