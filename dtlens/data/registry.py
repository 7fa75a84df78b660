"""`load_dataset`: embedded `mini/...` ids (shipped files), D4RL files, Minari ids.

An embedded id is collected once from its `EmbeddedSpec` or `ReplaySpec` (`dtlens data collect
--id ID --update-manifest`) and shipped in `dtlens/assets/datasets/` with its sha256 in
`manifest.json`. Loading reads that file and checks the hash; it never collects, because the same
collection gives other numbers on another machine (MuJoCo and numpy builds differ in the last
bits). A derived id (`ConcatSpec`, D4RL's medium-expert) ships no file: it is built on load from
its verified parts and checked against the sha256 of its arrays recorded in the manifest.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dtlens.data.collect import (
    DEFAULT_NOISE,
    GZIP_LEVEL,
    behaviour_policy,
    collect_replay,
    collect_to_file,
    concatenate_episodes,
    policy_sha256,
)
from dtlens.data.d4rl import read_d4rl, write_d4rl
from dtlens.data.dataset import OfflineDataset
from dtlens.data.manifest import arrays_sha256, manifest_entry, read_manifest, update_manifest
from dtlens.data.minari_io import minari_data_dir, read_minari
from dtlens.errors import DtlensError
from dtlens.io import file_sha256
from dtlens.paths import DATASET_ASSETS, cache_dir

HDF5_SUFFIXES = (".hdf5", ".h5")
HELDOUT_SEED = 100_000
ASSET_DIR = DATASET_ASSETS  # the shipped files and their manifest


@dataclass(frozen=True)
class EmbeddedSpec:
    """How an embedded dataset is collected."""

    env_id: str
    quality: str
    transitions: int = 100_000
    seed: int = 0
    noise: float = DEFAULT_NOISE

    def record(self) -> dict[str, Any]:
        """The spec as the manifest stores it, with the sha256 of the policy's weights."""
        return asdict(self) | {"policy_sha256": policy_sha256(self.env_id, self.quality)}

    def collect(self, path: Path, progress: bool = False) -> Path:
        """Collect the dataset into the compressed D4RL file `path`."""
        return collect_to_file(
            path,
            self.env_id,
            self.quality,
            self.transitions,
            self.seed,
            self.noise,
            progress=progress,
        )


@dataclass(frozen=True)
class ReplaySpec:
    """An approximation of D4RL's medium-replay, NOT a learner's replay buffer.

    D4RL's medium-replay is the replay buffer of a SAC agent trained until it reaches the medium
    policy's level (a ~2 h run here). This one stands in for it with the committed medium policy:
    `stages` equal blocks collected in order, per step the medium policy's action (Gaussian noise
    std `noise[0]` -> `noise[1]`) with probability 0 -> 1 (linear over the stages), else a uniform
    random action (`collect.collect_replay`). Quality rises from random to medium across the
    buffer as in a replay buffer, but the intermediate behaviour is a mixture of two fixed
    policies, not the learner's intermediate policies.
    """

    env_id: str
    quality: str = "medium-replay"
    transitions: int = 100_000
    seed: int = 0
    stages: int = 10
    noise: tuple[float, float] = (0.5, 0.1)

    @property
    def description(self) -> str:
        return (
            f"approximate replay buffer, not a learner's: {self.stages} stages of "
            f"{self.transitions // self.stages:,} steps in order, per step the medium policy's "
            f"action (noise std {self.noise[0]} -> {self.noise[1]}) with probability 0 -> 1, "
            "else a uniform random action"
        )

    def record(self) -> dict[str, Any]:
        """The spec as the manifest stores it, with the sha256 of the medium policy's weights."""
        policy = {"policy_sha256": policy_sha256(self.env_id, "medium")}
        return asdict(self) | {"noise": list(self.noise)} | policy

    def collect(self, path: Path, progress: bool = False) -> Path:
        """Collect the approximate buffer into the compressed D4RL file `path`."""
        policy = behaviour_policy(self.env_id, "medium")
        arrays = collect_replay(
            self.env_id, policy, self.transitions, self.seed, self.stages, self.noise, progress
        )
        metadata = {
            "env_id": self.env_id,
            "policy": "embedded:medium mixed with uniform random",
            "quality": self.quality,
            "seed": self.seed,
            "stages": self.stages,
            "noise_start": self.noise[0],
            "noise_end": self.noise[1],
            "transitions": self.transitions,
            "collector": "dtlens.data.collect.collect_replay",
            "description": self.description,
        }
        return write_d4rl(path, arrays, metadata, compression=GZIP_LEVEL)


