"""The learning curve figure of a long pretraining run (`dtlens model info NAME --curve`)."""

from __future__ import annotations

from dtlens.io import load_json
from dtlens.model.backbones import read_header
from dtlens.model.summary import backbone_file
from dtlens.plotting import Figure, panels


def pretraining_curve_figure(name: str) -> Figure | None:
    """The learning curve of a long pretraining run (`NAME.curve.json` beside its file): held-out
    and training loss against tokens seen, the unigram floor, and the learning rate; None for a
    backbone without one."""
    path = backbone_file(name)
    if path is None or not (curve_file := path.with_name(f"{path.stem}.curve.json")).is_file():
        return None
    points = load_json(curve_file)["curve"]
    meta = read_header(path).get("meta", {})
    tokens = [p["tokens_seen"] / 1e6 for p in points]
    fig, axes = panels(1, 1, size=(6.0, 3.6))
    ax = axes[0, 0]
    ax.plot(tokens, [p["heldout_loss"] for p in points], marker=".", label="held-out")
    ax.plot(tokens, [p["train_loss"] for p in points], alpha=0.7, label="train")
    if "unigram_loss" in meta:
        ax.axhline(meta["unigram_loss"], color="grey", ls="--", label="unigram model")
    ax.set(xlabel="tokens seen (millions)", ylabel="loss (nats/token)",
           title=f"{path.stem} backbone: pretraining")  # fmt: skip
    lr = ax.twinx()
    lr.plot(tokens, [p["lr"] for p in points], color="black", lw=0.8, ls=":", label="lr")
    lr.set(yscale="log", ylabel="learning rate")
    handles = ax.get_legend_handles_labels()
    extra = lr.get_legend_handles_labels()
    ax.legend(handles[0] + extra[0], handles[1] + extra[1], fontsize="small")
    return fig
