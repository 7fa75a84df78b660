"""The paper's reported numbers (PAPER.md), next to which the report puts ours. (The paper's
claims are in the findings of `dtlens.diagnostics.analyses`.)"""

#: Table 1, D4RL normalized score on medium datasets, K=20: (mean, std or None).
TABLE1 = {
    "hopper": {"language": (79.5, 1.3), "image": (2.6, 0.3), "random": (67.7, 3.0)},
    "halfcheetah": {"language": (48.4, None), "image": (1.3, None), "random": (48.6, None)},
    "walker2d": {"language": (71.2, None), "image": (4.3, None), "random": (71.0, None)},
}
#: Table 1 with K=1 (no context).
TABLE1_K1 = {
    "hopper": {"language": (81.3, 2.5), "random": (-0.3, 0.1)},
    "halfcheetah": {"language": (47.9, None), "random": (49.2, None)},
    "walker2d": {"language": (71.2, None), "random": (35.6, 33.5)},
}
