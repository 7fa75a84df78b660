"""Each diagnostic's time and peak memory on a run at the paper's sizes, on the 100-sample probe.

Runs are made from HF-format directories with random weights and the published configs
(`dtlens.model.synthetic.write_random_hf_model`: GPT-2 small 12 x 768 x 12 heads, ImageGPT-small
24 x 512 x 8 heads), fine-tuned for one step on the embedded Hopper data (K=20: 60 tokens; epochs
0 and 1, probe of 100 windows). Each diagnostic then runs as the CLI runs it (its registry
`compute(run)` with default options; `capture` is `capture_run` of epochs 0 and 1 with the default
hooks) in a process of its own; its peak is that process's resident-set high-water mark (VmHWM:
imports, the run's checkpoints and the work together), which is what a user's machine must hold.

The peer, measured in the same run: the same diagnostic with dtlens as committed at git revision
`--before REV` (`git archive`, read only; or the tree `--before-src DIR`), each in its own
process, on the same run; the table gives now / before. `--before-only` limits the peer to some
diagnostics (the suite leaves out the gradients: their old path needs ~10 GB at GPT-2 size).

    .venv/bin/python benchmarks/bench_diagnostics_memory.py [--quick] [--sizes gpt2 imagegpt]
        [--only cka gradients] [--before REV | --before-src DIR] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import GIB, REPO, machine_line, markdown_table, proc_status  # noqa: E402

DIAGNOSTICS = ("capture", "cka", "mutual_info", "weights", "gradients", "attention")
#: size name -> what `--init` gets: an HF architecture of `write_random_hf_model`, or a tiny
#: random backbone (layers, d_model, heads) for --quick.
SIZES = {"gpt2": "gpt2", "imagegpt": "imagegpt"}
QUICK_SIZES = {"tiny": (2, 32, 2)}
PROBE = 100
K = 20
LIMIT_GIB = 4.0  # the bound on every diagnostic at paper size


# -- in the child processes ---------------------------------------------------------------------
def setup(size: str, work: Path, label: str) -> Path:
    """The run of `size` in `work` made by the dtlens of `label` (once): epochs 0 and 1, probe of
    PROBE windows of K; each dtlens trains its own (run folders change between versions), from
    the same HF directory, data and seed."""
    from dtlens.model import BackboneConfig
    from dtlens.train.config import TrainConfig
    from dtlens.train.loop import train

    out = work / f"run-{size}-{label}"
    if (out / "config.json").is_file():
        return out
    init = {}
    if size in SIZES:
        hf = work / f"hf-{size}"
        if not (hf / "config.json").is_file():  # made by the dtlens of now, which runs first
            from dtlens.model.synthetic import write_random_hf_model

            write_random_hf_model(SIZES[size], hf, seed=0)
        init = {"init": str(hf)}
    else:
        layers, d, heads = QUICK_SIZES[size]
        init = {"size": BackboneConfig.sized(layers, d, heads)}
    cfg = TrainConfig(
        **init,
        dataset="mini/hopper-medium",
        context_len=K,
        epochs=1,
        steps_per_epoch=1,
        batch_size=4,
        warmup_steps=0,
        eval_episodes=0,
        probe_size=PROBE,
    )
    train(cfg, out, progress=False)
    return out


def measure(name: str, run_path: Path) -> dict:
    """Run one diagnostic on the run: seconds, peak RSS of this process, RSS before it."""
    from dtlens.capture import capture_run
    from dtlens.diagnostics.registry import DIAGNOSTICS as REGISTRY
    from dtlens.train.run import Run

    run = Run(run_path)
    base = proc_status("VmRSS")
    start = time.perf_counter()
    if name == "capture":
        capture_run(run, [0, -1])
    else:
        REGISTRY[name].compute(run)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_gib": proc_status("VmHWM") / GIB, "base_gib": base / GIB}


# -- the parent ---------------------------------------------------------------------------------
def child(argv: list[str], src: Path | None = None, threads: int | None = None) -> dict:
    """`python this_file *argv` with dtlens imported from `src` (default: this tree); the JSON
    object on its last stdout line."""
    env = dict(os.environ)
    if src is not None:
        env["DTLENS_BENCH_SRC"] = str(src)
    if threads:
        env |= {k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run(
        [sys.executable, __file__, *argv], capture_output=True, text=True, env=env, check=False
    )
    if out.returncode != 0:
        tail = "\n".join(out.stderr.strip().splitlines()[-15:])
        return {"error": tail.splitlines()[-1] if tail else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def source_at(rev: str, into: Path) -> Path:
    """The repository's tree at `rev`, unpacked into `into` (git archive: reads only)."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", rev, "dtlens"],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model (for the tests)")
    parser.add_argument("--sizes", nargs="+", help=f"of {', '.join(SIZES)} (default: all)")
    parser.add_argument("--only", nargs="+", choices=DIAGNOSTICS, help="diagnostics to run")
    parser.add_argument("--before", metavar="REV", help="peer: dtlens at git revision REV")
    parser.add_argument("--before-src", type=Path, help="peer: dtlens from this source tree")
    parser.add_argument("--before-only", nargs="+", choices=DIAGNOSTICS, help="peer for these")
    parser.add_argument("--work", type=Path, help="keep the HF dirs and runs here (reused)")
    parser.add_argument("--threads", type=int, default=None, help="OMP threads per child")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--setup", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child or args.setup:
        if src := os.environ.get("DTLENS_BENCH_SRC"):
            sys.path.insert(0, src)
        if args.setup:
            size, work, label = args.setup
            print(json.dumps({"run": str(setup(size, Path(work), label))}))
        else:
            print(json.dumps(measure(args.child[0], Path(args.child[1]))))
        return []
    sizes = args.sizes or (list(QUICK_SIZES) if args.quick else list(SIZES))
    names = args.only or DIAGNOSTICS
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        before = source_at(args.before, Path(tmp)) if args.before else args.before_src
        rows = []
        for size in sizes:
            runs = {}
            for label, src in {"now": None, "before": before}.items():
                if label == "now" or before:
                    made = child(["--setup", size, str(work), label], src, args.threads)
                    runs[label] = made  # {"run": path} or {"error": ...}
            for name in names:
                peer = before and name in (args.before_only or DIAGNOSTICS)
                sources = {"now": None} | ({"before": before} if peer else {})
                for label, src in sources.items():
                    row = {"size": size, "diagnostic": name, "dtlens": label}
                    if "run" in runs[label]:
                        row |= child(["--child", name, runs[label]["run"]], src, args.threads)
                    else:
                        row["error"] = f"making the run failed: {runs[label]['error']}"
                    print(row, file=sys.stderr, flush=True)
                    rows.append(row)
    print_table(rows, args.before or args.before_src)
    return rows


