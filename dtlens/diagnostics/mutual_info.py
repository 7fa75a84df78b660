"""Mutual information I(X; Y) in nats, from paired samples X (n, dx) and Y (n, dy).

Methods of `estimate` (numpy or torch input):

- ``"gcmi"`` (`DEFAULT_METHOD`, what the run-level analysis uses): Gaussian-copula MI (Ince et
  al. 2017) with the exact small-sample bias correction. Each coordinate is replaced by the
  normal scores of its ranks (an invertible monotone map, so MI is unchanged), the closed form
  of a Gaussian with the sample covariance is taken (`gaussian_mi`), and its bias for Gaussian
  data is removed: E[log det S] = log det Sigma + sum_i psi((n - i) / 2) + d log(2 / (n - 1))
  for a sample covariance S of n draws in d dimensions, so each of the three log-determinants is
  unbiased. When dx + dy exceeds half the samples (or n - 80), the larger side is first
  projected onto its leading principal components (`budget`, `min_dof`): a function of one
  variable cannot add information, so this reads I(X; PCA(Y)) <= I(X; Y), and keeps n - d large
  enough for a small variance. It sees the dependence a Gaussian copula carries (exact there, a
  lower bound when X and Y are each Gaussian). Calibrated in the analysis's shapes
  (`benchmarks/bench_mi.py`): 11-d X against a 128- or 768-d Y at n = 1000 reads within 0.1 nats
  of 0 on independent data and within 20% of the closed form on noisy Gaussian linear maps
  carrying 1-10 nats; at n = 100 it stays near 0 on independent data but under-reads real
  dependence by 60-90% (a lower bound: use ~1000 samples).
- ``"ksg"``: the Kraskov-Stoegbauer-Grassberger estimator 1 (Kraskov et al. 2004; max-norm,
  k=5 neighbours, scipy cKDTree) on copula-normalised data, minus the bias KSG shows on
  Gaussian surrogates of the same covariance and size: I = I_gauss(cov) + KSG(data) -
  mean KSG(surrogates), I_gauss bias-corrected as above. Plain KSG underestimates by 20-40% at
  5 + 5 dimensions and a few thousand samples; the correction brings jointly Gaussian data (and
  any monotone transform of it) within a few percent, and leaves data near 0 when independent.
  Best in a few dimensions a side; it needs more samples than dimensions.
  ``preset="plain"`` (``copula=False, reference_draws=0``) is the textbook one.
- ``"gaussian"``: the plain closed form for a Gaussian with the sample covariance, equal to
  -1/2 sum_i log(1 - rho_i^2) over the canonical correlations rho_i, reduced like ``gcmi``
  when the samples are too few; ``copula=True`` and ``bias_correction=True`` give ``gcmi``.
  Outside Gaussians it sees only linear dependence and can err either way.
- ``"mine"``: the Donsker-Varadhan bound E_P[T] - log E_{P_X P_Y}[e^T] maximised over an MLP
  critic T (3 x 400 ReLU), Adam, with the moving-average gradient correction of Belghazi et al.
  (2018). By default the critic trains on half the samples and `MIResult.value` is the bound on
  the other half; `MIResult.train_value` is the (optimistic) bound on the training half.
  ``preset="paper"`` reproduces the paper's protocol: lr 1e-4, batch 50, 1000 passes, trained
  and evaluated on the same samples, one random permutation for the marginal term, raw inputs.
  On independent 11-d vs 128-d data at n = 100 that protocol reads several nats: its values
  must be read against `permutation_null`.
- ``"infonce"``: the InfoNCE bound (van den Oord et al. 2018) with the same critic, scored on all
  b x b pairs of a batch (so b times the cost of MINE); it cannot exceed log(batch_size)
  (3.9 nats at 50), so it saturates on strongly dependent data.

`permutation_null` estimates the same quantity with X's rows shuffled (I = 0 by construction):
what the estimator reads on no dependence at this shape and size.

Common options: ``seeds=[...]`` or ``n_seeds=k`` (seeds seed, seed + 1, ...) run the estimator
once per seed; ``reduce=m`` first projects X and Y each onto its first m principal components
(the estimate is then of I(PCA_m(X); PCA_m(Y)) <= I(X; Y)). Method options are the fields of
`KSGOptions`, `GaussianOptions` and `CriticOptions`; unknown ones raise `DtlensError`.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from scipy.spatial import cKDTree
from scipy.special import digamma, ndtri
from scipy.stats import rankdata
from torch import nn

from dtlens.errors import DtlensError

Array = np.ndarray | torch.Tensor
Method = Literal["gcmi", "ksg", "gaussian", "mine", "infonce"]
DEFAULT_METHOD: Method = "gcmi"


@dataclass(frozen=True)
class MIResult:
    """An estimate in nats; several seeds are averaged over the runs that did not diverge."""

    value: float
    method: str
    values: tuple[float, ...]
    seeds: tuple[int, ...]
    train_value: float | None
    std: float
    diverged: int
    elapsed_s: float
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class KSGOptions:
    """`copula`: rank-transform each coordinate to normal scores first. `reference_draws`:
    Gaussian surrogates for the bias correction (0 = none). Both off = plain Kraskov."""

    k: int = 5
    jitter: float = 1e-10
    copula: bool = True
    reference_draws: int = 3


@dataclass(frozen=True)
class GaussianOptions:
    """`copula`: rank-transform each coordinate to normal scores first (Gaussian-copula MI).
    `bias_correction`: remove the Gaussian small-sample bias of each log-determinant.
    `budget`, `min_dof`: at most `budget` n dimensions (dx + dy) and at least `min_dof` samples
    more than dimensions; the larger side is projected onto its principal components when
    there are more (fewer dimensions: less variance, less of a representation seen)."""

    copula: bool = False
    bias_correction: bool = False
    budget: float = 0.5
    min_dof: int = 80


@dataclass(frozen=True)
class GCMIOptions(GaussianOptions):
    """The calibrated default: Gaussian-copula MI with the bias correction."""

    copula: bool = True
    bias_correction: bool = True


@dataclass(frozen=True)
class CriticOptions:
    """Training of the MINE / InfoNCE critic. `iterations` counts passes over the training
    samples (the released code's ``iters``), each made of full batches only."""

    hidden: tuple[int, ...] = (400, 400, 400)
    lr: float = 1e-4
    batch_size: int = 50
    iterations: int = 1000
    holdout: float = 0.5
    ema_alpha: float = 0.01
    eval_permutations: int = 10
    standardize: bool = True


PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "ksg": {"plain": {"copula": False, "reference_draws": 0}},
    "mine": {"paper": {"holdout": 0.0, "eval_permutations": 1, "standardize": False}},
}


