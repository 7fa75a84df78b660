"""The reproduction's report: for each of the paper's seven findings, its claim and numbers,
ours with their spread, whether the finding holds at this scale, and the figures.

`write_report(DIR)` rebuilds `DIR/report.md` and `DIR/report.html` from the saved results alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from dtlens.diagnostics.layer_cka import diagonal
from dtlens.diagnostics.weights import aggregate
from dtlens.io import load_json, write_atomic
from dtlens.report.document import Doc
from dtlens.report.paper import CLAIMS, TABLE1, TABLE1_K1

ROLES = ("random", "language", "image")
FIRST_NORM = "backbone.blocks.0.ln1.w"


def _open(path: Path) -> xr.Dataset | None:
    if not path.is_file():
        return None
    with xr.open_dataset(path) as ds:
        return ds.load()


def _pm(mean: float, std: float | None) -> str:
    if mean is None or not np.isfinite(mean):
        return "n/a"
    return f"{mean:.1f}" if std is None or not np.isfinite(std) else f"{mean:.1f} ± {std:.1f}"


def _holds(flag: bool | None) -> str:
    return {True: "**holds**", False: "**does not hold**", None: "**undetermined**"}[flag]


class Study:
    """One dataset's results inside a reproduction folder."""

    def __init__(self, root: Path, label: str, roles: dict, inits: dict):
        self.root, self.label, self.roles, self.inits = root, label, roles, inits
        self.runs = root / label / "runs"
        self.seeds = sorted({int(k.split("|")[1]) for k in roles["main"]})

    def run_dir(self, role: str, key: str) -> Path | None:
        name = self.roles[role].get(key)
        path = self.runs / name if name else None
        return path if path is not None and (path / "metrics.nc").is_file() else None

    def main(self, who: str, seed: int | None = None) -> Path | None:
        return self.run_dir("main", f"{self.inits[who]}|{seed or self.seeds[0]}")

    def k1(self, who: str) -> Path | None:
        return self.run_dir("no_context", f"{self.inits[who]}|1")

    def final_score(self, run: Path | None, best: bool = False) -> tuple[float, float]:
        """(score, its std over episodes) of the last evaluated epoch, or of the best one (the
        paper code's choice)."""
        ds = _open(run / "metrics.nc") if run else None
        if ds is None or "score_mean" not in ds:
            return float("nan"), float("nan")
        scores = ds.score_mean.values
        finite = np.flatnonzero(np.isfinite(scores))
        if not finite.size:
            return float("nan"), float("nan")
        i = finite[np.argmax(scores[finite])] if best else finite[-1]
        return float(scores[i]), float(ds.score_std.values[i])

    def figures(self, doc: Doc, name: str, caption: str) -> None:
        """`figures/{name}.png` of each init's main run; `caption` has a {} for the init."""
        for who in ROLES:
            if run := self.main(who):
                doc.figure(run / "figures" / f"{name}.png", caption.format(who), self.root)

    def diag(self, run: Path | None, name: str) -> xr.Dataset | None:
        return _open(run / "diagnostics" / f"{name}.nc") if run else None


def write_report(root: str | Path) -> Path:
    root = Path(root)
    meta = load_json(root / "reproduce.json")
    doc = Doc(f"dtlens reproduction: {meta['preset']} preset")
    minutes = meta.get("wall_time_s", float("nan")) / 60
    doc.p(
        f"Takagi (NeurIPS 2022), *On the Effect of Pre-training for Transformer in Different "
        f"Modality on Offline RL*, reproduced with dtlens. Preset **{meta['preset']}**, datasets "
        f"{', '.join(meta['datasets'].values())}, seeds {meta['seeds']}, inits: random = "
        f"`{meta['inits']['random']}`, language = `{meta['inits']['language']}`, image = "
        f"`{meta['inits']['image']}`. Wall time {minutes:.1f} min."
    )
    summary: list[list[object]] = []
    for label, roles in meta["roles"].items():
        study = Study(root, label, roles, meta["inits"])
        doc.h(f"{label}", 2)
        _table1(doc, study)
        for section in SECTIONS:
            summary.append([label, *section(doc, study)])
    doc.h("Summary", 2)
    doc.table(["dataset", "finding", "paper", "here"], summary)
    write_atomic(root / "report.md", lambda p: p.write_text(doc.markdown()))
    write_atomic(root / "report.html", lambda p: p.write_text(doc.html()))
    return root / "report.md"


