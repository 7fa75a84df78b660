"""Download the wheels a bare CUDA machine needs to run dtlens (`make gpu-wheels`).

The GPU machine's image already holds torch, transformers, xarray, h5py, typer, einops,
jaxtyping, rich and scikit-learn (`IMAGE`), and reaches no package registry. This script walks
dtlens's runtime dependencies as installed here (the versions the tests pass with, extras such
as gymnasium[mujoco] included), leaves out the image's packages and everything they depend on,
and downloads the rest with `pip download --no-deps --only-binary=:all:` for CPython 3.12 on
manylinux x86-64 into OUT (an ignored folder; `benchmarks/gpu_check.sh` installs from it). It
fails when the wheels exceed `--limit-mib` (what a device call carries).

    .venv/bin/python benchmarks/gpu_wheels.py [--out gpu-wheels] [--limit-mib 64] [--list]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
#: What the GPU image holds (with their own dependencies).
IMAGE = ("torch", "transformers", "xarray", "h5py", "typer", "einops", "jaxtyping", "rich",
         "scikit-learn")  # fmt: skip
#: Left out to stay within what a device call carries: never imported by what dtlens runs
#: (transformer-lens's own tooling, mujoco's viewer), or `datasets` (with pyarrow, 53 MiB), which
#: transformer-lens imports but dtlens never calls: where the image lacks it, gpu_check.sh puts
#: an import-only stand-in on the path, whose functions raise.
UNUSED = ("wandb", "transformers-stream-generator", "datasets", "mujoco-studio",
          "mujoco-studio-wasm")  # fmt: skip
PLATFORM = ["--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", "--platform",
            "manylinux_2_28_x86_64", "--platform", "manylinux2014_x86_64"]  # fmt: skip


def requires(name: str, extras: frozenset[str] = frozenset()) -> list[tuple[str, frozenset]]:
    """(dependency, its extras) that the installed distribution `name` needs with `extras`."""
    out = []
    for text in metadata.requires(name) or []:
        req = Requirement(text)
        env = [{"extra": e} for e in extras] or [{"extra": ""}]
        if req.marker is None or any(req.marker.evaluate(e) for e in env):
            out.append((canonicalize_name(req.name), frozenset(req.extras)))
    return out


def closure(roots: list[tuple[str, frozenset]], skip: frozenset = frozenset()) -> set[str]:
    """Every installed distribution reachable from `roots` without passing through `skip` (not
    installed here: left out)."""
    seen: set[tuple[str, frozenset]] = set()
    todo = list(roots)
    while todo:
        item = todo.pop()
        if item in seen or item[0] in skip:
            continue
        seen.add(item)
        try:
            todo += requires(*item)
        except metadata.PackageNotFoundError:
            continue
    return {name for name, _ in seen if _installed(name)}


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def missing() -> list[str]:
    """`name==version` of each distribution dtlens needs that the image lacks."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    roots = [(canonicalize_name(r.name), frozenset(r.extras))
             for r in map(Requirement, project["dependencies"])]  # fmt: skip
    image = closure([(canonicalize_name(n), frozenset()) for n in IMAGE])
    unused = frozenset(canonicalize_name(n) for n in UNUSED)
    need = closure(roots, skip=unused) - image
    return sorted(f"{n}=={metadata.version(n)}" for n in need)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "gpu-wheels")
    parser.add_argument("--limit-mib", type=float, default=64.0)
    parser.add_argument("--list", action="store_true", help="print what is needed, no download")
    args = parser.parse_args(argv)
    need = missing()
    if args.list:
        print("\n".join(need))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           *PLATFORM, "-d", str(args.out), *need]  # fmt: skip
    subprocess.run(cmd, check=True)
    wheels = sorted(args.out.glob("*.whl"), key=lambda p: -p.stat().st_size)
    total = sum(p.stat().st_size for p in wheels) / 2**20
    print(f"{len(wheels)} wheels, {total:.1f} MiB in {args.out}")
    if total > args.limit_mib:
        top = ", ".join(f"{p.name} ({p.stat().st_size / 2**20:.1f})" for p in wheels[:5])
        print(f"over {args.limit_mib:.0f} MiB; the largest: {top}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
