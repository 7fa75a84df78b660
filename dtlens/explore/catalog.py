"""What an explorer serves: the run folders under one folder (a run, a study or a reproduction),
each known by an id, its path relative to that folder. A request names a run by its id only: ids
are looked up, never joined to a path, so nothing outside the served folder can be reached.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from dtlens.errors import DtlensError
from dtlens.train.run import Run

#: How deep below the served folder runs are looked for (a reproduction's are at DIR/task/runs/RUN).
MAX_DEPTH = 4


class Refused(DtlensError):
    """A request for something outside the served folders."""


def check_id(value: str) -> str:
    """`value` if it can name something inside the served folder; Refused for an absolute path,
    a `..` part, a backslash or a NUL (whether or not such a thing exists)."""
    if value.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", value) or "\\" in value:
        raise Refused(f"refused: {value!r} is not a path inside the served folder")
    if "\0" in value or ".." in value.split("/"):
        raise Refused(f"refused: {value!r} leaves the served folder")
    return value


@dataclass(frozen=True)
class Entry:
    """One run of the catalog: `group` is its condition (its name without the seed)."""

    id: str
    name: str
    group: str
    seed: int
    init: str
    context_len: int

    def summary(self, run: Run) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "group": self.group,
            "seed": self.seed,
            "init": self.init,
            "context_len": self.context_len,
            "epochs": run.epochs(),
        }


class Catalog:
    """The runs under `root`, rescanned on `refresh()` (a reproduction still running adds runs;
    a run folder appears only once its first epoch is complete)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise DtlensError(f"{root}: not a folder")
        self.entries: dict[str, Entry] = {}
        self.refresh()
        if not self.entries:
            raise DtlensError(
                f"{root}: no dtlens run in it (no config.json up to {MAX_DEPTH} folders down)"
            )

    def refresh(self) -> None:
        found = {}
        for path in _run_folders(self.root):
            rel = path.relative_to(self.root).as_posix()
            try:
                t = Run(path).train_config
            except (DtlensError, KeyError, TypeError, ValueError):
                continue  # a folder with a config.json that is not a run's
            group = re.sub(rf"-s{t.seed}(?=-|$)", "", path.name)
            if rel != ".":
                group = f"{Path(rel).parent.as_posix()}/{group}"
            found[rel] = Entry(rel, path.name, group, t.seed, t.init, t.context_len)
        self.entries = dict(sorted(found.items()))

    def run(self, run_id: str) -> Run:
        check_id(run_id)
        if run_id not in self.entries:
            self.refresh()
        if run_id not in self.entries:
            raise KeyError(f"no run {run_id!r} in {self.root}")
        return Run(self.root / run_id)

    def reproduction(self) -> Path | None:
        """The served folder if it holds a reproduction (`reproduce.json`)."""
        return self.root if (self.root / "reproduce.json").is_file() else None


def _run_folders(root: Path) -> list[Path]:
    """Folders holding a config.json, at most MAX_DEPTH below `root`; hidden folders (a run
    being built, `.NAME.partial-PID`) and folders inside a run are skipped."""
    out = []
    for folder, dirs, files in os.walk(root):
        depth = len(Path(folder).relative_to(root).parts)
        if "config.json" in files:
            out.append(Path(folder))
            dirs[:] = []
            continue
        dirs[:] = [] if depth >= MAX_DEPTH else sorted(d for d in dirs if not d.startswith("."))
    return out
