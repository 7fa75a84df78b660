"""Helpers shared by the benchmark scripts: timing, peak memory, child processes, tables and a
description of the machine.

Timings are medians; peers and dtlens are timed in the same process, alternating, so that their
ratio holds even when other work shares the CPU. Peak memory is the resident set's high-water
mark above the RSS at the start, measured in a process of its own (`run_child`).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

MIB = 2**20
GIB = 2**30
REPO = Path(__file__).resolve().parents[1]


# -- threads -------------------------------------------------------------------------------------
def single_thread(n: int = 1) -> None:
    """Limit torch and the BLAS/OpenMP pools of this process to `n` threads (the benchmarks
    measure one core's work unless they are about threads)."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    threadpool_limits(n)


def thread_counts() -> dict[str, int]:
    """{'torch': ..., 'openblas': ..., ...}: the thread pools this process would use now."""
    from threadpoolctl import threadpool_info

    counts = {i["internal_api"]: i["num_threads"] for i in threadpool_info()}
    if "torch" in sys.modules:
        counts = {"torch": sys.modules["torch"].get_num_threads()} | counts
    return counts


# -- timing --------------------------------------------------------------------------------------
def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def median_time(fn: Callable[[], Any], repeats: int, warmup: int = 0) -> tuple[float, Any]:
    """The median seconds of `repeats` calls of `fn` (after `warmup` untimed ones) and the
    last result."""
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeats):
        seconds, result = timed(fn)
        times.append(seconds)
    return statistics.median(times), result


def alternate(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each of `fns`, timed round-robin (a, b, c, a, b, c, ...) so that a
    change in the machine's load touches every one alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn)[0])
    return {name: statistics.median(t) for name, t in times.items()}


# -- memory --------------------------------------------------------------------------------------
def proc_status(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def rss() -> int:
    """The resident set size of this process now, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def available_gib() -> float:
    """MemAvailable of the machine, in GiB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("inf")


class PeakRSS:
    """`with PeakRSS() as p: ...; p.peak` is the highest RSS above the RSS at entry, in bytes.

    By default it reads the kernel's high-water mark (VmHWM, reset at entry through
    /proc/self/clear_refs), which misses nothing; `sample_every` (seconds) instead samples the
    RSS from a thread, which sees the peak only to within that interval.
    """

    def __init__(self, sample_every: float | None = None):
        self.sample_every = sample_every
        self.peak = 0
        self._samples: list[int] = []
        self._stop = threading.Event()

    def __enter__(self) -> PeakRSS:
        if self.sample_every is None:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            self.base = proc_status("VmRSS")
        else:
            self.base = rss()
            self._samples = [self.base]
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.sample_every):
            self._samples.append(rss())

    def __exit__(self, *exc: object) -> None:
        if self.sample_every is None:
            self.peak = proc_status("VmHWM") - self.base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._samples + [rss()]) - self.base


# -- child processes -----------------------------------------------------------------------------
def run_child(argv: Sequence[str], timeout: float | None = None) -> dict:
    """Run `python *argv` and return the JSON object on the last line of its stdout (each case
    in a fresh process, so peak memory and caches are its own). A failure raises with the end
    of the child's stderr."""
    out = subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, timeout=timeout, check=False
    )
    if out.returncode != 0:
        tail = "\n".join(out.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"child {' '.join(argv)} exited with {out.returncode}:\n{tail}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- tables --------------------------------------------------------------------------------------
def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table; cells are str()-ed, None becomes '-'."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        lines.append("| " + " | ".join("-" if c is None else str(c) for c in row) + " |")
    return "\n".join(lines)


def ratio(a: float | None, b: float | None, digits: int = 2) -> str | None:
    """a / b formatted, or None when either is missing."""
    if a is None or b is None or b == 0:
        return None
    return f"{a / b:.{digits}f}"


# -- the machine ---------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """CPU model, cores, load, library versions and thread counts of this process."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "memory_gib": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / GIB, 1),
        "python": platform.python_version(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }
    if "torch" in sys.modules:
        info["torch"] = sys.modules["torch"].__version__
    if "numpy" in sys.modules:
        info["numpy"] = sys.modules["numpy"].__version__
    if "transformers" in sys.modules:
        info["transformers"] = sys.modules["transformers"].__version__
    info["threads"] = thread_counts()
    return info


def machine_line() -> str:
    """One line for a table's caption: CPU, cores, load, versions, threads."""
    m = machine()
    versions = ", ".join(f"{k} {m[k]}" for k in ("torch", "transformers", "numpy") if k in m)
    threads = ", ".join(f"{k} {v}" for k, v in m["threads"].items())
    load = "" if m["load_1m"] is None else f", load {m['load_1m']:.2f}"
    return f"{m['cpu']}, {m['cores']} CPU(s){load}; {versions}; threads: {threads}"
