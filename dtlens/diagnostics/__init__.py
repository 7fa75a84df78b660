"""The paper's diagnostics as pure estimators on arrays.

One module per analysis: `cka` (representation similarity), `mutual_info` (MINE, InfoNCE, KSG,
Gaussian), `weights` (weight change), `gradients` (gradient confusion and norms), `attention`
(mean attention distance). The analyses on runs that apply them (the `Diagnostic` contract) are
`dtlens.diagnostics.analyses.NAME`, named as these. Import the module you need; this package
imports nothing heavy on its own.
"""
