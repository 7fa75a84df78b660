"""How long `dtlens --help` and a one-line user error take, against `python -c "import typer"`
(the floor any Typer CLI pays) measured in the same run.

    python benchmarks/bench_cli_startup.py [--quick] [--repeats 5]

Each command runs in a fresh process; the table gives the median wall time and the ratio to the
typer import. `dtlens` must answer within 1 s on this machine (issue: a CLI that starts at once).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, machine_line, markdown_table  # noqa: E402

DTLENS = str(Path(sys.executable).with_name("dtlens"))  # the console script of this venv
COMMANDS = {
    'python -c "import typer"': [sys.executable, "-c", "import typer"],
    "dtlens --help": [DTLENS, "--help"],
    "dtlens train --help": [DTLENS, "train", "--help"],
    "dtlens cka (bad argument)": [DTLENS, "cka", "/nonexistent-run"],
}


def wall(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=REPO, capture_output=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one repeat")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    rows = []
    for label, command in COMMANDS.items():
        wall(command)  # warm the file cache
        times = sorted(wall(command) for _ in range(repeats))
        rows.append({"command": label, "seconds": times[len(times) // 2]})
    floor = rows[0]["seconds"]
    print(f"\nCLI start-up, median of {repeats} fresh processes\n{machine_line()}\n")
    print(
        markdown_table(
            ["command", "wall time (s)", "ratio to import typer"],
            [[r["command"], f"{r['seconds']:.3f}", f"{r['seconds'] / floor:.1f}"] for r in rows],
        )
    )
    return rows


if __name__ == "__main__":
    main()
