"""Tiny language and image pretraining: the `mini` preset's embedded `text` and `image` backbones.

`dtlens pretrain text|image` builds them (`dtlens.pretrain.text`, `dtlens.pretrain.image`) into
`dtlens.paths.backbone_cache_path(NAME)`; `dtlens.paths.embedded_backbone_path` finds them.
"""

#: Optimiser steps of each embedded backbone's build (the committed assets used these).
STEPS = {"text": 600, "image": 400, "synthetic": 600}
