"""The paper's diagnostics as pure estimators on arrays.

One module per analysis: `cka` (representation similarity), `mutual_info` (MINE, InfoNCE, KSG,
Gaussian), `attention` (mean attention distance), `gradients` (gradient confusion and norms).
Import the module you need; this package imports nothing heavy on its own.
"""
