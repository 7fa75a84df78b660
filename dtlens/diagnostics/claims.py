"""The paper's reported numbers (PAPER.md), next to which the report puts ours."""

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
CLAIMS = {
    "cka": "Pretrained models change their representations more than random init: CKA between "
    "each layer before and after fine-tuning is mostly < 0.2 for GPT-2 and ImageGPT, higher for "
    "random init (LayerNorm peaks 0.4-0.9).",
    "mi": "Pretrained models hold less information about the data: MINE estimates of I(X;T) and "
    "I(Y;T) are 1-5 nats for random init, lower for GPT-2, ~0 for ImageGPT.",
    "weights": "Pretrained weights barely move during fine-tuning (cosine similarity ~1).",
    "gradients": "Early in fine-tuning (epoch 1), ImageGPT's per-sample gradient norms sit at the "
    "clip value (~0.248) with ~89% of the norm in block 0's first norm layer; clipping starves "
    "the rest. Without clipping the action error drops but returns barely improve. Gradient "
    "confusion: GPT-2 -0.97, ImageGPT -0.87, random -0.39.",
    "no_context": "Without context (K=1) GPT-2 converges as fast as with context; random init "
    "slows down (Hopper: 81.3 vs -0.3).",
    "block_swap": "Replacing one block of a random-init model by the pretrained one already speeds "
    "up learning (action error, mean return); only block 1 fails.",
    "attention": "The attention distance of pretrained models changes less during fine-tuning "
    "(GPT-2 ~0 except block 1) than random init's (0.05-0.12).",
}
