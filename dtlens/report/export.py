"""The small result files a reproduction's report is rebuilt from, copied to another folder (for
example `results/laptop/`, committed): reproduce.json, budget.json, the peer DT's records, and
per run and study folder its metrics, config, diagnostics (netCDF) and figures; never
checkpoints or optimiser states. `write_report` on the copy gives the same report.md, byte for
byte."""

from __future__ import annotations

import shutil
from pathlib import Path

from dtlens.errors import DtlensError

#: Glob patterns, relative to a reproduction folder, of what the report reads.
SMALL_FILES = (
    "reproduce.json",
    "budget.json",
    "peer/*.json",
    "*/runs/*/config.json",
    "*/runs/*/metrics.nc",
    "*/runs/*/diagnostics/*.nc",
    "*/runs/*/figures/*.png",
    "*/diagnostics/*.nc",
    "*/figures/*.png",
)


def export_results(root: str | Path, dest: str | Path) -> list[Path]:
    """Copy `root`'s small result files to `dest` (same layout); returns the copies."""
    root, dest = Path(root), Path(dest)
    if not (root / "reproduce.json").is_file():
        raise DtlensError(f"{root}: not a reproduction folder (no reproduce.json)")
    if dest.resolve() == root.resolve():
        raise DtlensError(f"--export {dest}: the reproduction folder itself")
    copied = []
    for pattern in SMALL_FILES:
        for path in sorted(root.glob(pattern)):
            target = dest / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            copied.append(target)
    return copied
