"""The interp analyses on the Diagnostic contract, one module each, named as its diagnostic and
its command (`dtlens.interp.registry` lists them); the tools they apply are `dtlens.interp`'s."""

from dtlens.diagnostics.contract import Reads

#: The roles the interp analyses compare (image runs are left out to keep `make demo` short).
ROLES = ("language", "random")
#: What `dtlens reproduce` computes them on: the K=20 runs of those roles.
READS = Reads("main", roles=ROLES)
