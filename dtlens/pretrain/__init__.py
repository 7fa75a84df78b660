"""Pretraining of the embedded backbones: `text` (language), `image` and `synthetic` (Markov chain).

`dtlens pretrain text|image` trains on real corpora (`english`, `fashion`) until the held-out loss
plateaus, resumable (`loop.LongRun`); `--corpus pydoc|digits` are the first, toy builds, which are
the assets shipped now. `dtlens pretrain synthetic` is the control of Wang et al. (2024). Builds go
to `dtlens.paths.backbone_cache_path(NAME)` or --out; `dtlens.paths.embedded_backbone_path` finds
them; `manifest` keeps the shipped ones' hashes.
"""

#: Optimiser steps of each embedded backbone's build (the committed assets used these).
STEPS = {"text": 600, "image": 400, "synthetic": 600}
