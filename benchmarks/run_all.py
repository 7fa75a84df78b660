"""Run every `benchmarks/bench_*.py` and rewrite `benchmarks/RESULTS.md` (what `make bench` does).

Each benchmark's `main(args)` runs in a subprocess of its own (so one crash or timeout does not
stop the rest) with OMP_NUM_THREADS=1 (one torch and one BLAS thread), at the "suite" sizes in
SUITE, chosen so that the whole run takes under 10 minutes on a 2-core machine, but for the
diagnostics at paper size (`SUITE_TIMEOUTS`: tens of minutes on 2 cores). RESULTS.md gets
the date, the machine, a summary of the ratios to each peer, and one section per benchmark: the
command that reproduces it, its wall time, and the script's own caption and table. The file is
replaced atomically (written next to it, then renamed).

    .venv/bin/python benchmarks/run_all.py [--quick] [--only cka mi] [--out PATH]

`--quick` runs each script's smoke size and writes to a temporary file unless `--out` is given.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, cpu_model  # noqa: E402

HERE = Path(__file__).resolve().parent
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

#: script -> (title, suite arguments, quick arguments), in report order. A bench_*.py not listed
#: runs with no arguments (suite) or --quick.
SUITE: dict[str, tuple[str, list[str], list[str]]] = {
    "bench_train_step.py": ("Training step", [], ["--quick"]),
    "bench_rollout.py": ("Evaluation rollouts", [], ["--quick"]),
    "bench_capture.py": (
        "Capture of activations and attention to netCDF",
        ["--counts", "512", "2048"],
        ["--quick", "--counts", "64", "--repeats", "1"],
    ),
    "bench_cka.py": (
        "All-pairs layer CKA",
        ["--sizes", "1000", "3000", "10000", "--naive-budget", "60"],
        ["--quick", "--repeats", "1"],
    ),
    "bench_confusion.py": (
        "Gradient confusion (per-sample gradients)",
        ["--models", "12 x 384"],
        ["--quick", "--models", "2 x 64"],
    ),
    "bench_gradient_stats.py": (
        "Per-sample gradient statistics at GPT-2 size vs a loop of backward passes",
        [],
        ["--quick"],
    ),
    "bench_mi.py": ("Mutual information estimators", [], ["--quick"]),
    "bench_diagnostics_memory.py": (
        "Each diagnostic at GPT-2 and ImageGPT size: time and peak RSS",
        [
            "--sizes",
            "gpt2",
            "imagegpt",
            "--before",
            "a1ddc71",
            "--before-only",
            "capture",
            "cka",
            "mutual_info",
            "weights",
            "attention",
        ],
        ["--quick"],
    ),
    "bench_cli_startup.py": ("CLI start-up", [], ["--quick"]),
    "bench_gpu.py": ("GPU (CUDA): paper-size steps, capture, gradients, rollouts", [], ["--quick"]),
}


#: Seconds a suite benchmark may take where the default is too short (paper-size models).
SUITE_TIMEOUTS = {"bench_diagnostics_memory.py": 7200.0}


@dataclass
class Result:
    script: str
    title: str
    command: str
    seconds: float
    returncode: int | None  # None: timed out
    stdout: str
    stderr: str
    rows: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0


# -- running -------------------------------------------------------------------------------------
def child(script: str, rows_path: str, args: list[str]) -> None:
    """In the subprocess: import the script, call its main(args), dump the rows as JSON."""
    path = Path(script)
    spec = importlib.util.spec_from_file_location(f"_bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.argv = [str(path), *args]
    spec.loader.exec_module(module)
    rows = module.main(args)
    Path(rows_path).write_text(json.dumps(rows, default=str))


def thread_env(threads: int) -> dict[str, str]:
    return {name: str(threads) for name in THREAD_ENV}


def display_command(script: Path, args: list[str], threads: int) -> str:
    try:
        shown = script.relative_to(REPO)
    except ValueError:
        shown = script
    python = (
        ".venv/bin/python" if Path(sys.executable).parent.parent == REPO / ".venv" else "python"
    )
    return f"OMP_NUM_THREADS={threads} {python} {shlex.join([str(shown), *args])}"


def run_one(script: Path, title: str, args: list[str], threads: int, timeout: float) -> Result:
    command = display_command(script, args, threads)
    print(f"[run_all] {command}", file=sys.stderr, flush=True)
    env = os.environ | thread_env(threads)
    with tempfile.TemporaryDirectory() as tmp:
        rows_path = Path(tmp) / "rows.json"
        argv = [sys.executable, __file__, "--child", str(script), str(rows_path), *args]
        start = time.perf_counter()
        try:
            out = subprocess.run(
                argv, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO
            )
            code, stdout, stderr = out.returncode, out.stdout, out.stderr
        except subprocess.TimeoutExpired as e:
            code = None
            stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            stderr = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        seconds = time.perf_counter() - start
        rows = json.loads(rows_path.read_text()) if code == 0 and rows_path.exists() else []
    state = "ok" if code == 0 else ("timed out" if code is None else f"exit {code}")
    print(f"[run_all] {script.name}: {state} in {seconds:.0f} s", file=sys.stderr, flush=True)
    return Result(script.name, title, command, seconds, code, stdout, stderr, rows)


def discover(directory: Path, only: list[str] | None) -> list[Path]:
    """bench_*.py in `directory`, SUITE's order first; `only` filters by name (with or without
    the bench_ prefix and .py suffix)."""
    found = {p.name: p for p in sorted(directory.glob("bench_*.py"))}
    order = [n for n in SUITE if n in found] + [n for n in found if n not in SUITE]
    if only:
        wanted = {f"bench_{o.removeprefix('bench_').removesuffix('.py')}.py" for o in only}
        unknown = wanted - set(found)
        if unknown:
            raise SystemExit(f"run_all: no such benchmark: {', '.join(sorted(unknown))}")
        order = [n for n in order if n in wanted]
    return [found[n] for n in order]


# -- summaries -----------------------------------------------------------------------------------
def _train_step(rows: list[dict]) -> list[str]:
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        by = {r["variant"]: r for r in rows if r["model"] == model}
        r0 = next(iter(by.values()))
        parts = [
            f"{label} {by[key]['ratio']:.2f} (vs {by[key]['peer']})"
            for key, label in (
                ("dtlens", "no hooks"),
                ("dtlens hooked path (fast_path=False)", "hooked path without hooks"),
                ("dtlens + capture hooks", "with capture hooks"),
            )
            if key in by
        ]
        out.append(f"{model} (batch {r0['batch']}): dtlens / HF step time: " + "; ".join(parts))
    return out


def _rollout(rows: list[dict]) -> list[str]:
    ours = next(r for r in rows if r["route"].startswith("dtlens"))
    naive = next(r for r in rows if not r["route"].startswith("dtlens"))
    return [
        f"{ours['speedup']:.2f}x the env steps/s of the naive batch-1 loop "
        f"({ours['steps_per_s']:.0f} vs {naive['steps_per_s']:.0f}, {ours['env_steps']} steps); "
        f"returns equal to {ours['max_rel_return_diff']:.1e} relative"
    ]


def _capture(rows: list[dict]) -> list[str]:
    out = []
    for n in dict.fromkeys(r["samples"] for r in rows):
        by = {r["case"]: r for r in rows if r["samples"] == n}
        hf = by["HF peer"]
        parts = [
            f"{case} time {r['seconds'] / hf['seconds']:.2f}, peak RSS "
            f"{r['peak_mib'] / hf['peak_mib']:.2f}"
            for case, r in by.items()
            if case != "HF peer"
        ]
        out.append(f"{n} samples, / HF: " + "; ".join(parts))
    return out


def _cka(rows: list[dict]) -> list[str]:
    parts = [
        f"n={r['n']}: " + (f"{r['speedup']:.0f}x" if r["speedup"] else r["note"] or "-")
        for r in rows
    ]
    return ["speedup over naive numpy: " + "; ".join(parts)]


def _confusion(rows: list[dict]) -> list[str]:
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        by = {r["route"]: r for r in rows if r["model"] == model}
        gram, mat = by.get("Gram (dtlens)"), by.get("materialised")
        if gram is None or mat is None or "skipped" in mat or "seconds" not in gram:
            why = mat.get("skipped", "not run") if mat else "not run"
            out.append(f"{model}: materialised route {why}")
            continue
        out.append(
            f"{model}: materialised / Gram peak RSS {mat['peak_gib'] / gram['peak_gib']:.2f}, "
            f"time {mat['seconds'] / gram['seconds']:.2f}"
        )
    return out


def _gradient_stats(rows: list[dict]) -> list[str]:
    ours = rows[-1]
    return [
        f"{ours['model']}, {ours['samples']} windows all in the Gram: dtlens "
        f"{ours['seconds']:.1f} s, peak {ours['peak_gib']:.2f} GiB; norms equal to "
        f"{ours['norm_rel_diff']:.0e} relative, confusion to {ours['confusion_diff']:.0e}"
    ] + [
        f"{r['route']}: {r['speedup']:.2f}x dtlens's time, peak {r['peak_gib']:.2f} GiB"
        for r in rows[:-1]
    ]


def _mi(rows: list[dict]) -> list[str]:
    out = []
    for est in dict.fromkeys(r["estimator"] for r in rows):
        rel = [abs(r["error"]) for r in rows if r["estimator"] == est and r["relative"]]
        ind = [r["error"] for r in rows if r["estimator"] == est and not r["relative"]]
        text = f"{est}: max |relative error| {max(rel):.1%}" if rel else est
        if ind:
            text += f", independent case {ind[0]:+.3f} nats"
        out.append(text)
    return out


def _gpu(rows: list[dict]) -> list[str]:
    steps = [r for r in rows if r["section"] == "train step" and r["variant"].startswith("dtlens")]
    out = [f"{r['model']} {r['variant']} / HF step time {r['ratio']:.2f}" for r in steps]
    return out + [
        f"paper preset on {r['gpus']} GPU(s): {r['hours']:.1f} h projected"
        for r in rows
        if r["section"] == "projection"
    ]


def _diagnostics_memory(rows: list[dict]) -> list[str]:
    now = [r for r in rows if r["dtlens"] == "now" and "peak_gib" in r]
    top = max(now, key=lambda r: r["peak_gib"])
    over = [f"{r['diagnostic']} ({r['size']})" for r in now if r["peak_gib"] > 4.0]
    return [
        f"highest peak RSS {top['peak_gib']:.2f} GiB ({top['diagnostic']}, {top['size']}); "
        f"over 4 GiB: {', '.join(over) or 'none'}"
    ]


SUMMARIES: dict[str, Callable[[list[dict]], list[str]]] = {
    "bench_train_step.py": _train_step,
    "bench_rollout.py": _rollout,
    "bench_capture.py": _capture,
    "bench_cka.py": _cka,
    "bench_confusion.py": _confusion,
    "bench_gradient_stats.py": _gradient_stats,
    "bench_mi.py": _mi,
    "bench_diagnostics_memory.py": _diagnostics_memory,
    "bench_gpu.py": _gpu,
}


def summary(result: Result) -> list[str]:
    if not result.ok:
        return ["failed (see its section)"]
    fn = SUMMARIES.get(result.script)
    if fn is None or not result.rows:
        return ["see its section"]
    try:
        return fn(result.rows)
    except (KeyError, StopIteration, TypeError, ValueError, ZeroDivisionError) as e:
        return [f"(no summary: {type(e).__name__}: {e})"]


# -- the report ----------------------------------------------------------------------------------
def version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"


def render(
    results: list[Result], started: dt.datetime, total: float, loads: tuple[str, str], mode: str
) -> str:
    mem = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    lines = [
        "# Benchmark results",
        "",
        f"Generated by `benchmarks/run_all.py{' --quick' if mode == 'quick' else ''}` "
        f"(`make bench`) on {started:%Y-%m-%d %H:%M} UTC in {total:.0f} s. Do not edit by hand: "
        "rerun `make bench`.",
        "",
        f"- Machine: {cpu_model()}, {os.cpu_count()} CPU(s), {mem:.0f} GiB memory; load average "
        f"(1 / 5 / 15 min) {loads[0]} at the start, {loads[1]} at the end (other work shares the "
        "CPU, so absolute times drift; every ratio compares runs made in the same process or "
        "back to back, alternating where the script says so).",
        f"- Software: Python {sys.version.split()[0]}, torch {version('torch')}, transformers "
        f"{version('transformers')}, transformer-lens {version('transformer-lens')}, numpy "
        f"{version('numpy')}.",
        "- Threads: every benchmark process runs with "
        + ", ".join(f"{k}=1" for k in THREAD_ENV)
        + " (one torch thread, one BLAS thread); each script's caption repeats its thread pools.",
        "- Each section: the command that reproduces it (run_all calls the script's `main()` "
        "with these arguments in a subprocess of its own), its wall time, and the script's "
        "caption (sizes, repeats, what the peer is) and table.",
        "",
        "## Summary",
        "",
        "| benchmark | result |",
        "|---|---|",
    ]
    for r in results:
        cell = "<br>".join(line.replace("|", "\\|") for line in summary(r))
        lines.append(f"| {r.title} | {cell} |")
    for r in results:
        lines += ["", f"## {r.title} (`{r.script}`)", "", f"`{r.command}`", ""]
        state = "ok" if r.ok else ("TIMED OUT" if r.returncode is None else "FAILED")
        lines += [f"Wall time {r.seconds:.0f} s, {state}.", ""]
        body = r.stdout.strip()
        if body:
            lines += [body, ""]
        if not r.ok:
            tail = "\n".join(r.stderr.strip().splitlines()[-20:])
            lines += ["```", tail or "(no output on stderr)", "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> list[Result]:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(argv[1], argv[2], argv[3:])
        return []
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke sizes, for the test")
    parser.add_argument("--only", nargs="+", help="benchmark names, e.g. cka rollout")
    parser.add_argument("--out", type=Path, help="default benchmarks/RESULTS.md")
    parser.add_argument("--dir", type=Path, default=HERE, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help="OMP/MKL/OpenBLAS threads")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per benchmark")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "suite"
    out = args.out or (
        Path(tempfile.gettempdir()) / "dtlens-RESULTS-quick.md"
        if args.quick
        else HERE / "RESULTS.md"
    )
    timeout = args.timeout or (120.0 if args.quick else 360.0)
    started, start, load_start = dt.datetime.now(dt.UTC), time.perf_counter(), load()
    results = []
    for script in discover(args.dir, args.only):
        title, suite_args, quick_args = SUITE.get(script.name, (script.stem, [], ["--quick"]))
        run_args = quick_args if args.quick else suite_args
        seconds = (
            timeout if args.quick or args.timeout else SUITE_TIMEOUTS.get(script.name, timeout)
        )
        results.append(run_one(script, title, run_args, args.threads, seconds))
    total = time.perf_counter() - start
    write_atomic(out, render(results, started, total, (load_start, load()), mode))
    failed = [r.script for r in results if not r.ok]
    print(f"[run_all] wrote {out} in {total:.0f} s; failed: {failed or 'none'}", file=sys.stderr)
    return results


if __name__ == "__main__":
    sys.exit(1 if any(not r.ok for r in main()) else 0)
