"""Plotting helpers shared by the diagnostics: panels, heatmaps, grouped bars, atomic saving.

Headless (the Agg backend): figures are files, never windows.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.image import AxesImage  # noqa: E402

from dtlens.io import write_atomic  # noqa: E402


def panels(
    nrows: int, ncols: int, size: tuple[float, float] = (3.2, 3.0), **kwargs
) -> tuple[Figure, np.ndarray]:
    """A figure of nrows x ncols axes (always a 2-D array), each `size` inches."""
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(size[0] * ncols, size[1] * nrows),
        squeeze=False,
        layout="constrained",
        **kwargs,
    )
    return fig, axes


def heatmap(
    ax: Axes,
    values: np.ndarray,
    xlabels: Sequence[str],
    ylabels: Sequence[str],
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "magma",
) -> AxesImage:
    """`values` (len(ylabels), len(xlabels)) as an image, row 0 at the top; NaN left blank."""
    image = ax.imshow(values, vmin=vmin, vmax=vmax, cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(xlabels)), xlabels, fontsize=7, rotation=90)
    ax.set_yticks(range(len(ylabels)), ylabels, fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    return image


def grouped_bars(
    ax: Axes,
    categories: Sequence[str],
    series: Mapping[str, np.ndarray],
    title: str = "",
    ylabel: str = "",
) -> None:
    """One group of bars per category, one bar per series (NaN bars are not drawn)."""
    x = np.arange(len(categories))
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(x, categories, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.legend(fontsize=7)


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write `fig` atomically (format from the suffix, default png) and close it."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    try:
        return write_atomic(path, lambda p: fig.savefig(p, format=fmt, dpi=dpi))
    finally:
        plt.close(fig)
