"""The data behind each view of the explorer, as JSON-ready dicts.

Study views (Table 1, learning curves) read `metrics.nc` of every run. Run views read a run's
saved results (`RUN/diagnostics/NAME.nc`) and compute what is missing from its checkpoints, saving
it beside the others: `NAME.nc` for the last epoch (what `reproduce` writes), `NAME-epoch-NNNN.nc`
for another. The attention of a probe window is computed in memory, nothing is written.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from dtlens.capture.activations import capture
from dtlens.diagnostics.attention import attention_distance
from dtlens.diagnostics.claims import TABLE1
from dtlens.diagnostics.contract import Diagnostic
from dtlens.diagnostics.curves import last_finite, run_curves
from dtlens.diagnostics.registry import DIAGNOSTICS
from dtlens.errors import DtlensError
from dtlens.explore.catalog import Catalog
from dtlens.explore.jobs import Progress, file_lock
from dtlens.interp.analyses import patching
from dtlens.interp.inputs import token_labels
from dtlens.interp.registry import INTERP
from dtlens.io import load_json, open_netcdf
from dtlens.report.report import ROLES, Study
from dtlens.train.run import Run

#: Probe windows the attention view offers (the first of the run's probe batch).
ATTENTION_WINDOWS = 8

#: Run views computed on demand through a Diagnostic, by view name.
RUN_VIEWS: dict[str, Diagnostic] = {
    "attribution": INTERP["attribution"],
    "lens": INTERP["action_lens"],
    "patching": patching.DIAGNOSTIC,
    "cka": DIAGNOSTICS["cka"],
    "gradients": DIAGNOSTICS["gradients"],
}

#: The file another issue's `dtlens ablation RUN` writes: score(component, episode), ...
ABLATION = "ablation"


def jsonable(x: Any) -> Any:
    """`x` with numpy values as Python ones and non-finite floats as None (JSON has no NaN)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.generic):
        return jsonable(x.item())
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    return x


def _round(a: np.ndarray | xr.DataArray, digits: int = 4) -> list:
    return np.round(np.asarray(a, dtype=np.float64), digits).tolist()


# --- study views ------------------------------------------------------------------------------


