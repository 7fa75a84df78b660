"""The paper's diagnostics on the Diagnostic contract, one module each, named as its diagnostic,
its command and its files (`dtlens.diagnostics.registry` lists them); the estimators they apply
are the modules of `dtlens.diagnostics` of the same name."""
