"""The Decision Transformer: (R, s, a) token embeddings around a HookedTransformer backbone.

Every activation has a hook name: the embeddings (`hook_return_embed`, `hook_state_embed`,
`hook_action_embed`, `hook_time_embed`), the interleaved token stream after the embedding norm
(`hook_tokens`), the backbone's own names under `backbone.`, and the head (`hook_action_pred`).
Dropout sits at GPT-2's places (attention pattern, attention and MLP outputs) as permanent hooks,
so the TransformerLens blocks stay unmodified and eval mode is dropout-free.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens import HookedRootModule, HookedTransformer
from transformer_lens.hook_points import HookPoint

from dtlens.errors import DtlensError
from dtlens.model.backbones import UNUSED_BY_DT, backbone_config, load_params, random_backbone
from dtlens.model.config import DTConfig
from dtlens.model.convert import backbone_config_from_hf, convert_gpt2_blocks
from dtlens.model.fast import fused_blocks

TOKEN_TYPES = ("return", "state", "action")


class DecisionTransformer(HookedRootModule):
    """`dt(states, actions, returns_to_go, timesteps, attention_mask) -> action_preds (B, K, A)`."""

    def __init__(self, cfg: DTConfig, backbone: HookedTransformer | None = None, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.embed_return = nn.Linear(1, d)
            self.embed_state = nn.Linear(cfg.state_dim, d)
            self.embed_action = nn.Linear(cfg.act_dim, d)
            self.embed_timestep = nn.Embedding(cfg.max_ep_len, d)
            self.embed_ln = nn.LayerNorm(d)
            self.predict_action = nn.Linear(d, cfg.act_dim)
        self.backbone = random_backbone(cfg.backbone, seed=seed)
        if backbone is not None:
            self.load_backbone(backbone)
        self.embed_dropout = nn.Dropout(cfg.embed_dropout)
        self.resid_dropout = nn.Dropout(cfg.resid_dropout)  # for the fused path

        self.hook_return_embed = HookPoint()  # [batch, step, d_model]
        self.hook_state_embed = HookPoint()  # [batch, step, d_model]
        self.hook_action_embed = HookPoint()  # [batch, step, d_model]
        self.hook_time_embed = HookPoint()  # [batch, step, d_model]
        self.hook_tokens = HookPoint()  # [batch, 3 * step, d_model]
        self.hook_action_pred = HookPoint()  # [batch, step, act_dim]
        self.setup()
        self._add_dropout_hooks()
        #: Use the fused blocks when no hook is attached to the backbone (same numbers).
        self.fast_path = True

    # -- construction --------------------------------------------------------------------------
    def load_backbone(self, backbone: HookedTransformer) -> None:
        """Copy the blocks and final norm of `backbone` (same architecture) into this DT."""
        found = backbone_config(backbone.cfg)
        if found != self.cfg.backbone:
            raise DtlensError(
                f"backbone does not match the DT config: {found} != {self.cfg.backbone}"
            )
        theirs = dict(backbone.named_parameters())
        with torch.no_grad():
            for name, p in self.backbone.named_parameters():
                if not name.startswith(UNUSED_BY_DT):
                    p.copy_(theirs[name])

    def _add_dropout_hooks(self) -> None:
        """Dropout at GPT-2's places, as permanent hooks following their hook point's mode."""

        def drop(p: float):
            return lambda x, hook: F.dropout(x, p, training=hook.training)

        self._dropout_hooks: dict[str, int] = {}
        for i in range(self.cfg.n_layers):
            blk = f"backbone.blocks.{i}"
            for name, p in (
                (f"{blk}.attn.hook_pattern", self.cfg.attn_dropout),
                (f"{blk}.hook_attn_out", self.cfg.resid_dropout),
                (f"{blk}.hook_mlp_out", self.cfg.resid_dropout),
            ):
                self.add_perma_hook(name, drop(p))
                self._dropout_hooks[name] = 1

    # -- forward -------------------------------------------------------------------------------
    def embed(
        self,
        states: Float[Tensor, "batch step state_dim"],
        actions: Float[Tensor, "batch step act_dim"],
        returns_to_go: Float[Tensor, "batch step 1"],
        timesteps: Int[Tensor, "batch step"],
    ) -> Float[Tensor, "batch 3*step d_model"]:
        """Interleave (R_t, s_t, a_t) token embeddings, each plus its timestep embedding."""
        B, K, _ = states.shape
        if timesteps.max() >= self.cfg.max_ep_len or timesteps.min() < 0:
            raise DtlensError(f"timesteps must lie in [0, {self.cfg.max_ep_len})")
        time = self.hook_time_embed(self.embed_timestep(timesteps))
        r = self.hook_return_embed(self.embed_return(returns_to_go)) + time
        s = self.hook_state_embed(self.embed_state(states)) + time
        a = self.hook_action_embed(self.embed_action(actions)) + time
        tokens = torch.stack((r, s, a), dim=2).reshape(B, 3 * K, self.cfg.d_model)
        return self.hook_tokens(self.embed_ln(tokens))

    def forward(
        self,
        states: Float[Tensor, "batch step state_dim"],
        actions: Float[Tensor, "batch step act_dim"],
        returns_to_go: Float[Tensor, "batch step 1"],
        timesteps: Int[Tensor, "batch step"],
        attention_mask: Int[Tensor, "batch step"] | None = None,
    ) -> Float[Tensor, "batch step act_dim"]:
        hidden = self.hidden_states(states, actions, returns_to_go, timesteps, attention_mask)
        pred = self.predict_action(hidden[:, 1::3])  # read out at each state token
        if self.cfg.action_tanh:
            pred = torch.tanh(pred)
        return self.hook_action_pred(pred)

    def hidden_states(
        self,
        states: Float[Tensor, "batch step state_dim"],
        actions: Float[Tensor, "batch step act_dim"],
        returns_to_go: Float[Tensor, "batch step 1"],
        timesteps: Int[Tensor, "batch step"],
        attention_mask: Int[Tensor, "batch step"] | None = None,
    ) -> Float[Tensor, "batch 3*step d_model"]:
        """The backbone's output after its final norm, one row per token."""
        self._check_shapes(states, actions, returns_to_go, timesteps, attention_mask)
        x = self.embed_dropout(self.embed(states, actions, returns_to_go, timesteps))
        mask = None
        if attention_mask is not None:
            mask = attention_mask.to(torch.long).repeat_interleave(3, dim=1)
        if self.fast_path and not self._backbone_hooked():
            return fused_blocks(self.backbone, x, mask, self.cfg.attn_dropout, self.resid_dropout)
        x = self.backbone(x, start_at_layer=0, stop_at_layer=self.cfg.n_layers, attention_mask=mask)
        return self.backbone.ln_final(x)

    def __deepcopy__(self, memo: dict) -> DecisionTransformer:
        """A copy with the same config, weights, mode and fast-path switch and its own dropout
        hooks (copied hooks would still call into this model's hook points); user hooks are not
        carried over."""
        twin = DecisionTransformer(self.cfg)
        twin.load_state_dict(copy.deepcopy(self.state_dict(), memo))
        twin.fast_path = self.fast_path
        return twin.train(self.training).to(self.device)

    @contextmanager
    def hooked_path(self) -> Iterator[None]:
        """Run the backbone through TransformerLens's hooked blocks (e.g. under torch.func)."""
        fast, self.fast_path = self.fast_path, False
        try:
            yield
        finally:
            self.fast_path = fast

    def _backbone_hooked(self) -> bool:
        """Whether any hook besides the permanent dropout ones sits on the backbone."""
        return any(
            hp.bwd_hooks or len(hp.fwd_hooks) > self._dropout_hooks.get(name, 0)
            for name, hp in self.hook_dict.items()
            if name.startswith("backbone.")
        )

    def _check_shapes(self, states, actions, returns_to_go, timesteps, attention_mask) -> None:
        B, K = states.shape[:2]
        want = {
            "states": (states, (B, K, self.cfg.state_dim)),
            "actions": (actions, (B, K, self.cfg.act_dim)),
            "returns_to_go": (returns_to_go, (B, K, 1)),
            "timesteps": (timesteps, (B, K)),
        }
        if attention_mask is not None:
            want["attention_mask"] = (attention_mask, (B, K))
        for name, (t, shape) in want.items():
            if tuple(t.shape) != shape:
                raise DtlensError(f"{name} has shape {tuple(t.shape)}, expected {shape}")

    # -- conveniences --------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.predict_action.weight.device

    def hook_names(self) -> list[str]:
        """The hook points a forward pass reaches (TransformerLens also defines hooks for the
        token embedding and unembedding, which a DT does not use, and optional ones)."""
        fired: list[str] = []

        def record(x, hook):
            fired.append(hook.name)

        with torch.no_grad():
            self.run_with_hooks(
                torch.zeros(1, 1, self.cfg.state_dim, device=self.device),
                torch.zeros(1, 1, self.cfg.act_dim, device=self.device),
                torch.zeros(1, 1, 1, device=self.device),
                torch.zeros(1, 1, dtype=torch.long, device=self.device),
                fwd_hooks=[(lambda name: True, record)],
            )
        return fired

    @classmethod
    @torch.no_grad()
    def from_hf(cls, hf_dt: nn.Module) -> DecisionTransformer:
        """An HF DecisionTransformerModel as a dtlens DecisionTransformer, same predictions.

        HF adds the position-0 embedding `wpe[0]` to every token after the embedding LayerNorm;
        that is a constant, so it is folded into the LayerNorm's bias. The state and return heads
        are not carried over (dtlens trains and probes the action head only).
        """
        if type(hf_dt).__name__ != "DecisionTransformerModel":
            raise DtlensError(
                f"expected an HF DecisionTransformerModel, got {type(hf_dt).__name__}"
            )
        c = hf_dt.config
        bcfg = backbone_config_from_hf(c)
        cfg = DTConfig(
            state_dim=c.state_dim,
            act_dim=c.act_dim,
            backbone=bcfg,
            max_ep_len=c.max_ep_len,
            resid_dropout=c.resid_pdrop,
            attn_dropout=c.attn_pdrop,
            embed_dropout=c.embd_pdrop,
            action_tanh=c.action_tanh,
        )
        dt = cls(cfg)
        sd = {k: v.detach().float() for k, v in hf_dt.encoder.state_dict().items()}
        blocks = convert_gpt2_blocks(sd, bcfg)
        own = {k: v.detach().clone() for k, v in dt.backbone.named_parameters() if k not in blocks}
        load_params(dt.backbone, blocks | own, "HF DT")
        for name in ("embed_return", "embed_state", "embed_action", "embed_timestep", "embed_ln"):
            getattr(dt, name).load_state_dict(getattr(hf_dt, name).state_dict())
        dt.embed_ln.bias += sd["wpe.weight"][0]
        dt.predict_action.load_state_dict(hf_dt.predict_action[0].state_dict())
        return dt
