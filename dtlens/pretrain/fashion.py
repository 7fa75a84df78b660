"""The image backbone's corpus: Fashion-MNIST (Debian package `dataset-fashion-mnist`, MIT/Expat;
`/usr/share/datasets/fashion-mnist/{train,t10k}-images-idx3-ubyte.gz`: 60,000 training and 10,000
test images of 28x28 grey levels), the largest image set a Debian or PyPI package ships.

As ImageGPT's inputs: the images downsampled (2x2 means, 14x14: ImageGPT downsamples to 32x32 or
less, and the context stays 197 tokens, affordable on a CPU), then a palette of PALETTE cluster
centres (k-means of the training pixels; ImageGPT clusters RGB colours into 512, here grey levels
into 16), each pixel its nearest centre; an image is a start-of-sequence token then its pixels in
raster order. The training images are the training split; the first HELDOUT test images are held
out.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from dtlens.errors import DtlensError

ROOT = Path("/usr/share/datasets/fashion-mnist")
PALETTE = 16
SIDE = 14
HELDOUT = 2000
NAME = "fashion-mnist"
CORPUS = (
    "Fashion-MNIST, Debian package dataset-fashion-mnist (MIT): 60,000 training images, "
    f"the first {HELDOUT} test images held out; 28x28 grey levels downsampled to {SIDE}x{SIDE}, "
    f"{PALETTE}-cluster palette"
)


def read_images(split: str, root: Path = ROOT) -> np.ndarray:
    """(n, 28, 28) uint8 images of an idx3 file (`train` or `t10k`)."""
    path = root / f"{split}-images-idx3-ubyte.gz"
    if not path.is_file():
        raise DtlensError(
            f"{path}: not found; install it with `apt-get install dataset-fashion-mnist`"
        )
    raw = gzip.decompress(path.read_bytes())
    magic, n, rows, cols = np.frombuffer(raw[:16], dtype=">u4")
    if magic != 2051:
        raise DtlensError(f"{path}: not an idx3 image file")
    return np.frombuffer(raw[16:], dtype=np.uint8).reshape(int(n), int(rows), int(cols))


def downsample(images: np.ndarray, side: int = SIDE) -> np.ndarray:
    """(n, h, w) uint8 images to (n, side, side) by block means, rounded."""
    n, h, w = images.shape
    blocks = images.reshape(n, side, h // side, side, w // side).astype(np.float64)
    return np.rint(blocks.mean(axis=(2, 4))).astype(np.uint8)


def palette(pixels: np.ndarray, k: int = PALETTE, iterations: int = 100) -> np.ndarray:
    """k sorted grey-level centres: Lloyd's k-means of `pixels` (uint8), started at quantiles."""
    counts = np.bincount(pixels.ravel(), minlength=256).astype(np.float64)
    levels = np.arange(256, dtype=np.float64)
    cdf = np.cumsum(counts) / counts.sum()
    centres = np.unique(np.searchsorted(cdf, (np.arange(k) + 0.5) / k)).astype(np.float64)
    centres = np.concatenate([centres, np.setdiff1d(levels, centres)[: k - len(centres)]])
    centres.sort()
    for _ in range(iterations):
        nearest = np.abs(levels[:, None] - centres[None]).argmin(1)
        mass = np.bincount(nearest, weights=counts, minlength=k)
        total = np.bincount(nearest, weights=counts * levels, minlength=k)
        new = np.where(mass > 0, total / np.maximum(mass, 1e-12), centres)
        if np.allclose(new, centres):
            break
        centres = np.sort(new)
    return centres


def tokens(images: np.ndarray, centres: np.ndarray) -> torch.Tensor:
    """Images to rows of tokens: start-of-sequence (id len(centres)) then nearest-centre ids."""
    table = np.abs(np.arange(256)[:, None] - centres[None]).argmin(1)
    ids = torch.from_numpy(table[images.reshape(len(images), -1)].astype(np.int64))
    return torch.cat([torch.full((len(ids), 1), len(centres)), ids], dim=1)
