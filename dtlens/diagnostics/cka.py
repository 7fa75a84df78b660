"""Centered kernel alignment (CKA) between representations of the same samples.

CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) for the Gram matrices K, L of two
representations (Kornblith et al. 2019). Two HSIC estimators:

- biased (``debiased=False``): <HKH, HLH>_F, with H the centring matrix;
- unbiased (``debiased=True``): the U-statistic HSIC_1 of Song et al. (2012), computed as the inner
  product of U-centred Gram matrices (Szekely & Rizzo 2014). The paper uses this one.

Linear CKA also has an exact feature-space form that never builds an n x n matrix: on
column-centred features <HKH, HLH> = ||Xc^T Yc||_F^2, and HSIC_1 only adds a correction from the
Gram diagonals (the squared row norms). `cka` and `cka_matrix` pick the cheaper form
(``form="auto"``). Arithmetic is float64 on centred features, so float32 inputs with a large offset
lose nothing beyond their own rounding. CKA is NaN where undefined (a constant representation).

Memory does not grow with the number of layers: layers are converted to float64 one pair at a
time, and the Gram form holds at most `GRAM_MEMORY` bytes of n x n matrices (columns of the
matrix in chunks, rebuilding the rows' Grams once per chunk); linear CKA whose Grams do not fit
takes the feature form. Layers given as `LazyLayers` (e.g. read from a capture on disk) are read
when needed, the first ones kept within `LAYER_MEMORY` bytes, so the inputs do not grow with the
number of layers either.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float

from dtlens.errors import DtlensError

Array = np.ndarray | torch.Tensor
Kernel = Literal["linear", "rbf"]
Form = Literal["auto", "gram", "feature"]
Layers = Sequence[Float[Array, "n d"]] | Float[Array, "layer n d"]

#: Bytes of float64 Gram matrices the Gram form may hold at once (at least two are held).
GRAM_MEMORY = 2**30
#: Bytes of layers a `LazyLayers` keeps after reading them (the rest are read again when needed).
LAYER_MEMORY = 2**28


def _as_numpy(x: Array, name: str, ndim: int) -> np.ndarray:
    """`x` as a numpy array of its own float dtype (no copy of a numpy input), checked for shape
    and finiteness."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
    if a.ndim != ndim:
        raise DtlensError(f"{name}: expected a {ndim}-D array, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise DtlensError(f"{name}: contains NaN or inf")
    return a


def _as_float64(x: Array, name: str, ndim: int) -> np.ndarray:
    """A float64 numpy copy of `x`, checked for shape and finiteness."""
    return _as_numpy(x, name, ndim).astype(np.float64)


class LazyLayers(Sequence):
    """`count` layers of one `shape` (n, d), layer i read by `read(i)` when CKA needs it (a
    capture on disk is never loaded whole); the first layers read are kept within
    `LAYER_MEMORY` bytes, the others read again on each use. Each is checked when read."""

    def __init__(self, read: Callable[[int], Array], count: int, shape: tuple[int, int]) -> None:
        self.read, self.count, self.shape = read, count, tuple(shape)
        self._kept: dict[int, np.ndarray] = {}
        self._kept_bytes = 0

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < self.count:
            raise IndexError(i)
        if i in self._kept:
            return self._kept[i]
        x = _as_numpy(self.read(i), f"layer {i}", 2)
        if x.shape != self.shape:
            raise DtlensError(f"layer {i}: shape {x.shape}, expected {self.shape}")
        if self._kept_bytes + x.nbytes <= LAYER_MEMORY:
            self._kept[i] = x
            self._kept_bytes += x.nbytes
        return x


def _as_layers(xs: Layers | LazyLayers, name: str) -> Sequence[np.ndarray]:
    """Each layer checked, in its own dtype: float64 copies are made one layer at a time.
    `LazyLayers` stay lazy (checked as they are read)."""
    layers = (
        xs
        if isinstance(xs, LazyLayers)
        else [_as_numpy(x, f"{name}[{i}]", 2) for i, x in enumerate(xs)]
    )
    if not len(layers):
        raise DtlensError(f"{name}: no representations given")
    return layers


def _shapes(layers: Sequence[np.ndarray]) -> list[tuple[int, ...]]:
    """Every layer's shape, without reading lazy layers."""
    if isinstance(layers, LazyLayers):
        return [layers.shape] * len(layers)
    return [x.shape for x in layers]


def _check_samples(shapes: list[tuple[int, ...]], debiased: bool) -> int:
    counts = sorted({shape[0] for shape in shapes})
    if len(counts) > 1:
        raise DtlensError(f"CKA compares the same samples, got sample counts {counts}")
    need = 4 if debiased else 2
    if counts[0] < need:
        kind = "unbiased" if debiased else "biased"
        raise DtlensError(f"CKA with the {kind} HSIC needs >= {need} samples, got {counts[0]}")
    return counts[0]


def _centre(k: np.ndarray) -> np.ndarray:
    """H K H for a symmetric K, in place."""
    means = k.mean(axis=0)
    k -= means[:, None]
    k -= means[None, :]
    k += means.mean()
    return k


def _u_centre(k: np.ndarray) -> np.ndarray:
    """U-centring of a symmetric K, in place: <U(K), U(L)> / (n (n - 3)) is HSIC_1."""
    n = k.shape[0]
    np.fill_diagonal(k, 0.0)
    means = k.sum(axis=0) / (n - 2)
    k -= means[:, None]
    k -= means[None, :]
    k += means.sum() / (n - 1)
    np.fill_diagonal(k, 0.0)
    return k


def _rbf_gram(x: np.ndarray, threshold: float) -> np.ndarray:
    """exp(-d^2 / (2 sigma^2)), sigma = threshold x median distance; as Kornblith's code, the
    median is taken over all n^2 squared distances, the zero diagonal included."""
    sq_norms = np.einsum("ij,ij->i", x, x)
    sq = np.maximum(sq_norms[:, None] + sq_norms[None, :] - 2.0 * (x @ x.T), 0.0)
    median = np.median(sq)
    return np.exp(-sq / (2.0 * threshold**2 * median)) if median > 0 else np.ones_like(sq)


def _centred_features(x: np.ndarray) -> np.ndarray:
    """Column-centred float64 copy of `x`."""
    x = x.astype(np.float64)
    x -= x.mean(axis=0)
    return x


def _centred_gram(x: np.ndarray, kernel: Kernel, debiased: bool, threshold: float) -> np.ndarray:
    x = _centred_features(x)
    k = x @ x.T if kernel == "linear" else _rbf_gram(x, threshold)
    return _u_centre(k) if debiased else _centre(k)


def _linear_hsic(
    a: np.ndarray, rows_a: np.ndarray, b: np.ndarray, rows_b: np.ndarray, debiased: bool
) -> float:
    """Scaled linear HSIC from centred features: (n-1)^2 HSIC_0, or n (n-3) HSIC_1.

    With centred features the Gram K has zero row sums, so Song's HSIC_1 reduces to
    <K, L> - n/(n-2) diag(K).diag(L) + tr(K) tr(L) / ((n-1)(n-2)), with diag(K) = `rows_a`.
    """
    hsic = float(np.linalg.norm(a.T @ b) ** 2)
    if debiased:
        n = a.shape[0]
        hsic += -n / (n - 2) * float(rows_a @ rows_b)
        hsic += float(rows_a.sum() * rows_b.sum()) / ((n - 1) * (n - 2))
    return hsic


def _use_features(
    kernel: Kernel, form: Form, n: int, xs: Sequence[np.ndarray], ys: Sequence[np.ndarray]
) -> bool:
    """The feature form when asked, or (auto, linear) when it is cheaper or the Grams that the
    Gram form holds at once would not fit `GRAM_MEMORY`."""
    if kernel not in ("linear", "rbf"):
        raise DtlensError(f"unknown CKA kernel {kernel!r}: use 'linear' or 'rbf'")
    if form not in ("auto", "gram", "feature"):
        raise DtlensError(f"unknown CKA form {form!r}: use 'auto', 'gram' or 'feature'")
    if kernel == "rbf":
        if form == "feature":
            raise DtlensError("the feature-space form of CKA exists for the linear kernel only")
        return False
    if form != "auto":
        return form == "feature"
    px, py = np.array([s[1] for s in _shapes(xs)]), np.array([s[1] for s in _shapes(ys)])
    feature_flops = (px**2).sum() + (py**2).sum() + px.sum() * py.sum()  # per sample
    gram_flops = n * (px.sum() + py.sum() + len(px) * len(py))
    return bool(feature_flops <= gram_flops or _grams_per_chunk(n) < len(ys) + 1)


def _grams_per_chunk(n: int) -> int:
    """Column Grams held at once besides one row Gram, within `GRAM_MEMORY` (at least one)."""
    return max(1, GRAM_MEMORY // (8 * n * n) - 1)


def _feature_hsics(
    xs: Sequence[np.ndarray], ys: Sequence[np.ndarray], symmetric: bool, debiased: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pair by pair from centred features: two layers in float64 at a time."""

    def stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = _centred_features(x)
        return x, np.einsum("ij,ij->i", x, x)

    cross = np.full((len(xs), len(ys)), np.nan)
    self_x = np.empty(len(xs))
    self_y = np.empty(len(ys))
    for i, x in enumerate(xs):
        a, ra = stats(x)
        self_x[i] = _linear_hsic(a, ra, a, ra, debiased)
        for j, y in enumerate(ys):
            if symmetric and j < i:
                cross[i, j] = cross[j, i]
            elif symmetric and j == i:
                cross[i, j] = self_x[i]
            else:
                b, rb = stats(y)
                cross[i, j] = _linear_hsic(a, ra, b, rb, debiased)
    if symmetric:
        return cross, self_x, self_x
    for j, y in enumerate(ys):
        b, rb = stats(y)
        self_y[j] = _linear_hsic(b, rb, b, rb, debiased)
    return cross, self_x, self_y


def _gram_hsics(
    xs: Sequence[np.ndarray],
    ys: Sequence[np.ndarray],
    symmetric: bool,
    kernel: Kernel,
    debiased: bool,
    threshold: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Columns (layers of `ys`) in chunks of Grams that fit `GRAM_MEMORY`; for each chunk, each
    row's Gram is built (or taken from the chunk) once. With everything in one chunk every Gram
    is built once."""

    def gram(x: np.ndarray) -> np.ndarray:
        return _centred_gram(x, kernel, debiased, threshold)

    cross = np.full((len(xs), len(ys)), np.nan)
    self_x, self_y = np.empty(len(xs)), np.empty(len(ys))
    size = _grams_per_chunk(xs[0].shape[0])
    for start in range(0, len(ys), size):
        chunk = {j: gram(ys[j]) for j in range(start, min(start + size, len(ys)))}
        for j, g in chunk.items():
            self_y[j] = np.vdot(g, g)
        rows = range(max(chunk) + 1) if symmetric else range(len(xs))
        for i in rows:
            gi = chunk[i] if symmetric and i in chunk else gram(xs[i])
            if start == 0 and not symmetric:
                self_x[i] = np.vdot(gi, gi)
            for j, gj in chunk.items():
                if not symmetric or j >= i:
                    cross[i, j] = np.vdot(gi, gj)
                    if symmetric:
                        cross[j, i] = cross[i, j]
            del gi  # before the next one is built: the budget counts one row Gram
        del chunk
    return cross, (self_y if symmetric else self_x), self_y


def _normalise(cross: np.ndarray, self_x: np.ndarray, self_y: np.ndarray) -> np.ndarray:
    defined = (self_x[:, None] > 0) & (self_y[None, :] > 0)
    denom = np.sqrt(np.where(defined, np.outer(self_x, self_y), 1.0))
    return np.where(defined, cross / denom, np.nan)


def _hsics(
    xs: Sequence[np.ndarray],
    ys: Sequence[np.ndarray],
    symmetric: bool,
    kernel: Kernel,
    debiased: bool,
    threshold: float,
    form: Form,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scaled HSIC of every (x, y) pair, of each x with itself and of each y with itself."""
    n = _check_samples(_shapes(xs) + _shapes(ys), debiased)
    if _use_features(kernel, form, n, xs, ys):
        return _feature_hsics(xs, ys, symmetric, debiased)
    return _gram_hsics(xs, ys, symmetric, kernel, debiased, threshold)


def cka(
    X: Float[Array, "n p"],
    Y: Float[Array, "n q"],
    kernel: Kernel = "linear",
    debiased: bool = False,
    threshold: float = 0.5,
    *,
    form: Form = "auto",
) -> float:
    """CKA between two representations of the same n samples (rows).

    `threshold` sets the RBF bandwidth as a fraction of the median pairwise distance. `form`
    forces the Gram ("gram", O(n^2 (p + q))) or feature-space ("feature", O(n p q), linear only)
    computation; "auto" takes the cheaper one. Both give the same value.
    """
    x, y = _as_float64(X, "X", 2), _as_float64(Y, "Y", 2)
    return float(_normalise(*_hsics([x], [y], False, kernel, debiased, threshold, form))[0, 0])


def cka_matrix(
    Xs: Layers | LazyLayers,
    Ys: Layers | LazyLayers | None = None,
    kernel: Kernel = "linear",
    debiased: bool = False,
    threshold: float = 0.5,
    *,
    form: Form = "auto",
) -> Float[np.ndarray, "layer_x layer_y"]:
    """CKA of every layer of `Xs` against every layer of `Ys` (default: `Xs` itself).

    With ``Ys=None`` only the upper triangle is computed. Peak memory is independent of the
    number of layers: the feature form holds two centred layers (O(n d)), the Gram form at most
    `GRAM_MEMORY` bytes of n x n matrices (see the module docstring); `LazyLayers` inputs are
    read as needed.
    """
    xs = _as_layers(Xs, "Xs")
    ys = xs if Ys is None else _as_layers(Ys, "Ys")
    return _normalise(*_hsics(xs, ys, Ys is None, kernel, debiased, threshold, form))


class MinibatchCKA:
    """Minibatch linear CKA (Nguyen et al. 2021): unbiased HSIC_1 accumulated over minibatches.

    Every `update` gets one minibatch of the same b >= 4 samples for all layers. `compute` returns
    sum_batches HSIC_1(K_i, L_j) / sqrt(sum HSIC_1(K_i, K_i) sum HSIC_1(L_j, L_j)). HSIC_1 is
    unbiased at any batch size, so this converges to full-data unbiased CKA as batches accumulate
    (a single batch of all samples gives it exactly). Memory is O(layers x b^2).
    """

    def __init__(self) -> None:
        self._cross: np.ndarray | None = None
        self._self_x = np.zeros(0)
        self._self_y = np.zeros(0)
        self.n_batches = 0
        self.n_samples = 0

    def update(self, xs: Layers, ys: Layers | None = None) -> None:
        """Add one minibatch: `xs` (b, p_i) per layer of A, `ys` (b, q_j) per layer of B
        (default: `xs`, for an A x A matrix)."""
        lx = _as_layers(xs, "xs")
        ly = lx if ys is None else _as_layers(ys, "ys")
        b = _check_samples(_shapes(lx) + _shapes(ly), debiased=True)
        cross, self_x, self_y = _hsics(lx, ly, ys is None, "linear", True, 0.0, "auto")
        if self._cross is None:
            self._cross = np.zeros_like(cross)
            self._self_x, self._self_y = np.zeros_like(self_x), np.zeros_like(self_y)
        elif cross.shape != self._cross.shape:
            raise DtlensError(
                f"layer counts changed between minibatches: {cross.shape} vs {self._cross.shape}"
            )
        scale = 1.0 / (b * (b - 3))  # HSIC_1 = <U(K), U(L)> / (b (b - 3)), b may vary
        self._cross += cross * scale
        self._self_x += self_x * scale
        self._self_y += self_y * scale
        self.n_batches += 1
        self.n_samples += b

    def compute(self) -> Float[np.ndarray, "layer_x layer_y"]:
        if self._cross is None:
            raise DtlensError("MinibatchCKA.compute() called before any update()")
        return _normalise(self._cross, self._self_x, self._self_y)


def cka_paper_variant(
    acts_a: Float[Array, "batch position d_model"],
    acts_b: Float[Array, "batch position d_model"],
    index: int,
) -> float:
    """CKA exactly as the paper's released code computes it: a known departure from the paper.

    The code indexes block outputs [B, 3K, D] as ``[:, :, index]``, so it compares ONE hidden unit
    (`index` along d_model) across the 3K token positions (samples as rows, positions as
    features) instead of the d_model-dim representation of one token. Its calls used index -3, -2,
    -1 for "return", "state", "action" (``timestep * 3 / 2 / 1`` with ``timestep=-1``): the last
    three hidden units whatever the token type. Then unbiased linear CKA from U-centred Grams,
    with 1e-6 added to the denominator as there. For the paper's stated analysis use
    ``cka(acts_a[:, pos], acts_b[:, pos], debiased=True)``.
    """
    a, b = _as_float64(acts_a, "acts_a", 3), _as_float64(acts_b, "acts_b", 3)
    x, y = a[:, :, index], b[:, :, index]
    _check_samples([x.shape, y.shape], debiased=True)
    gx = _centred_gram(x, "linear", True, 0.0)
    gy = _centred_gram(y, "linear", True, 0.0)
    return float((gx * gy).sum() / (np.linalg.norm(gx) * np.linalg.norm(gy) + 1e-6))