@dataclass(frozen=True)
class ConcatSpec:
    """D4RL's medium-expert construction: embedded datasets one after another (each part's
    unfinished last episode closed by a timeout), built on load, never shipped as a file."""

    parts: tuple[str, ...]

    @property
    def description(self) -> str:
        return f"{' then '.join(self.parts)}, concatenated (D4RL's medium-expert construction)"

    def record(self) -> dict[str, Any]:
        """The parts and the sha256 of their shipped files."""
        manifest = read_manifest(ASSET_DIR)
        return {
            "parts": list(self.parts),
            "parts_sha256": [manifest[p]["sha256"] for p in self.parts],
        }


EMBEDDED: dict[str, EmbeddedSpec | ReplaySpec] = {
    "mini/hopper-random": EmbeddedSpec("Hopper-v5", "random", noise=0.0),
    "mini/hopper-medium": EmbeddedSpec("Hopper-v5", "medium"),
    "mini/hopper-expert": EmbeddedSpec("Hopper-v5", "expert"),
    "mini/halfcheetah-medium": EmbeddedSpec("HalfCheetah-v5", "medium"),
    "mini/halfcheetah-expert": EmbeddedSpec("HalfCheetah-v5", "expert"),
    "mini/walker2d-medium": EmbeddedSpec("Walker2d-v5", "medium"),
    "mini/walker2d-expert": EmbeddedSpec("Walker2d-v5", "expert"),
    "mini/hopper-medium-replay": ReplaySpec("Hopper-v5"),
    # A run's `--heldout` windows: the same policy and noise, on reset seeds and a noise seed
    # no training collection uses (theirs are seed 0: episodes reset with seeds 0, 1, ...).
    "mini/hopper-medium-heldout": EmbeddedSpec("Hopper-v5", "medium", 20_000, HELDOUT_SEED),
    "mini/halfcheetah-medium-heldout": EmbeddedSpec(
        "HalfCheetah-v5", "medium", 20_000, HELDOUT_SEED
    ),
    "mini/walker2d-medium-heldout": EmbeddedSpec("Walker2d-v5", "medium", 20_000, HELDOUT_SEED),
}
DERIVED: dict[str, ConcatSpec] = {
    "mini/hopper-medium-expert": ConcatSpec(("mini/hopper-medium", "mini/hopper-expert")),
}


def embedded_spec(dataset_id: str) -> EmbeddedSpec | ReplaySpec:
    """The spec of an embedded id; one error line naming the known ids otherwise."""
    if dataset_id not in EMBEDDED:
        raise DtlensError(f"{dataset_id}: unknown embedded dataset (known: {', '.join(EMBEDDED)})")
    return EMBEDDED[dataset_id]


def shipped_file(dataset_id: str) -> Path:
    """Where the shipped file of an embedded id lives: `ASSET_DIR/<name>.hdf5`."""
    embedded_spec(dataset_id)
    return ASSET_DIR / f"{dataset_id.split('/', 1)[1]}.hdf5"


def rebuild_path(dataset_id: str) -> Path:
    """Default output of a local rebuild: `$DTLENS_CACHE/datasets/mini-<name>.hdf5`."""
    embedded_spec(dataset_id)
    return cache_dir("datasets") / f"{dataset_id.replace('/', '-')}.hdf5"


def verified_shipped(dataset_id: str) -> tuple[Path, str]:
    """The shipped file of an embedded id and its sha256, checked against the manifest."""
    embedded_spec(dataset_id)
    entry = read_manifest(ASSET_DIR).get(dataset_id)
    if entry is None:
        raise DtlensError(
            f"{dataset_id}: not shipped (no entry in {ASSET_DIR / 'manifest.json'}): build it with "
            f"`dtlens data collect --id {dataset_id} --update-manifest`"
        )
    path = ASSET_DIR / entry["file"]
    restore = f"restore it with `git checkout -- {path}` or reinstall dtlens"
    if not path.is_file():
        raise DtlensError(f"{path}: shipped file of {dataset_id} is missing: {restore}")
    sha = file_sha256(path)
    if sha != entry["sha256"]:
        raise DtlensError(
            f"{path}: shipped file of {dataset_id} is corrupt (sha256 {sha[:12]}..., manifest "
            f"says {entry['sha256'][:12]}...): {restore}"
        )
    return path, sha


def load_dataset(id_or_path: str | os.PathLike, env_id: str | None = None) -> OfflineDataset:
    """An `OfflineDataset` from an embedded id (`mini/hopper-medium`), a D4RL HDF5 file
    (.hdf5/.h5), or a local Minari dataset (id or folder). `env_id` checks the dims.

    An embedded id's metadata carries the verified `sha256` of its shipped file."""
    key = str(id_or_path)
    if key in DERIVED:
        dataset = verified_derived(key)
        if env_id is not None:
            dataset.check_env(env_id)
        return dataset
    if key.startswith("mini/"):
        path, sha = verified_shipped(key)
        dataset = read_d4rl(path, env_id)
        dataset.name = key
        dataset.metadata["sha256"] = sha
        return dataset
    path = Path(key)
    if path.suffix.lower() in HDF5_SUFFIXES or path.is_file():
        return read_d4rl(path, env_id)
    if minari_data_dir(key) is not None:
        return read_minari(key, env_id)
    raise DtlensError(
        f"{key}: file not found (not an embedded id like {next(iter(EMBEDDED))}, "
        "a D4RL .hdf5 file, or a local Minari dataset)"
    )