def print_table(rows: list[dict], before: str | Path | None) -> None:
    print(
        f"\neach diagnostic on a run at the paper's sizes (random-weight HF GPT-2 small 12 x 768 "
        f"x 12 heads, ImageGPT-small 24 x 512 x 8 heads), probe of {PROBE} windows of K={K} (60 "
        f"tokens), default options; each in its own process; peak = the process's VmHWM "
        f"(imports, checkpoints and work), base = its RSS before the diagnostic started"
        + (f"; peer 'before' = dtlens at {before}" if before else "")
        + f"\n{machine_line()}\n"
    )
    peer = {(r["size"], r["diagnostic"]): r for r in rows if r["dtlens"] == "before"}
    cells = []
    for r in rows:
        head = [r["size"], r["diagnostic"], r["dtlens"]]
        if "error" in r:
            cells.append([*head, f"failed: {r['error']}", "", "", "", ""])
            continue
        p = peer.get((r["size"], r["diagnostic"]))
        ok = p is not None and "error" not in p and r["dtlens"] == "now"
        over = " (over 4 GiB)" if r["peak_gib"] > LIMIT_GIB else ""
        cells.append([
            *head, f"{r['seconds']:.1f}", f"{r['peak_gib']:.2f}{over}", f"{r['base_gib']:.2f}",
            f"{r['peak_gib'] / p['peak_gib']:.2f}" if ok else "",
            f"{r['seconds'] / p['seconds']:.2f}" if ok else "",
        ])  # fmt: skip
    headers = ["size", "diagnostic", "dtlens", "time (s)", "peak RSS (GiB)", "base RSS (GiB)",
               "peak now / before", "time now / before"]  # fmt: skip
    print(markdown_table(headers, cells))


if __name__ == "__main__":
    main()
