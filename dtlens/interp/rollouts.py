"""Closed-loop effects of interventions: what they do to the returns of evaluation rollouts.

`rollout_effect(model_or_run, interventions, episodes, seed)` rolls out the unintervened policy
(the baseline) and the policy under each named intervention on the same environment seeds, all
episodes of one policy side by side (`dtlens.train.evaluate`), and pairs every episode with its
baseline: the paired difference of normalized scores, its mean and 95% t interval.
`return_sweep(run, targets)` gives the achieved return against the return-to-go target.

Every rollout runs TransformerLens's hooked blocks (`DecisionTransformer.hooked_path`), the
baseline too: the fused blocks give the same numbers to float rounding, which a long closed-loop
episode can amplify, so a no-op intervention gives exactly the baseline's returns.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np
import xarray as xr

from dtlens.data.scores import normalized_score, target_return
from dtlens.diagnostics.contract import Table
from dtlens.errors import DtlensError
from dtlens.model.dt import DecisionTransformer
from dtlens.stats import compare
from dtlens.train.evaluate import EvalResult, evaluate
from dtlens.train.run import Run

#: An intervention: given the model, a context manager within which it is intervened on.
Intervention = Callable[[DecisionTransformer], AbstractContextManager]
#: Episodes when the run evaluated none (an imported run).
DEFAULT_EPISODES = 10


@dataclass(frozen=True)
class Rollouts:
    """How a policy is rolled out: its environment, state normalisation, return-to-go target,
    context and episode length."""

    env_id: str
    state_mean: np.ndarray
    state_std: np.ndarray
    target_return: float
    context_len: int
    rtg_scale: float
    max_steps: int
    episodes: int

    @classmethod
    def of(cls, run: Run, max_steps: int | None = None) -> Rollouts:
        """As the run evaluated itself during training, episodes cut at `max_steps` if given."""
        if max_steps is not None and max_steps < 1:
            raise DtlensError(f"max_steps must be at least 1, got {max_steps}")
        t, data = run.train_config, run.config["data"]
        return cls(
            env_id=data["env_id"],
            state_mean=np.asarray(data["state_mean"]),
            state_std=np.asarray(data["state_std"]),
            target_return=t.target_return or target_return(data["env_id"]),
            context_len=t.context_len,
            rtg_scale=t.rtg_scale,
            max_steps=max_steps or t.eval_max_steps,
            episodes=t.eval_episodes or DEFAULT_EPISODES,
        )

    def run(
        self, model: DecisionTransformer, episodes: int, seed: int, target: float | None = None
    ) -> EvalResult:
        with model.hooked_path():
            return evaluate(
                model,
                self.env_id,
                self.state_mean,
                self.state_std,
                self.target_return if target is None else target,
                episodes=episodes,
                context_len=self.context_len,
                rtg_scale=self.rtg_scale,
                max_steps=self.max_steps,
                seed=seed,
            )


def _policy(
    model_or_run: DecisionTransformer | Run, epoch: int, rollouts: Rollouts | None
) -> tuple[DecisionTransformer, Rollouts]:
    if isinstance(model_or_run, Run):
        return model_or_run.load_model(epoch), rollouts or Rollouts.of(model_or_run)
    if rollouts is None:
        raise DtlensError("rolling out a bare model needs its Rollouts (env, normalisation, ...)")
    return model_or_run, rollouts


def paired_change(scores: np.ndarray, baseline: np.ndarray) -> tuple[float, tuple[float, float]]:
    """The mean of `scores - baseline` over episodes (last axis) and its 95% paired t interval
    (NaN with fewer than 2 episodes)."""
    diff = np.asarray(scores, dtype=float) - np.asarray(baseline, dtype=float)
    # Welch's interval against a constant 0 is the one-sample (paired) t interval.
    c = compare(diff, np.zeros_like(diff), expect="two-sided")
    return c.effect, c.ci


def change_table(ds: xr.Dataset, dim: str, title: str) -> Table:
    """A row per intervention along `dim` of a `rollout_effect` result: its mean score, the score
    change and its 95% interval."""
    rows = [
        [v.item(), float(ds["score"].sel({dim: v}).mean()), float(c), f"[{lo:+.1f}, {hi:+.1f}]"]
        for v, c, (lo, hi) in zip(
            ds[dim].values, ds["score_change"].values, ds["score_change_ci"].values, strict=True
        )
    ]
    return Table(title, [dim, "score", "change", "95% CI"], rows)


def change_errors(ds: xr.Dataset) -> np.ndarray:
    """Error bar lengths (2, intervention) of `score_change` to its interval (0 where none)."""
    change, ci = ds["score_change"].values, ds["score_change_ci"].values
    return np.nan_to_num(np.abs(np.stack([change - ci[:, 0], ci[:, 1] - change])))


def rollout_effect(
    model_or_run: DecisionTransformer | Run,
    interventions: Mapping[str, Intervention],
    episodes: int | None = None,
    seed: int = 0,
    *,
    epoch: int = -1,
    rollouts: Rollouts | None = None,
    progress: Callable[[str], None] | None = None,
) -> xr.Dataset:
    """Returns and normalized scores (intervention, episode) under each of `interventions`
    ({name: model -> context manager}) and of the baseline (episode) on env seeds seed, seed+1,
    ...; `score_change` (intervention) is the mean paired difference intervened - baseline with
    its 95% interval `score_change_ci` (intervention, bound). A Run's checkpoint `epoch` rolls out
    as the run evaluated itself (`Rollouts.of`); a bare model needs `rollouts`. `progress` gets a
    line per policy rolled out."""
    model, how = _policy(model_or_run, epoch, rollouts)
    episodes = how.episodes if episodes is None else episodes
    if episodes < 1:
        raise DtlensError(f"episodes must be at least 1, got {episodes}")
    say = progress or (lambda line: None)
    base = how.run(model, episodes, seed)
    say(f"baseline: return {base.return_mean:.0f}")
    results = {}
    for name, intervention in interventions.items():
        with intervention(model):
            results[name] = how.run(model, episodes, seed)
        say(f"{name}: return {results[name].return_mean:.0f}")
    names = list(results)

    def stack(attr: str) -> np.ndarray:
        return np.asarray([getattr(results[n], attr) for n in names]).reshape(len(names), episodes)

    returns = stack("returns")
    scores = np.asarray(normalized_score(how.env_id, returns)).reshape(returns.shape)
    base_scores = np.asarray(normalized_score(how.env_id, base.returns))
    changes = [paired_change(s, base_scores) for s in scores]
    return xr.Dataset(
        {
            "return": (("intervention", "episode"), returns),
            "score": (("intervention", "episode"), scores),
            "length": (("intervention", "episode"), stack("lengths")),
            "baseline_return": (("episode",), base.returns),
            "baseline_score": (("episode",), base_scores),
            "baseline_length": (("episode",), base.lengths),
            "score_change": (("intervention",), np.asarray([m for m, _ in changes], dtype=float)),
            "score_change_ci": (
                ("intervention", "bound"),
                np.asarray([ci for _, ci in changes], dtype=float).reshape(len(names), 2),
            ),
        },
        coords={"intervention": names, "episode": np.arange(episodes), "bound": ["low", "high"]},
        attrs={
            "env_id": how.env_id,
            "target_return": how.target_return,
            "max_steps": how.max_steps,
            "episodes": episodes,
            "seed": seed,
        },
    )


def return_sweep(
    run: Run,
    targets: Sequence[float],
    episodes: int | None = None,
    seed: int = 0,
    *,
    epoch: int = -1,
    max_steps: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> xr.Dataset:
    """The return the run's checkpoint `epoch` achieves conditioned on each return-to-go target
    (episodes of at most `max_steps`, default the run's): `return` (target, episode),
    `return_mean`, `return_std`, `score_mean` (target)."""
    if not targets:
        raise DtlensError("return sweep needs at least one target")
    how = Rollouts.of(run, max_steps)
    episodes = how.episodes if episodes is None else episodes
    if episodes < 1:
        raise DtlensError(f"episodes must be at least 1, got {episodes}")
    model = run.load_model(epoch)
    say = progress or (lambda line: None)
    results = []
    for target in targets:
        results.append(how.run(model, episodes, seed, target=float(target)))
        say(f"target {target:g}: return {results[-1].return_mean:.0f}")
    returns = np.stack([r.returns for r in results])
    return xr.Dataset(
        {
            "return": (("target", "episode"), returns),
            "return_mean": (("target",), returns.mean(1)),
            "return_std": (("target",), returns.std(1)),
            "score_mean": (("target",), [r.score_mean for r in results]),
        },
        coords={"target": np.asarray(targets, dtype=float), "episode": np.arange(episodes)},
        attrs={
            "env_id": how.env_id,
            "max_steps": how.max_steps,
            "episodes": episodes,
            "seed": seed,
        },
    )