def build_derived(dataset_id: str) -> OfflineDataset:
    """The derived id's dataset built from its verified parts; metadata: description, parts and
    the `sha256` of its arrays (`arrays_sha256`)."""
    spec = DERIVED[dataset_id]
    parts = [load_dataset(part) for part in spec.parts]
    dataset = OfflineDataset.from_arrays(
        concatenate_episodes([part.arrays() for part in parts]),
        env_id=parts[0].env_id,
        name=dataset_id,
        metadata={"description": spec.description, "parts": list(spec.parts)},
    )
    dataset.metadata["sha256"] = arrays_sha256(dataset.arrays())
    return dataset


def verified_derived(dataset_id: str) -> OfflineDataset:
    """`build_derived`, checked against the sha256 of the arrays recorded in the manifest."""
    entry = read_manifest(ASSET_DIR).get(dataset_id)
    if entry is None:
        raise DtlensError(
            f"{dataset_id}: not recorded (no entry in {ASSET_DIR / 'manifest.json'}): record it "
            f"with `dtlens data collect --id {dataset_id} --update-manifest`"
        )
    dataset = build_derived(dataset_id)
    sha = dataset.metadata["sha256"]
    if sha != entry["sha256"]:
        raise DtlensError(
            f"{dataset_id}: built from {', '.join(DERIVED[dataset_id].parts)}, its arrays have "
            f"sha256 {sha[:12]}..., the manifest says {entry['sha256'][:12]}...: reinstall dtlens"
        )
    return dataset


def record_derived(
    dataset_id: str, out: str | os.PathLike | None = None
) -> tuple[Path | None, str]:
    """Build a derived id, record its manifest entry (arrays' sha256, parts, stats) and write it to
    the D4RL file `out` if given. Returns `out` and one line on the hash."""
    dataset = build_derived(dataset_id)
    sha = dataset.metadata["sha256"]
    old = read_manifest(ASSET_DIR).get(dataset_id, {}).get("sha256")
    entry = {"sha256": sha, "spec": DERIVED[dataset_id].record(), "stats": dataset.stats()}
    update_manifest(ASSET_DIR, dataset_id, entry)
    if out is not None:
        write_d4rl(out, dataset, {"description": dataset.metadata["description"]}, GZIP_LEVEL)
    if sha == old:
        verdict = "the same as the recorded hash"
    else:
        verdict = f"replaces the recorded hash {old}" if old else "no hash was recorded before"
    return Path(out) if out else None, f"arrays sha256 {sha}: {verdict}"


def compare_to_shipped(dataset_id: str, path: Path) -> str:
    """One line: whether the file `path` holds the shipped bytes of `dataset_id`."""
    sha = file_sha256(path)
    entry = read_manifest(ASSET_DIR).get(dataset_id)
    if entry is None:
        return f"sha256 {sha}: nothing shipped for {dataset_id} to compare with"
    if entry["spec"] != embedded_spec(dataset_id).record():
        return f"sha256 {sha}: not comparable, the shipped file has another spec ({entry['spec']})"
    if sha == entry["sha256"]:
        return f"sha256 {sha}: identical to the shipped bytes"
    return (
        f"sha256 {sha}: differs from the shipped hash {entry['sha256']}: this machine's "
        "MuJoCo/numpy give other numbers; the shipped file stays the reference"
    )


def rebuild_embedded(
    dataset_id: str,
    out: str | os.PathLike | None = None,
    ship: bool = False,
    progress: bool = False,
) -> tuple[Path, str]:
    """Collect `dataset_id` from its spec and compare it with the shipped bytes.

    Writes `out` (default: `rebuild_path`; with `ship`, the shipped file, whose manifest entry
    is then updated). Returns the path and `compare_to_shipped`'s line (against the old entry).
    """
    spec = embedded_spec(dataset_id)
    shipped = shipped_file(dataset_id)
    path = Path(out) if out is not None else shipped if ship else rebuild_path(dataset_id)
    if ship and path.resolve() != shipped.resolve():
        raise DtlensError(f"--update-manifest refreshes the shipped file {shipped}, not {path}")
    if not ship and path.resolve() == shipped.resolve():
        raise DtlensError(f"{path} is the shipped file of {dataset_id}: add --update-manifest")
    spec.collect(path, progress)
    verdict = compare_to_shipped(dataset_id, path)
    if ship:
        update_manifest(ASSET_DIR, dataset_id, manifest_entry(path, spec.record(), read_d4rl(path)))
    return path, verdict
