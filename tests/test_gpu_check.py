"""`benchmarks/gpu_check.sh --rehearse`: the GPU check's every step end to end on the CPU at tiny
size, with its one summary file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


@pytest.mark.slow
def test_rehearsal_runs_every_step_and_writes_the_summary(tmp_path):
    env = os.environ | {"OUT": str(tmp_path), "PYTHON": sys.executable, "GPU_CHECK_SECONDS": "2400"}
    out = subprocess.run(
        [str(SCRIPT), "--rehearse"], capture_output=True, text=True, env=env, timeout=2700
    )
    summary = (tmp_path / "gpu-check-summary.md").read_text()
    assert out.returncode == 0, summary
    for step in ("install", "bench_gpu", "smoke", "cuda_tests"):
        assert f"## {step}: ok in" in summary
    assert "every step ok" in summary and "rehearsal on the CPU" in summary
    assert "dtlens fp32" in summary  # bench_gpu's table
    assert (tmp_path / "smoke-report.md").read_text().startswith("#")
    assert "3 passed" in (tmp_path / "cuda_tests.log").read_text()