def _table1(doc: Doc, s: Study) -> None:
    doc.h("Normalized score (Table 1)", 3)
    paper, paper_k1 = TABLE1.get(s.label, {}), TABLE1_K1.get(s.label, {})
    rows = []
    for who in ROLES:
        per_seed = [s.final_score(s.main(who, seed)) for seed in s.seeds]
        means = np.array([m for m, _ in per_seed])
        if len(s.seeds) > 1:
            ours = _pm(float(np.nanmean(means)), float(np.nanstd(means)))
        else:
            ours = _pm(*per_seed[0])
        best = [s.final_score(s.main(who, seed), best=True)[0] for seed in s.seeds]
        k1 = _pm(*s.final_score(s.k1(who))) if who != "image" else "-"
        no_k1 = who == "image"
        rows.append(
            [
                who,
                ours,
                _pm(float(np.nanmean(best)), None),
                _pm(*paper.get(who, (None, None))),
                k1,
                "-" if no_k1 else _pm(*paper_k1.get(who, (None, None))),
            ]
        )
    doc.table(
        [
            "init",
            "K=20 (here)",
            "K=20, best epoch (here)",
            "K=20 (paper)",
            "K=1 (here)",
            "K=1 (paper)",
        ],
        rows,
    )
    spread = "std over seeds" if len(s.seeds) > 1 else "std over evaluation episodes (one seed)"
    doc.p(
        f"D4RL normalized score (D4RL reference returns) of the last epoch, {spread}; 'best "
        "epoch' is the paper code's choice (the maximum over epochs, optimistic)."
    )


def _cka(doc: Doc, s: Study) -> list[str]:
    doc.h("1. Representation change (CKA)", 3)
    doc.p(f"*Paper:* {CLAIMS['cka']}")
    rows, means = [], {}
    for who in ROLES:
        ds = s.diag(s.main(who), "cka")
        if ds is None:
            continue
        d = diagonal(ds, "last").sel(layer=[x for x in ds.layer_a.values if x >= 0])
        row = [who] + [float(d.sel(token_type=t).mean()) for t in ("return", "state", "action")]
        if "paper_code" in ds["variant"].values:
            p = diagonal(ds, "paper_code").sel(layer=d.layer.values)
            row += [float(p.sel(token_type=t).mean()) for t in ("return", "state", "action")]
        means[who] = float(d.sel(token_type=["return", "state", "action"]).mean())
        rows.append(row)
    header = ["init", "return", "state", "action", "paper code: return", "state", "action"]
    doc.table(header[: max(len(r) for r in rows)] if rows else header, rows)
    doc.p(
        "Mean over blocks of linear debiased CKA between each block's output before (epoch 0) "
        "and after fine-tuning, on the last timestep's token of each type (the paper's "
        "definition); 'paper code' is the released code's indexing (one hidden unit across "
        "positions), shown side by side."
    )
    holds = None
    if {"random", "language"} <= set(means):
        holds = means["language"] < means["random"]
    s.figures(doc, "cka", "CKA, {} init, epoch 0 vs last")
    text = ", ".join(f"{k} {v:.2f}" for k, v in means.items())
    doc.p(f"Mean diagonal CKA: {text}. {_holds(holds)} (language-pretrained below random).")
    return ["1. CKA", "pretrained < random", f"{text}: {_holds(holds)}"]


def _mi(doc: Doc, s: Study) -> list[str]:
    doc.h("2. Information about the data (mutual information)", 3)
    doc.p(f"*Paper:* {CLAIMS['mi']}")
    rows, means = [], {}
    for who in ROLES:
        ds = s.diag(s.main(who), "mutual_info")
        if ds is None:
            continue
        row = [who]
        for q in ds.quantity.values:
            m = ds["mean"].sel(quantity=q)
            row += [f"{float(m.mean()):.2f} ± {float(ds['std'].sel(quantity=q).mean()):.2f}"]
        row.append(int(ds["diverged"].sum()))
        means[who] = float(ds["mean"].mean())
        rows.append(row)
        quantities = [str(q) for q in ds.quantity.values]
    if rows:
        doc.table(["init", *quantities, "diverged runs"], rows)
    doc.p(
        "Nats, mean over blocks and token types (± mean std over estimator seeds; KSG by "
        "default, MINE held-out with `dtlens mutual-info --method mine`); see each run's "
        "`diagnostics/mutual_info.nc` for every block."
    )
    s.figures(doc, "mutual_info", "MI, {} init")
    holds = means["language"] < means["random"] if {"random", "language"} <= set(means) else None
    text = ", ".join(f"{k} {v:.2f}" for k, v in means.items())
    doc.p(f"Mean MI: {text}. {_holds(holds)} (language-pretrained below random).")
    return ["2. MI", "pretrained < random", f"{text}: {_holds(holds)}"]


