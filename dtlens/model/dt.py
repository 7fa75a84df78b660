"""The Decision Transformer: (R, s, a) token embeddings around a HookedTransformer backbone.

Every activation has a hook name: the embeddings (`hook_return_embed`, `hook_state_embed`,
`hook_action_embed`, `hook_time_embed`), the interleaved token stream after the embedding norm
(`hook_tokens`; with `time_embed="after_norm"` the time embedding is in it), the backbone's own
names under `backbone.`, and the head (`hook_action_pred`).
Dropout sits at GPT-2's places (attention pattern, attention and MLP outputs) as permanent hooks,
so the TransformerLens blocks stay unmodified and eval mode is dropout-free. So does the paper's
released padding (`DTConfig.padding`): a permanent hook on each `attn.hook_attn_scores`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from dtlens.errors import DtlensError
from dtlens.model.backbones import UNUSED_BY_DT, Backbone, load_params, random_backbone
from dtlens.model.config import DTConfig
from dtlens.model.convert import backbone_config_from_hf, convert_gpt2_blocks
from dtlens.model.fast import fused_blocks
from dtlens.model.padding import released_scores

TOKEN_TYPES = ("return", "state", "action")


class TiedActionHead(nn.Module):
    """The released `--share_input_output_proj` head (`decision_transformer.py`: `F.linear(x,
    self.embed_action.weight.t())`): the action embedding's weight, transposed, and no bias."""

    bias = None

    def __init__(self, embed_weight: Callable[[], Tensor]):
        super().__init__()
        self.embed_weight = embed_weight  # a getter: the weight is the embedding's, not a copy

    @property
    def weight(self) -> Float[Tensor, "act_dim d_model"]:
        return self.embed_weight().T

    def forward(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... act_dim"]:
        return F.linear(x, self.weight)


class DecisionTransformer(HookedRootModule):
    """`dt(states, actions, returns_to_go, timesteps, attention_mask) -> action_preds (B, K, A)`."""

    def __init__(self, cfg: DTConfig, backbone: Backbone | None = None, seed: int = 0):
        """Built once: the DT's own layers (`cfg.dt_init`) and the backbone module of
        `cfg.backbone` are initialised from `seed` (the backbone by HF GPT-2's init), then
        `backbone`'s weights, if given, are loaded into the backbone."""
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
            if cfg.tie_action_head:
                self.predict_action = TiedActionHead(lambda: self.embed_action.weight)
            else:
                self.predict_action = nn.Linear(d, cfg.act_dim)
            if cfg.dt_init == "gpt2":
                self._init_gpt2_own_layers()
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
        self._own_hooks: dict[str, int] = {}
        self._add_dropout_hooks()
        #: The key mask of the forward pass in progress, read by the released-padding hooks.
        self._key_mask: Tensor | None = None
        if cfg.padding == "released":
            self._add_released_padding_hooks()
        #: Use the fused blocks when no hook is attached to the backbone (same numbers).
        self.fast_path = True

    # -- construction --------------------------------------------------------------------------
    def load_backbone(self, backbone: Backbone) -> None:
        """Load the blocks and final norm of `backbone` (same architecture) into this DT."""
        if backbone.cfg != self.cfg.backbone:
            raise DtlensError(
                f"backbone does not match the DT config: {backbone.cfg} != {self.cfg.backbone}"
            )
        used = {k: v for k, v in backbone.state.items() if not k.startswith(UNUSED_BY_DT)}
        own = {
            k: p.detach() for k, p in self.backbone.named_parameters() if k.startswith(UNUSED_BY_DT)
        }
        load_params(self.backbone, used | own, "backbone")

    @torch.no_grad()
    def _init_gpt2_own_layers(self, std: float = 0.02) -> None:
        """HF `DecisionTransformerModel._init_weights` and CORL's `dt.py` on the DT's own layers:
        linear and embedding weights N(0, std), biases 0, the LayerNorm 1 and 0."""
        own = (self.embed_return, self.embed_state, self.embed_action, self.embed_timestep)
        for module in (*own, self.predict_action):
            if isinstance(module, nn.Linear | nn.Embedding):  # a tied head is the embedding's
                module.weight.normal_(0.0, std)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
        self.embed_ln.weight.fill_(1.0)
        self.embed_ln.bias.zero_()

    def _add_dropout_hooks(self) -> None:
        """Dropout at GPT-2's places, as permanent hooks following their hook point's mode."""

        def drop(p: float):
            return lambda x, hook: F.dropout(x, p, training=hook.training)

        for i in range(self.cfg.n_layers):
            blk = f"backbone.blocks.{i}"
            for name, p in (
                (f"{blk}.attn.hook_pattern", self.cfg.attn_dropout),
                (f"{blk}.hook_attn_out", self.cfg.resid_dropout),
                (f"{blk}.hook_mlp_out", self.cfg.resid_dropout),
            ):
                self._add_own_hook(name, drop(p))

    def _add_released_padding_hooks(self) -> None:
        """Mask each block's attention scores as the released GPT-2 does (`dtlens.model.padding`):
        the backbone itself then runs with the causal mask only."""
        for i in range(self.cfg.n_layers):
            self._add_own_hook(
                f"backbone.blocks.{i}.attn.hook_attn_scores",
                lambda scores, hook: released_scores(scores, self._key_mask),
            )

    def _add_own_hook(self, name: str, hook) -> None:
        self.add_perma_hook(name, hook)
        self._own_hooks[name] = self._own_hooks.get(name, 0) + 1

    # -- forward -------------------------------------------------------------------------------
    def embed(
        self,
        states: Float[Tensor, "batch step state_dim"],
        actions: Float[Tensor, "batch step act_dim"],
        returns_to_go: Float[Tensor, "batch step 1"],
        timesteps: Int[Tensor, "batch step"],
    ) -> Float[Tensor, "batch 3*step d_model"]:
        """Interleave (R_t, s_t, a_t) token embeddings, each plus its timestep embedding, and
        normalise them (`time_embed="after_norm"`: the timestep embedding is added after the norm,
        as in the released `decision_transformer.py`)."""
        B, K, _ = states.shape
        if timesteps.max() >= self.cfg.max_ep_len or timesteps.min() < 0:
            raise DtlensError(f"timesteps must lie in [0, {self.cfg.max_ep_len})")
        time = self.hook_time_embed(self.embed_timestep(timesteps))
        r = self.hook_return_embed(self.embed_return(returns_to_go))
        s = self.hook_state_embed(self.embed_state(states))
        a = self.hook_action_embed(self.embed_action(actions))
        before = self.cfg.time_embed == "before_norm"
        if before:
            r, s, a = r + time, s + time, a + time
        tokens = self.embed_ln(torch.stack((r, s, a), dim=2).reshape(B, 3 * K, self.cfg.d_model))
        if not before:
            tokens = tokens + time.repeat_interleave(3, dim=1)
        return self.hook_tokens(tokens)

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
        released = self.cfg.padding == "released"
        # The fused kernels are GPT-2's blocks; other decoder families run TransformerLens's.
        if self.fast_path and not self.cfg.backbone.arch and not self._backbone_hooked():
            return fused_blocks(
                self.backbone, x, mask, self.cfg.attn_dropout, self.resid_dropout, released
            )
        if released:  # the padding goes in through the hooks on the attention scores
            self._key_mask, mask = mask, None
        x = self.backbone(x, start_at_layer=0, stop_at_layer=self.cfg.n_layers, attention_mask=mask)
        return self.backbone.ln_final(x)

    def _apply(self, fn, *args, **kwargs):
        """Moves and casts (`.to`, `.cuda`, ...) also update the backbone's `cfg.device`:
        TransformerLens moves the residual stream to it before every block."""
        out = super()._apply(fn, *args, **kwargs)
        self.backbone.cfg.device = self.device
        return out

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
        """Whether any hook besides this model's permanent ones sits on the backbone."""
        return any(
            hp.bwd_hooks or len(hp.fwd_hooks) > self._own_hooks.get(name, 0)
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
        return self.embed_state.weight.device

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
        sd = {k: v.detach().float() for k, v in hf_dt.encoder.state_dict().items()}
        dt = cls(cfg, backbone=Backbone(bcfg, convert_gpt2_blocks(sd, bcfg)))
        for name in ("embed_return", "embed_state", "embed_action", "embed_timestep", "embed_ln"):
            getattr(dt, name).load_state_dict(getattr(hf_dt, name).state_dict())
        dt.embed_ln.bias += sd["wpe.weight"][0]
        dt.predict_action.load_state_dict(hf_dt.predict_action[0].state_dict())
        return dt

    @classmethod
    @torch.no_grad()
    def from_released(cls, state_dict: dict[str, Tensor], cfg: DTConfig) -> DecisionTransformer:
        """The paper's released DecisionTransformer (can-wikipedia-help-offline-rl/
        decision_transformer/models/decision_transformer.py), from its `state_dict`, as a dtlens
        DT of `cfg`.

        For the released predictions give `cfg` the released layout (`time_embed="after_norm"`,
        `padding="released"`, `tie_action_head` as trained with `--share_input_output_proj`) and,
        after a block replacement, the donor block in `cfg.backbone.blocks`. The released GPT-2
        adds no position embedding; the state and return heads are not carried over.
        """
        sd = {k.removeprefix("transformer."): v.detach().float() for k, v in state_dict.items()}
        dt = cls(cfg, backbone=Backbone(cfg.backbone, convert_gpt2_blocks(sd, cfg.backbone)))
        for name in ("embed_return", "embed_state", "embed_action", "embed_timestep", "embed_ln"):
            load_params(getattr(dt, name), _prefixed(sd, name), f"released DT {name}")
        if not cfg.tie_action_head:
            load_params(dt.predict_action, _prefixed(sd, "predict_action.0"), "released DT head")
        return dt


def _prefixed(sd: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of `sd` under `prefix.`, with the prefix removed."""
    return {k.removeprefix(prefix + "."): v for k, v in sd.items() if k.startswith(prefix + ".")}