def _mean_std(values: list[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    mean = float(v.mean()) if v.size else float("nan")
    return mean, float(v.std(ddof=1)) if v.size > 1 else float("nan")


def table1(catalog: Catalog) -> dict:
    """Final normalized score per condition over seeds; for a reproduction, Table 1 by role
    beside the paper's."""
    tables = []
    if (root := catalog.reproduction()) is not None:
        meta = load_json(root / "reproduce.json")
        for label, roles in meta.get("roles", {}).items():
            study = Study(root, label, roles, meta.get("inits", {}))
            rows = []
            for who in ROLES:
                scores = [study.final_score(study.run_dir("main", who, s))[0] for s in study.seeds]
                paper = TABLE1.get(label, {}).get(who, (None, None))
                rows.append([who, *_mean_std(scores), scores, *paper])
            tables.append(
                {
                    "kind": "table1",
                    "title": f"{label}: normalized score, K=20, last epoch (Table 1)",
                    "header": ["init", "mean", "std", "per seed", "paper mean", "paper std"],
                    "rows": rows,
                    "seeds": study.seeds,
                }
            )
    by_group: dict[str, list] = defaultdict(list)
    for entry in catalog.entries.values():
        curves = run_curves(Run(catalog.root / entry.id))
        score = curves["score_mean"].values if "score_mean" in curves else np.array([np.nan])
        error = curves["action_error"].values if "action_error" in curves else np.array([np.nan])
        by_group[entry.group].append((entry.seed, last_finite(score), last_finite(error)))
    rows = []
    for group, runs in sorted(by_group.items()):
        runs.sort()
        rows.append(
            [
                group,
                [s for s, _, _ in runs],
                *_mean_std([x for _, x, _ in runs]),
                *_mean_std([x for _, _, x in runs]),
            ]
        )
    tables.append(
        {
            "kind": "conditions",
            "title": "every condition: last epoch, mean and std over seeds",
            "header": ["condition", "seeds", "score", "std", "action MSE", "std"],
            "rows": rows,
        }
    )
    return {"tables": tables}


def curves(catalog: Catalog) -> dict:
    """Per condition and seed: score and action error per epoch, loss per step."""
    groups: dict[str, list] = defaultdict(list)
    for entry in catalog.entries.values():
        ds = run_curves(Run(catalog.root / entry.id))
        series = {"seed": entry.seed, "run": entry.id}
        for name in ("score_mean", "action_error"):
            if name in ds:
                series[name] = {"x": ds["epoch"].values, "y": ds[name].values}
        if "loss" in ds:
            series["loss"] = {"x": ds["step"].values, "y": ds["loss"].values}
        groups[entry.group].append(series)
    return {"groups": {g: sorted(s, key=lambda x: x["seed"]) for g, s in sorted(groups.items())}}


# --- run views --------------------------------------------------------------------------------


def attention(run: Run, epoch: int, windows: int = ATTENTION_WINDOWS) -> dict:
    """Every head's pattern on the first `windows` probe windows, the token labels and each
    head's attention distance (tokens, mean over valid queries)."""
    batch = run.windows(min(windows, len(run.probe_batch())))
    cap = capture(run.load_model(epoch), batch, ["pattern"])
    pattern, valid = cap["pattern"].values, cap["valid"].values  # (w, layer, head, q, k), (w, q)
    distance = attention_distance(pattern, query_mask=valid[:, None])  # (w, layer, head)
    return {
        "labels": token_labels(batch),
        "patterns": pattern,
        "distance": distance,
    }


def attention_window(data: dict, window: int) -> dict:
    if not 0 <= window < len(data["labels"]):
        raise DtlensError(f"window {window} out of range (0..{len(data['labels']) - 1})")
    return {
        "windows": len(data["labels"]),
        "window": window,
        "labels": data["labels"][window],
        "patterns": _round(data["patterns"][window], 3),
        "distance": _round(data["distance"][window], 3),
        "distance_mean": _round(np.nanmean(data["distance"], axis=0), 3),
    }


def result_stem(run: Run, name: str, epoch: int) -> str:
    return name if epoch == run.last_epoch() else f"{name}-epoch-{epoch:04d}"


def _saved(path: Path, epoch: int) -> xr.Dataset | None:
    """The result at `path` if it is of `epoch` (CKA: between epoch 0 and `epoch`)."""
    if not path.is_file():
        return None
    with open_netcdf(path) as ds:
        attrs = ds.attrs
        if "epoch_b" in attrs:
            ok = int(attrs["epoch_a"]) == 0 and int(attrs["epoch_b"]) == epoch
        else:
            ok = int(attrs.get("epoch", -1)) == epoch
        return ds.load() if ok else None


def run_result(view: str, run: Run, epoch: int, progress: Progress) -> xr.Dataset:
    """The saved result of `view` at `epoch`, computed from the checkpoint when missing."""
    diag = RUN_VIEWS[view]
    stem = result_stem(run, diag.name, epoch)
    path = diag.nc_path(run.path, stem)
    if (ds := _saved(path, epoch)) is not None:
        return ds
    with file_lock(path, progress):
        if (ds := _saved(path, epoch)) is not None:  # another explorer wrote it meanwhile
            return ds
        progress(f"computing {diag.name} of {run.name}, epoch {epoch} (saved as {path.name})")
        options = {"epochs": (0, epoch)} if view == "cka" else {"epoch": epoch}
        return diag.write(run, stem=stem, **options).ds


def describe(view: str, ds: xr.Dataset) -> dict:
    """What the page draws of a run view's result."""
    return DESCRIBE[view](ds)


def _attribution(ds: xr.Dataset) -> dict:
    size = abs(ds["contribution"])
    return {
        "component": ds["component"].values,
        "component_type": ds["component_type"].values,
        "mean_abs": _round(size.mean(("sample", "action_dim"))),
        "mean": _round(ds["contribution"].mean("sample").transpose("component", "action_dim")),
        "share": _round((size / size.sum("component")).mean(("sample", "action_dim"))),
        "samples": ds.sizes["sample"],
    }


def _lens(ds: xr.Dataset) -> dict:
    return {
        "layer": ds["layer"].values,
        "error": _round(ds["error"]),
        "action": _round(ds["action"].isel(sample=slice(0, ATTENTION_WINDOWS))),
        "target": _round(ds["target"].isel(sample=slice(0, ATTENTION_WINDOWS))),
    }


def _patching(ds: xr.Dataset) -> dict:
    return {
        "site": patching.labels(ds),
        "hook": ds["hook"].values,
        "layer": ds["layer"].values,
        "head": ds["head"].values,
        "recovered": _round(ds["recovered"]),
        "corrupted": ds.attrs.get("corrupted", ""),
        "donor": ds.attrs.get("donor", ""),
    }


def _cka(ds: xr.Dataset) -> dict:
    return {
        "variant": ds["variant"].values,
        "token_type": ds["token_type"].values,
        "layer_a": ds["layer_a"].values,
        "layer_b": ds["layer_b"].values,
        "cka": _round(ds["cka"].sel(variant=["last", "positions"]), 3),
        "epoch_a": ds.attrs.get("epoch_a"),
        "epoch_b": ds.attrs.get("epoch_b"),
    }


def _gradients(ds: xr.Dataset) -> dict:
    order = np.argsort(-ds["share_mean"].values, kind="stable")[:15]
    return {
        "norm": _round(ds["norm"]),
        "norm_clipped": _round(ds["norm_clipped"]),
        "clip": ds.attrs.get("clip"),
        "confusion": float(ds["confusion"]),
        "tensor": ds["tensor"].values[order],
        "share_mean": _round(ds["share_mean"].values[order]),
    }


DESCRIBE: dict[str, Callable[[xr.Dataset], dict]] = {
    "attribution": _attribution,
    "lens": _lens,
    "patching": _patching,
    "cka": _cka,
    "gradients": _gradients,
}


def training_gradients(run: Run) -> dict:
    """The gradient norm (before clipping) and clip coefficient of every training step."""
    with open_netcdf(run.path / "metrics.nc") as m:
        kept = [k for k in ("grad_norm", "clip_coef") if k in m]
        return {"step": m["step"].values, **{k: _round(m[k].values, 5) for k in kept}}


def ablation(run: Run) -> dict:
    """`RUN/diagnostics/ablation.nc` (written by `dtlens ablation RUN`), or a note that it is not
    there."""
    path = run.path / "diagnostics" / f"{ABLATION}.nc"
    if not path.is_file():
        return {"available": False, "message": f"not computed: run `dtlens ablation {run.path}`"}
    with open_netcdf(path) as ds:
        ci = ds["score_change_ci"]
        return {
            "available": True,
            "component": ds["component"].values,
            "score_change": _round(ds["score_change"]),
            "low": _round(ci.sel(bound="low")),
            "high": _round(ci.sel(bound="high")),
            "baseline_score": _round(ds["baseline_score"]),
            "score": _round(ds["score"].transpose("component", "episode")),
            "attrs": {
                k: str(ds.attrs[k]) for k in ("how", "episodes", "seed", "epoch") if k in ds.attrs
            },
        }
