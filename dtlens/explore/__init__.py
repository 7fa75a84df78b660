"""`dtlens explore`: a local web app over run folders, a study or a reproduction (views of Table 1,
learning curves, attention, attribution, the action lens, patching, ablation, CKA, gradients and
a rollout replay). `dtlens.explore.server.make_server(root)` builds it."""
