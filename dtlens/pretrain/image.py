"""The embedded *image* backbone: an ImageGPT-family (RMS norm, quick_gelu) causal model of MINI's
size.

`build_until_plateau` (`dtlens pretrain image`): Fashion-MNIST's 28x28 images as ImageGPT's palette
tokens (`dtlens.pretrain.fashion`), trained until the held-out loss plateaus
(`dtlens.pretrain.loop.LongRun`), resumable.

`build` (`dtlens pretrain image --corpus digits`, the first embedded asset): trained on
scikit-learn's 8x8 handwritten digits (`sklearn.datasets.load_digits`, 1797
images, intensities 0..16).

As in ImageGPT, an image is a start-of-sequence token followed by its pixels in raster order, each
pixel a palette index; here the palette is the 17 grey levels themselves (ImageGPT's is 512
colour clusters), so the vocabulary is 17 levels + sos = 18 tokens and the context is 64 pixels.
A fixed 15% of the images is held out (the same for every seed). The training images are augmented
with every shift of up to one pixel (zero fill): 9 variants each.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from dtlens.model.config import MINI, BackboneConfig
from dtlens.paths import cache_dir
from dtlens.pretrain import STEPS, fashion
from dtlens.pretrain.loop import Corpus, LongRun, Result, Settings, pretrain, pretrain_until_plateau

FAMILY = "imagegpt"
LEVELS = 17
SOS = LEVELS
SIDE = 8
BATCH_SIZE = 64
LR = 2e-3
HELDOUT_FRACTION = 0.15
MAX_SHIFT = 1
CORPUS = "sklearn.datasets.load_digits (8x8 digits, intensities 0..16)"


def encode(images: Int[Tensor, "n side side"]) -> Int[Tensor, "n seq"]:
    """Images of grey levels to token rows: sos, then the pixels in raster order."""
    if images.min() < 0 or images.max() >= LEVELS:
        raise ValueError(f"pixel levels must lie in 0..{LEVELS - 1}")
    flat = images.flatten(1).long()
    return torch.cat([torch.full((len(flat), 1), SOS), flat], dim=1)


def decode(rows: Int[Tensor, "n seq"]) -> Int[Tensor, "n side side"]:
    """Token rows (sos first) back to images."""
    return rows[:, 1:].reshape(len(rows), SIDE, SIDE)


def shifted(images: Tensor, max_shift: int = MAX_SHIFT) -> Tensor:
    """Every shift of each image by up to `max_shift` pixels along each axis, zero-filled."""
    n, h, w = images.shape
    padded = torch.nn.functional.pad(images, (max_shift,) * 4)
    span = range(2 * max_shift + 1)
    return torch.cat([padded[:, i : i + h, j : j + w] for i in span for j in span])


def split_images(n: int, fraction: float = HELDOUT_FRACTION) -> tuple[Tensor, Tensor]:
    """(train, held-out) indices from a fixed permutation."""
    order = torch.from_numpy(np.random.default_rng(0).permutation(n))
    n_heldout = round(fraction * n)
    return order[n_heldout:].sort().values, order[:n_heldout].sort().values


def corpus(max_shift: int = MAX_SHIFT) -> Corpus:
    from sklearn.datasets import load_digits

    images = torch.from_numpy(load_digits().images.astype(np.int64))
    train_idx, heldout_idx = split_images(len(images))
    train = images[train_idx]
    return Corpus(
        train=encode(shifted(train, max_shift)),
        heldout=encode(images[heldout_idx]),
        train_tokens=train.flatten(),
        d_vocab=LEVELS + 1,
        meta={
            "corpus": CORPUS,
            "tokenizer": "pixels in raster order after a start-of-sequence token",
            "vocabulary": {"levels": LEVELS, "sos": SOS, "side": SIDE},
            "augmentation": f"all shifts of up to {max_shift} pixel(s), zero fill",
            "heldout_images": len(heldout_idx),
        },
    )


def build(
    steps: int = STEPS["image"],
    seed: int = 0,
    out: Path | None = None,
    size: BackboneConfig = MINI,
    batch_size: int = BATCH_SIZE,
    progress: bool = True,
) -> Result:
    """Pretrain the image backbone and save it to `out` (default: the dtlens cache)."""
    return pretrain(
        "image",
        FAMILY,
        dataclasses.replace(size, normalization_type="RMS", act_fn="quick_gelu"),
        corpus,
        Settings(steps=steps, seed=seed, batch_size=batch_size, lr=LR),
        out,
        progress,
        flags="--corpus digits",
    )


#: The Fashion-MNIST run: 32 images (6,272 tokens) a step.
FASHION_RUN = LongRun(batch_size=32)


def fashion_corpus() -> Corpus:
    train = fashion.downsample(fashion.read_images("train"))
    centres = fashion.palette(train)
    rows = fashion.tokens(train, centres)
    heldout = fashion.downsample(fashion.read_images("t10k")[: fashion.HELDOUT])
    return Corpus(
        train=rows,
        heldout=fashion.tokens(heldout, centres),
        train_tokens=rows[:, 1:],
        d_vocab=len(centres) + 1,
        meta={
            "corpus": fashion.CORPUS,
            "corpus_files": [
                str(fashion.ROOT / f"{s}-images-idx3-ubyte.gz") for s in ("train", "t10k")
            ],
            "corpus_tokens": rows[:, 1:].numel(),
            "tokenizer": "ImageGPT: sos, then each pixel's nearest palette centre in raster order",
            "palette": [round(float(c), 3) for c in centres],
            "heldout_images": fashion.HELDOUT,
        },
    )


def build_until_plateau(
    run: LongRun = FASHION_RUN,
    out: Path | None = None,
    size: BackboneConfig = MINI,
    workdir: Path | None = None,
    max_steps: int | None = None,
    command: str = "dtlens pretrain image",
    log=print,
) -> Result | None:
    """Pretrain (or resume) the image backbone on Fashion-MNIST until its held-out loss
    plateaus; None while it has not (stopped by `max_steps`)."""
    return pretrain_until_plateau(
        "image",
        FAMILY,
        dataclasses.replace(size, normalization_type="RMS", act_fn="quick_gelu"),
        fashion_corpus(),
        run,
        workdir or cache_dir("pretrain") / "image",
        command,
        out,
        max_steps,
        log,
    )
