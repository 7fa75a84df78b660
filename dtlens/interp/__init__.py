"""Mechanistic tools for Decision Transformers: which components carry an action.

- `action_attribution(model, batch)`: each head's, MLP's and embedding's direct contribution to
  the pre-tanh action at the last timestep (sums exactly to it);
- `activation_patching(model, clean, corrupted, hooks, positions=None, donor=None)`: how much of
  the clean-corrupted action gap one activation carries, also across models;
- `action_lens(model, batch)`: the action head read off every layer's residual stream;
- `linear_probe(activations, target)`: held-out ridge R^2 per layer and token type, with a
  shuffled-target control;
- `attention_view(model, batch, path)`: a self-contained HTML page of every head's pattern;
- interventions: `ablate(model, components, how, reference)` and `steer(model, layer, vector)`
  (context managers), `steering_vector(model, windows_a, windows_b, layer)`,
  `rollout_effect(model_or_run, interventions, episodes, seed)` (what they do to the return)
  and `return_sweep(run, targets)` (achieved return against the return-to-go target).

The analyses on runs built on them (the Diagnostic contract) are `dtlens.interp.analyses.NAME`,
listed by `dtlens.interp.registry.INTERP`, which `dtlens reproduce` and the report iterate.
"""

from dtlens.lazy import lazy_exports

_EXPORTS = {
    "action_attribution": "dtlens.interp.attribution",
    "activation_patching": "dtlens.interp.patching",
    "action_lens": "dtlens.interp.lens",
    "linear_probe": "dtlens.interp.probe",
    "attention_view": "dtlens.interp.viewer",
    "ablate": "dtlens.interp.interventions",
    "steer": "dtlens.interp.interventions",
    "steering_vector": "dtlens.interp.interventions",
    "rollout_effect": "dtlens.interp.rollouts",
    "return_sweep": "dtlens.interp.rollouts",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
