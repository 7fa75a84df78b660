"""A training step (forward, backward, clip 0.25, AdamW): dtlens vs HF DecisionTransformerModel.

Both models have the same size and weights (dtlens's is converted from HF's with
`DecisionTransformer.from_hf`), the paper's dropout (residual 0.2, attention 0.1, embedding 0.1)
in train mode, and step on the same random batch (a fifth of the windows left-padded) with the
masked action MSE of `dtlens.train.loop.action_loss`. Variants:

- dtlens: no hooks attached (the DT picks its own path; see `fast_path` in the table caption);
- dtlens hooked path: `fast_path = False`, no hooks (only where `DecisionTransformer` has the
  switch): the TransformerLens blocks every hook goes through;
- dtlens + capture: forward hooks on every `blocks.{i}.hook_resid_post` and
  `blocks.{i}.attn.hook_pattern` storing the (detached) tensors;
- HF: its default attention implementation; HF eager: `attn_implementation="eager"`;
- HF eager + capture: `output_hidden_states=True, output_attentions=True`, the tensors kept
  (HF returns attention weights only from eager attention).

Every variant has its own model copy and optimizer; they are timed round-robin in one process
(median of `--repeats` steps after 2 warm-up steps, 1 for the paper size), on `--threads` torch
threads (default 1). The paper size runs at a smaller batch (`--paper-batch`): at batch 64 one
step takes ~40 s on one CPU thread.

    .venv/bin/python benchmarks/bench_train_step.py [--quick] [--repeats 7] [--paper-batch 8]
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import alternate, machine_line, markdown_table, single_thread  # noqa: E402
from dtlens import DecisionTransformer  # noqa: E402
from dtlens.data.windows import Batch  # noqa: E402
from dtlens.train.loop import action_loss  # noqa: E402

STATE, ACT, K = 11, 3, 20
#: name -> (layers, d_model, heads, d_mlp)
SIZES = {"3 x 128": (3, 128, 4, 512), "paper 12 x 768": (12, 768, 12, 3072)}
QUICK_SIZES = {"2 x 32": (2, 32, 2, 128)}
LR, WEIGHT_DECAY, CLIP = 1e-4, 1e-4, 0.25


def hf_model(layers: int, d: int, heads: int, d_mlp: int, attn: str | None = None):
    from transformers import DecisionTransformerConfig, DecisionTransformerModel
    from transformers.utils import logging

    logging.set_verbosity_error()  # the DT config's GPT-2 bos/eos ids warn about a vocab of 1
    torch.manual_seed(0)
    cfg = DecisionTransformerConfig(
        state_dim=STATE, act_dim=ACT, hidden_size=d, n_layer=layers, n_head=heads, n_inner=d_mlp,
        max_ep_len=1000, activation_function="gelu_new", resid_pdrop=0.2, attn_pdrop=0.1,
        embd_pdrop=0.1, action_tanh=True,
    )  # fmt: skip
    if attn is not None:
        cfg._attn_implementation = attn
    return DecisionTransformerModel(cfg)


def make_batch(n: int, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, K, dtype=torch.long)
    pad = torch.randint(1, K, (n,), generator=g)
    mask[: n // 5][torch.arange(K)[None, :] < pad[: n // 5, None]] = 0  # a fifth left-padded
    m = mask[..., None]
    return Batch(
        states=torch.randn(n, K, STATE, generator=g) * m,
        actions=(torch.rand(n, K, ACT, generator=g) * 2 - 1) * m,
        returns_to_go=torch.randn(n, K, 1, generator=g) * m,
        timesteps=torch.randint(0, 1000, (n, K), generator=g) * mask,
        attention_mask=mask,
    )


def capture_names(layers: int) -> list[str]:
    return [
        f"backbone.blocks.{i}.{hook}"
        for i in range(layers)
        for hook in ("hook_resid_post", "attn.hook_pattern")
    ]


def dtlens_step(dt: DecisionTransformer, batch: Batch, store: dict | None) -> Callable[[], float]:
    opt = torch.optim.AdamW(dt.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    if store is not None:

        def keep(x: torch.Tensor, hook) -> None:
            store[hook.name] = x.detach()

        for name in capture_names(dt.cfg.n_layers):
            dt.add_hook(name, keep)

    def step() -> float:
        if store is not None:
            store.clear()
        opt.zero_grad(set_to_none=True)
        loss = action_loss(dt, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dt.parameters(), CLIP)
        opt.step()
        return float(loss.detach())

    return step


def hf_step(hf, batch: Batch, store: dict | None) -> Callable[[], float]:
    opt = torch.optim.AdamW(hf.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    mask = batch.attention_mask.bool()

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        out = hf(
            states=batch.states,
            actions=batch.actions,
            rewards=None,
            returns_to_go=batch.returns_to_go,
            timesteps=batch.timesteps,
            attention_mask=batch.attention_mask,
            output_hidden_states=store is not None,
            output_attentions=store is not None,
        )
        if store is not None:
            store.clear()
            store["hidden"] = [h.detach() for h in out.hidden_states]
            store["attentions"] = [a.detach() for a in out.attentions]
        loss = ((out.action_preds - batch.actions) ** 2)[mask].mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), CLIP)
        opt.step()
        return float(loss.detach())

    return step


@torch.no_grad()
def prediction_gap(dt: DecisionTransformer, hf, batch: Batch) -> float:
    """Max |dtlens - HF| of the eval-mode action predictions at real steps."""
    dt.eval(), hf.eval()
    ours = dt(batch.states, batch.actions, batch.returns_to_go, batch.timesteps,
              batch.attention_mask)  # fmt: skip
    theirs = hf(states=batch.states, actions=batch.actions, rewards=None,
                returns_to_go=batch.returns_to_go, timesteps=batch.timesteps,
                attention_mask=batch.attention_mask).action_preds  # fmt: skip
    dt.train(), hf.train()
    mask = batch.attention_mask.bool()
    return float((ours - theirs)[mask].abs().max())


def measure(
    name: str, size: tuple[int, int, int, int], batch_size: int, repeats: int, warmup: int
) -> list:
    layers = size[0]
    hf = hf_model(*size)
    hf_eager = hf_model(*size, attn="eager")
    hf_eager.load_state_dict(hf.state_dict())
    dt = DecisionTransformer.from_hf(hf)
    batch = make_batch(batch_size)
    gap = prediction_gap(dt, hf, batch)
    peers = {"hf": hf.config._attn_implementation}
    variants: dict[str, tuple[Callable[[], float], str]] = {}  # label -> (step, peer label)
    hf_label = f"HF ({peers['hf']})"
    # Fresh conversions, not deep copies: a copied DT's dropout hooks would still call the
    # original's Dropout modules (they are closures over them).
    variants["dtlens"] = dtlens_step(DecisionTransformer.from_hf(hf), batch, None), hf_label
    if hasattr(dt, "fast_path"):
        hooked = DecisionTransformer.from_hf(hf)
        hooked.fast_path = False
        label = "dtlens hooked path (fast_path=False)"
        variants[label] = dtlens_step(hooked, batch, None), hf_label
    variants["dtlens + capture hooks"] = dtlens_step(dt, batch, {}), "HF (eager) + capture outputs"
    variants[hf_label] = hf_step(hf.train(), batch, None), hf_label
    if peers["hf"] != "eager":
        variants["HF (eager)"] = hf_step(copy.deepcopy(hf_eager).train(), batch, None), hf_label
    variants["HF (eager) + capture outputs"] = hf_step(hf_eager.train(), batch, {}), hf_label
    print(f"{name}: timing {len(variants)} variants x {repeats} steps", file=sys.stderr)
    times = alternate({k: v[0] for k, v in variants.items()}, repeats=repeats, warmup=warmup)
    rows = []
    for label, (_, peer) in variants.items():
        rows.append({
            "model": name, "layers": layers, "d_model": size[1], "heads": size[2],
            "d_mlp": size[3], "batch": batch_size, "variant": label, "seconds": times[label],
            "peer": peer, "peer_seconds": times[peer], "ratio": times[label] / times[peer],
            "hf_attn": peers["hf"], "fast_path": getattr(dt, "fast_path", None),
            "prediction_gap": gap, "repeats": repeats, "warmup": warmup,
        })  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model, 3 repeats")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--paper-batch", type=int, default=8, help="0 leaves the paper size out")
    parser.add_argument("--paper-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    single_thread(args.threads)
    if args.quick:
        plan = [("2 x 32", QUICK_SIZES["2 x 32"], 8, 3, 2)]
    else:
        plan = [("3 x 128", SIZES["3 x 128"], args.batch, args.repeats, 2)]
        if args.paper_batch > 0:
            plan.append(
                (
                    "paper 12 x 768",
                    SIZES["paper 12 x 768"],
                    args.paper_batch,
                    args.paper_repeats,
                    1,
                )
            )
    rows = [row for name, size, b, r, w in plan for row in measure(name, size, b, r, w)]
    print_table(rows)
    return rows


def print_table(rows: list[dict]) -> None:
    r0 = rows[0]
    print(
        f"\ntraining step (train mode, dropout 0.2/0.1/0.1, AdamW, clip {CLIP}), K={K} "
        f"({3 * K} tokens), state {STATE}, act {ACT}; HF attention: {r0['hf_attn']}; dtlens "
        f"fast_path: {r0['fast_path']}; median of the repeats after the warm-up steps, variants "
        f"round-robin; eval predictions dtlens vs HF max |diff| "
        f"{max(r['prediction_gap'] for r in rows):.1e}\n{machine_line()}\n"
    )
    headers = [
        "model",
        "batch",
        "warm-up + repeats",
        "variant",
        "step (ms)",
        "peer",
        "ratio to peer",
    ]
    cells = [
        [
            r["model"],
            r["batch"],
            f"{r['warmup']} + {r['repeats']}",
            r["variant"],
            f"{1e3 * r['seconds']:.1f}",
            r["peer"],
            f"{r['ratio']:.2f}",
        ]
        for r in rows
    ]
    print(markdown_table(headers, cells))


if __name__ == "__main__":
    main()