def gaussian_mi(cov: Float[Array, "d d"], dx: int) -> float:
    """I(X; Y) of a Gaussian with covariance `cov` over (X, Y), X the first `dx` coordinates:
    1/2 (log det S_X + log det S_Y - log det S)."""
    c = np.asarray(cov, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or not 0 < dx < c.shape[0]:
        raise DtlensError(
            f"gaussian_mi: need a square (d, d) covariance and 0 < dx < d, got {c.shape}, dx={dx}"
        )
    logdets = []
    for block in (c, c[:dx, :dx], c[dx:, dx:]):
        sign, logdet = np.linalg.slogdet(block)
        if sign <= 0:
            raise DtlensError("gaussian_mi: covariance is not positive definite")
        logdets.append(logdet)
    return 0.5 * (logdets[1] + logdets[2] - logdets[0])


def random_gaussian_cov(
    dx: int, dy: int, seed: int = 0, rho: tuple[float, float] = (0.3, 0.8)
) -> Float[np.ndarray, "d d"]:
    """A test case of known MI: a random covariance over (X, Y), correlated within X and within
    Y, with canonical correlations drawn uniformly from `rho` (MI = -1/2 sum log(1 - rho_i^2))."""
    rng = np.random.default_rng(seed)

    def correlation(d: int) -> np.ndarray:
        a = rng.standard_normal((d, d))
        c = a @ a.T / d + 0.5 * np.eye(d)
        s = np.sqrt(np.diag(c))
        return c / np.outer(s, s)

    def rotation(d: int) -> np.ndarray:
        q, r = np.linalg.qr(rng.standard_normal((d, d)))
        return q * np.sign(np.diag(r))

    sx, sy = correlation(dx), correlation(dy)
    m = min(dx, dy)
    canonical = np.zeros((dx, dy))
    canonical[np.arange(m), np.arange(m)] = rng.uniform(*rho, size=m)
    cross = np.linalg.cholesky(sx) @ rotation(dx) @ canonical @ rotation(dy).T
    cross = cross @ np.linalg.cholesky(sy).T
    return np.block([[sx, cross], [cross.T, sy]])


def _as_samples(a: Array, name: str) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().double().numpy()
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise DtlensError(f"{name}: expected (samples, features), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise DtlensError(f"{name}: contains NaN or inf")
    return a


def _standardise(a: np.ndarray, ref: np.ndarray | None = None) -> np.ndarray:
    ref = a if ref is None else ref
    std = ref.std(axis=0)
    return (a - ref.mean(axis=0)) / np.where(std > 0, std, 1.0)


def _log_det_bias(d: int, n: int) -> float:
    """E[log det S] - log det Sigma for the sample covariance S of n Gaussian draws in d dims."""
    return float(digamma((n - np.arange(1, d + 1)) / 2).sum() + d * math.log(2 / (n - 1)))


def gaussian_mi_unbiased(xy: Float[np.ndarray, "n d"], dx: int) -> float:
    """`gaussian_mi` of the sample covariance of `xy`, minus its bias on Gaussian data."""
    n, d = xy.shape
    bias = _log_det_bias(dx, n) + _log_det_bias(d - dx, n) - _log_det_bias(d, n)
    return gaussian_mi(np.cov(xy, rowvar=False), dx) - 0.5 * bias


def fitted_dims(dx: int, dy: int, total: int) -> tuple[int, int]:
    """(dx, dy) cut down to at most `total` together: the larger side first, then both."""
    total = max(total, 2)
    if dx + dy <= total:
        return dx, dy
    small = min(dx, dy)
    if small <= total // 2:
        return (dx, total - dx) if dx == small else (total - dy, dy)
    return total // 2, total // 2


def _reduced(a: np.ndarray, m: int) -> np.ndarray:
    """`a` standardised and projected onto its first m principal components, if it has more."""
    return a if a.shape[1] <= m else _pca(_standardise(a), m)


def _pca(a: np.ndarray, m: int) -> np.ndarray:
    if a.shape[1] <= m:
        return a
    a = a - a.mean(axis=0)
    _, _, vt = np.linalg.svd(a, full_matrices=False)
    return a @ vt[:m].T


def _copula(a: np.ndarray, rng: np.random.Generator, jitter: float) -> np.ndarray:
    """Normal scores of each coordinate's ranks (ties broken by `jitter`): an invertible
    monotone map per coordinate, so MI is unchanged, and every marginal becomes N(0, 1)."""
    a = _standardise(a) + jitter * rng.standard_normal(a.shape)
    return ndtri((rankdata(a, axis=0) - 0.5) / len(a))


def _plain_ksg(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """KSG estimator 1: psi(k) + psi(n) - < psi(n_x + 1) + psi(n_y + 1) >, max-norm."""
    xy = np.hstack([x, y])
    # distance to the k-th neighbour in the joint space, then strict counts within it
    eps = cKDTree(xy).query(xy, k=[k + 1], p=np.inf)[0][:, 0]
    radius = np.nextafter(eps, 0)
    nx = cKDTree(x).query_ball_point(x, radius, p=np.inf, return_length=True)
    ny = cKDTree(y).query_ball_point(y, radius, p=np.inf, return_length=True)
    # the counts include the point itself: psi(n_x + 1) = psi(nx)
    return float(digamma(k) + digamma(len(x)) - np.mean(digamma(nx) + digamma(ny)))


def _ksg(x: np.ndarray, y: np.ndarray, seed: int, o: KSGOptions) -> tuple[float, None]:
    """KSG; with `reference_draws`, minus its bias measured on Gaussian data of the same
    covariance and size: I = I_gauss + (KSG(data) - mean KSG(Gaussian surrogates))."""
    n, dx = x.shape
    if n < o.k + 2:
        raise DtlensError(f"ksg with k={o.k} needs at least {o.k + 2} samples, got {n}")
    rng = np.random.default_rng(seed)
    if o.copula:
        x, y = _copula(x, rng, o.jitter), _copula(y, rng, o.jitter)
    else:
        x = _standardise(x) + o.jitter * rng.standard_normal(x.shape)
        y = _standardise(y) + o.jitter * rng.standard_normal(y.shape)
    value = _plain_ksg(x, y, o.k)
    if o.reference_draws > 0:
        if n <= x.shape[1] + y.shape[1]:
            raise DtlensError(
                f"ksg's Gaussian reference needs more samples ({n}) than dimensions "
                f"({x.shape[1] + y.shape[1]}): use more --samples or the default --method gcmi"
            )
        xy = np.hstack([x, y])
        cov = np.cov(xy, rowvar=False)
        reference = gaussian_mi_unbiased(xy, dx)
        draws = [
            rng.multivariate_normal(np.zeros(len(cov)), cov, size=n)
            for _ in range(o.reference_draws)
        ]
        value -= np.mean([_plain_ksg(g[:, :dx], g[:, dx:], o.k) for g in draws]) - reference
    return value, None


def _gaussian(x: np.ndarray, y: np.ndarray, seed: int, o: GaussianOptions) -> tuple[float, None]:
    n = len(x)
    if n < 4:
        raise DtlensError(f"gaussian MI needs at least 4 samples, got {n}")
    if not 0 < o.budget <= 1:
        raise DtlensError(f"budget must be in (0, 1], got {o.budget}")
    mx, my = fitted_dims(x.shape[1], y.shape[1], min(int(o.budget * n), n - o.min_dof))
    x, y = _reduced(x, mx), _reduced(y, my)
    if o.copula:
        rng = np.random.default_rng(seed)
        x, y = _copula(x, rng, 1e-10), _copula(y, rng, 1e-10)
    xy = np.hstack([x, y])
    if o.bias_correction:
        return gaussian_mi_unbiased(xy, x.shape[1]), None
    return gaussian_mi(np.cov(xy, rowvar=False), x.shape[1]), None


def _critic(d_in: int, hidden: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(d_in, width), nn.ReLU()]
        d_in = width
    return nn.Sequential(*layers, nn.Linear(d_in, 1))


def _scores(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return net(torch.cat([x, y], dim=1)).squeeze(1)


def _dv_bound(net: nn.Module, x: torch.Tensor, y: torch.Tensor, permutations: int) -> float:
    """E_P[T] - log E_Q[e^T], the product of marginals Q sampled by shuffling y."""
    with torch.no_grad():
        joint = _scores(net, x, y).mean()
        marginal = torch.cat(
            [_scores(net, x, y[torch.randperm(len(y))]) for _ in range(permutations)]
        )
        return float(joint - (torch.logsumexp(marginal, 0) - math.log(len(marginal))))


def _nce_bound(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """InfoNCE: mean_i [T(x_i, y_i) - log mean_j e^T(x_i, y_j)] over one batch."""
    b = len(x)
    scores = _scores(net, x.repeat_interleave(b, dim=0), y.repeat(b, 1)).view(b, b)
    return (scores.diagonal() - torch.logsumexp(scores, dim=1)).mean() + math.log(b)


class _MineLoss:
    """Negative DV bound whose gradient uses a moving average of E_Q[e^T] in the denominator
    of grad log E_Q[e^T] (Belghazi et al. 2018, section 3.2), removing the minibatch bias."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.ema: torch.Tensor | None = None

    def __call__(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        joint = _scores(net, x, y).mean()
        marginal = _scores(net, x, y[torch.randperm(len(y))])
        mean_exp = torch.exp(torch.logsumexp(marginal, 0) - math.log(len(marginal)))
        batch = mean_exp.detach()
        self.ema = batch if self.ema is None else (1 - self.alpha) * self.ema + self.alpha * batch
        return -(joint - mean_exp / self.ema)


def _fit_critic(
    x: torch.Tensor,
    y: torch.Tensor,
    o: CriticOptions,
    loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
) -> nn.Module | None:
    """Adam on shuffled full batches; None if the loss stopped being finite (diverged)."""
    net = _critic(x.shape[1] + y.shape[1], o.hidden)
    opt = torch.optim.Adam(net.parameters(), lr=o.lr)
    n, b = len(x), o.batch_size
    for _ in range(o.iterations):
        order = torch.randperm(n)
        for start in range(0, n - b + 1, b):
            idx = order[start : start + b]
            loss = loss_fn(net, x[idx], y[idx])
            if not torch.isfinite(loss):
                return None
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net


def _split(
    x: np.ndarray, y: np.ndarray, o: CriticOptions, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train x, train y, eval x, eval y) as float32 tensors; eval is train when holdout=0."""
    n = len(x)
    if not 0 <= o.holdout < 1:
        raise DtlensError(f"holdout must be in [0, 1), got {o.holdout}")
    order = np.random.default_rng(seed).permutation(n)
    n_eval = round(n * o.holdout)
    train, held = (order, order) if n_eval == 0 else (order[n_eval:], order[:n_eval])
    if len(train) < o.batch_size or len(held) < 2:
        raise DtlensError(
            f"{n} samples are too few for batch_size={o.batch_size} with holdout={o.holdout}: "
            f"the critic trains on {len(train)} and is evaluated on {len(held)}"
        )
    if o.standardize:
        x, y = _standardise(x, x[train]), _standardise(y, y[train])
    t = [torch.as_tensor(a, dtype=torch.float32) for a in (x[train], y[train], x[held], y[held])]
    return t[0], t[1], t[2], t[3]


def _mine(x: np.ndarray, y: np.ndarray, seed: int, o: CriticOptions) -> tuple[float, float]:
    xt, yt, xe, ye = _split(x, y, o, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _fit_critic(xt, yt, o, _MineLoss(o.ema_alpha))
        if net is None:
            return math.nan, math.nan
        value = _dv_bound(net, xe, ye, o.eval_permutations)
        same = o.holdout == 0
        return value, value if same else _dv_bound(net, xt, yt, o.eval_permutations)


def _nce_eval(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """Mean InfoNCE bound over shuffled full batches (one batch if there are fewer samples)."""
    order = torch.randperm(len(x))
    b = min(batch_size, len(x))
    with torch.no_grad():
        bounds = [
            float(_nce_bound(net, x[order[s : s + b]], y[order[s : s + b]]))
            for s in range(0, len(x) - b + 1, b)
        ]
    return float(np.mean(bounds))


def _infonce(x: np.ndarray, y: np.ndarray, seed: int, o: CriticOptions) -> tuple[float, float]:
    xt, yt, xe, ye = _split(x, y, o, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _fit_critic(xt, yt, o, lambda net, xb, yb: -_nce_bound(net, xb, yb))
        if net is None:
            return math.nan, math.nan
        value = _nce_eval(net, xe, ye, o.batch_size)
        return value, value if o.holdout == 0 else _nce_eval(net, xt, yt, o.batch_size)


_METHODS: dict[str, tuple[type, Callable[..., tuple[float, float | None]]]] = {
    "gcmi": (GCMIOptions, _gaussian),
    "ksg": (KSGOptions, _ksg),
    "gaussian": (GaussianOptions, _gaussian),
    "mine": (CriticOptions, _mine),
    "infonce": (CriticOptions, _infonce),
}


def _options(method: str, preset: str | None, options: dict[str, Any]) -> Any:
    if method not in _METHODS:
        raise DtlensError(f"unknown MI method {method!r}: use one of {sorted(_METHODS)}")
    cls = _METHODS[method][0]
    if preset is not None:
        presets = PRESETS.get(method, {})
        if preset not in presets:
            raise DtlensError(f"unknown preset {preset!r} for {method}: have {sorted(presets)}")
        options = {**presets[preset], **options}
    try:
        return cls(**options)
    except TypeError:
        valid = sorted(cls.__dataclass_fields__) + ["n_seeds", "preset", "reduce", "seeds"]
        raise DtlensError(
            f"unknown option(s) {sorted(options)} for {method}: valid are {valid}"
        ) from None


def estimate(
    X: Float[Array, "n dx"],
    Y: Float[Array, "n dy"],
    method: Method = DEFAULT_METHOD,
    seed: int = 0,
    **options: Any,
) -> MIResult:
    """Estimate I(X; Y) in nats. See the module docstring for methods and options."""
    x, y = _as_samples(X, "X"), _as_samples(Y, "Y")
    if len(x) != len(y):
        raise DtlensError(f"X and Y must pair the same samples, got {len(x)} and {len(y)} rows")
    seeds = options.pop("seeds", None)
    n_seeds = options.pop("n_seeds", 1)
    seeds = tuple(seeds) if seeds is not None else tuple(range(seed, seed + n_seeds))
    if not seeds:
        raise DtlensError("no seeds given")
    reduce = options.pop("reduce", None)
    if reduce is not None and (not isinstance(reduce, int) or reduce < 1):
        raise DtlensError(f"reduce must be a positive number of components, got {reduce!r}")
    preset = options.pop("preset", None)
    opts = _options(method, preset, options)
    if reduce is not None:
        x, y = _pca(x, reduce), _pca(y, reduce)
    run = _METHODS[method][1]
    start = time.perf_counter()
    runs = [run(x, y, s, opts) for s in seeds]
    elapsed = time.perf_counter() - start
    values = np.array([value for value, _ in runs])
    ok = np.isfinite(values)
    if not ok.all():
        warnings.warn(
            f"{method}: {int((~ok).sum())} of {len(seeds)} runs diverged (NaN); "
            "the value averages the others",
            stacklevel=2,
        )
    train = None if runs[0][1] is None else np.array([t for _, t in runs])
    return MIResult(
        value=float(values[ok].mean()) if ok.any() else math.nan,
        method=method,
        values=tuple(float(v) for v in values),
        seeds=seeds,
        train_value=None if train is None or not ok.any() else float(train[ok].mean()),
        std=float(values[ok].std(ddof=1)) if ok.sum() > 1 else math.nan,
        diverged=int((~ok).sum()),
        elapsed_s=elapsed,
        options={**asdict(opts), "reduce": reduce, "preset": preset},
    )


def permutation_null(
    X: Float[Array, "n dx"],
    Y: Float[Array, "n dy"],
    shuffles: int = 5,
    seed: int = 0,
    method: Method = DEFAULT_METHOD,
    **options: Any,
) -> Float[np.ndarray, " shuffles"]:
    """`estimate` (first seed only) with X's rows shuffled, once per shuffle: I = 0 by
    construction, so the values are what `method` reads on no dependence at this shape and n."""
    if shuffles < 1:
        raise DtlensError(f"shuffles must be at least 1, got {shuffles}")
    x = _as_samples(X, "X")
    options = {k: v for k, v in options.items() if k not in ("seeds", "n_seeds")}
    rng = np.random.default_rng([seed, 0x5EED])
    return np.array(
        [
            estimate(x[rng.permutation(len(x))], Y, method, seed=seed + i, **options).value
            for i in range(shuffles)
        ]
    )