def _weights(doc: Doc, s: Study) -> list[str]:
    doc.h("3. Weight change", 3)
    doc.p(f"*Paper:* {CLAIMS['weights']}")
    rows, rel = [], {}
    for who in ROLES:
        ds = s.diag(s.main(who), "weights")
        if ds is None:
            continue
        part = aggregate(ds, "part")
        b = part.sel(part="backbone")
        rel[who] = float(b.relative)
        rows.append([who, float(b.cosine), float(b.relative), float(b.l2)])
    doc.table(["init", "cosine (backbone)", "relative change", "L2 distance"], rows)
    s.figures(doc, "weights", "weight change, {} init")
    holds = rel["language"] < rel["random"] if {"random", "language"} <= set(rel) else None
    text = ", ".join(f"{k} {v:.3f}" for k, v in rel.items())
    doc.p(f"Relative change of all backbone weights: {text}. {_holds(holds)}.")
    return ["3. weights", "pretrained move less", f"relative {text}: {_holds(holds)}"]


def _gradients(doc: Doc, s: Study) -> list[str]:
    doc.h("4. Gradients early in fine-tuning", 3)
    doc.p(f"*Paper:* {CLAIMS['gradients']}")
    rows, conf, share = [], {}, {}
    for who in ROLES:
        ds = s.diag(s.main(who), "gradients")
        if ds is None:
            continue
        top = int(np.argmax(ds["share_mean"].values))
        conf[who] = float(ds["confusion"])
        in_ln1 = ds["share_mean"].sel(tensor=FIRST_NORM) if FIRST_NORM in ds.tensor else np.nan
        share[who] = float(in_ln1)
        clip = ds.attrs.get("clip", 0.25)
        rows.append(
            [
                who,
                float(np.median(ds["norm"])),
                float(np.mean(ds["norm"] >= clip)),
                conf[who],
                f"{share[who]:.1%}",
                f"{ds.tensor.values[top]} ({float(ds['share_mean'].values[top]):.0%})",
            ]
        )
    doc.table(
        [
            "init",
            "median norm",
            "share of samples clipped",
            "confusion",
            "share in block 0's first norm",
            "largest share of squared norm",
        ],
        rows,
    )
    image, image_nc = s.main("image"), s.run_dir("no_clip", s.inits["image"])
    if image and image_nc:
        a, b = _open(image / "metrics.nc"), _open(image_nc / "metrics.nc")
        doc.table(
            ["image init", "final action MSE", "final score"],
            [
                ["clipped at 0.25", float(a.action_error[-1]), s.final_score(image)[0]],
                ["no clipping", float(b.action_error[-1]), s.final_score(image_nc)[0]],
            ],
        )
    s.figures(doc, "gradients", "gradients, {} init")
    holds = None
    if len(share) == 3:
        holds = share["image"] >= 0.5 and share["image"] == max(share.values())
    text = ", ".join(f"{k} {v:.2f}" for k, v in conf.items())
    doc.p(
        f"Gradient confusion (min pairwise cosine): {text}. The image init's gradient "
        f"concentrated in block 0's first norm (the paper: 89%, the largest of the inits): "
        f"{_holds(holds)}."
    )
    return [
        "4. gradients",
        "iGPT: 89% of the norm in block 0's first norm",
        f"share {', '.join(f'{k} {v:.1%}' for k, v in share.items())}: {_holds(holds)}",
    ]


def _no_context(doc: Doc, s: Study) -> list[str]:
    doc.h("5. Training without context", 3)
    doc.p(f"*Paper:* {CLAIMS['no_context']}")
    ds = _open(s.root / s.label / "diagnostics" / "no_context.nc")
    if ds is None:
        doc.p("*(not available)*")
        return ["5. no context", "GPT-2 unaffected by K=1", _holds(None)]
    rows = []
    for r in ds.run.values:
        x = ds.sel(run=r)
        rows.append(
            [
                str(x.init.values),
                int(x.context),
                float(x.final_action_error),
                float(x.get("final_score_mean", np.nan)),
                int(x.steps_to_fraction),
            ]
        )
    doc.table(["init", "K", "final action MSE", "final score", "steps to 90% of the drop"], rows)
    doc.figure(s.root / s.label / "figures" / "no_context.png", "K=1 vs K=20", s.root)
    gap = {}
    for who in ("random", "language"):
        pick = ds.init.values == s.inits[who]
        by_k = {
            int(k): float(v)
            for k, v in zip(ds.context.values[pick], ds.final_score_mean.values[pick], strict=True)
        }
        if {1, 20} <= set(by_k):
            gap[who] = by_k[20] - by_k[1]
    holds = gap["language"] < gap["random"] if len(gap) == 2 else None
    text = ", ".join(f"{k} {v:+.1f}" for k, v in gap.items())
    doc.p(f"Score lost without context (K=20 minus K=1): {text}. {_holds(holds)}.")
    return ["5. no context", "pretrained lose less at K=1", f"{text}: {_holds(holds)}"]


def _block_swap(doc: Doc, s: Study) -> list[str]:
    doc.h("6. Single-block replacement", 3)
    doc.p(f"*Paper:* {CLAIMS['block_swap']}")
    ds = _open(s.root / s.label / "diagnostics" / "block_swap.nc")
    if ds is None:
        doc.p("*(not available)*")
        return ["6. block swap", "one block helps", _holds(None)]
    rows = [
        [
            str(v),
            float(ds.auc_action_error.sel(variant=v)),
            float(ds.auc_return_mean.sel(variant=v)) if "auc_return_mean" in ds else np.nan,
        ]
        for v in ds.variant.values
    ]
    doc.table(["variant (K=1)", "AUC action MSE (EMA 0.8)", "AUC return (EMA 0.8)"], rows)
    doc.figure(s.root / s.label / "figures" / "block_swap.png", "block replacement", s.root)
    singles = [v for v in ds.variant.values if str(v).startswith("block")]
    holds = None
    if "random" in ds.variant.values and singles:
        base = float(ds.auc_action_error.sel(variant="random"))
        better = [v for v in singles if float(ds.auc_action_error.sel(variant=v)) < base]
        holds = bool(better)
        doc.p(
            f"Blocks whose donation lowers the action-error AUC below all-random: "
            f"{', '.join(map(str, better)) or 'none'}. {_holds(holds)}."
        )
    return ["6. block swap", "one pretrained block speeds learning", _holds(holds)]


def _attention(doc: Doc, s: Study) -> list[str]:
    doc.h("7. Attention distance during fine-tuning", 3)
    doc.p(f"*Paper:* {CLAIMS['attention']}")
    rows, change = [], {}
    for who in ("random", "language"):
        run = s.k1(who)
        ds = s.diag(run, "attention")
        if ds is None:
            continue
        last = ds.isel(epoch=-1)
        per_block = last.change_timestep.mean("head").values
        change[who] = float(per_block.mean())
        paper = last.paper_change.values / 3 if "paper_change" in ds else [np.nan] * len(per_block)
        for b, (ours, theirs) in enumerate(zip(per_block, paper, strict=True)):
            rows.append(
                [
                    who,
                    b,
                    float(last.distance_timestep.sel(layer=b).mean()),
                    float(ours),
                    float(theirs),
                ]
            )
        doc.figure(run / "figures" / "attention.png", f"attention distance, {who} K=1", s.root)
    doc.table(
        [
            "init (K=1)",
            "block",
            "distance (timesteps)",
            "|change| per head (mean)",
            "|change|, paper's formula",
        ],
        rows,
    )
    holds = change["language"] < change["random"] if len(change) == 2 else None
    text = ", ".join(f"{k} {v:.3f}" for k, v in change.items())
    doc.p(
        f"Mean |change| of attention distance from epoch 0 to the last, in timesteps, probed "
        f"with K=20 windows: {text}. {_holds(holds)}."
    )
    return ["7. attention distance", "pretrained change less", f"{text}: {_holds(holds)}"]


SECTIONS = (_cka, _mi, _weights, _gradients, _no_context, _block_swap, _attention)
