"""Backbones: a spec and its weights (`Backbone`), and the one function that builds the module.

Data flows one way, as in nanoGPT and TransformerLens: a source gives a `BackboneConfig` and a
state dict in TransformerLens names (`dtlens.model.inits`), block surgery combines two of them
(`dtlens.model.surgery`), and `new_backbone` builds the HookedTransformer that loads them.
`random` follows HF GPT-2's initialisation; `gpt2` / `imagegpt` come from a local HF directory or
the HF cache (never the network); embedded backbones and dtlens checkpoints come from safetensors.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.components import TransformerBlock

import dtlens.model.activations  # noqa: F401  (registers quick_gelu before any config is built)
from dtlens.errors import DtlensError
from dtlens.io import load_tensors, save_tensors
from dtlens.model.config import BLOCK_FIELDS, BackboneConfig, BlockConfig

HF_NAMES = {"gpt2": "gpt2", "imagegpt": "openai/imagegpt-small"}

# Parameters of a HookedTransformer that a Decision Transformer never uses.
UNUSED_BY_DT = ("embed.", "pos_embed.", "unembed.")
#: The fields a BackboneConfig and a HookedTransformerConfig share, under the same names.
SHARED_FIELDS = ("n_layers", "d_model", "n_heads", "d_mlp", "act_fn", "normalization_type", "eps")
#: TransformerLens fields in which other decoder families differ from GPT-2 (`BackboneConfig.arch`;
#: n_ctx only with rotary embeddings, where it bounds the positions).
ARCH_FIELDS = (
    "original_architecture", "d_head", "n_ctx", "positional_embedding_type", "rotary_dim",
    "rotary_base", "rotary_adjacent_pairs", "use_NTK_by_parts_rope", "NTK_original_ctx_len",
    "NTK_by_parts_low_freq_factor", "NTK_by_parts_high_freq_factor", "NTK_by_parts_factor",
    "parallel_attn_mlp", "gated_mlp", "n_key_value_heads", "final_rms", "use_attn_scale",
    "use_local_attn", "window_size", "attn_types", "scale_attn_by_inverse_layer_idx",
)  # fmt: skip


def tl_config(cfg: BackboneConfig, d_vocab: int = 1, n_ctx: int = 1) -> HookedTransformerConfig:
    """The TransformerLens config: GPT-2's layout, or another family's where `cfg.arch` says.
    A DT never uses the token/position embeddings or the unembedding, so they get the smallest
    possible size (d_vocab=1, n_ctx=1; rotary families keep their n_ctx, which bounds positions)."""
    if unknown := sorted(set(dict(cfg.arch)) - set(ARCH_FIELDS)):
        raise DtlensError(f"unknown backbone architecture fields {unknown}")
    gpt2 = dict(
        d_head=cfg.d_head,
        d_vocab=d_vocab,
        n_ctx=n_ctx,
        positional_embedding_type="standard",
        original_architecture="GPT2LMHeadModel",
    )
    return HookedTransformerConfig(
        **{name: getattr(cfg, name) for name in SHARED_FIELDS},
        **(gpt2 | dict(cfg.arch)),
        default_prepend_bos=False,
        init_weights=False,
        device="cpu",
        dtype=torch.float32,
    )


def arch_fields(cfg: HookedTransformerConfig) -> dict:
    """The ARCH_FIELDS in which `cfg` differs from GPT-2's layout of the same size."""
    shared = {name: getattr(cfg, name) for name in SHARED_FIELDS}
    gpt2 = tl_config(BackboneConfig(**shared), d_vocab=cfg.d_vocab, n_ctx=cfg.n_ctx)
    arch = {k: getattr(cfg, k) for k in ARCH_FIELDS if getattr(cfg, k) != getattr(gpt2, k)}
    if cfg.positional_embedding_type == "rotary":
        arch["n_ctx"] = cfg.n_ctx
    return arch


def backbone_config(model: HookedTransformer | HookedTransformerConfig) -> BackboneConfig:
    """The BackboneConfig of a backbone (its mixed blocks included) or of a TransformerLens
    config (uniform)."""
    if isinstance(model, HookedTransformerConfig):
        shared = {name: getattr(model, name) for name in SHARED_FIELDS}
        return BackboneConfig(**shared, arch=arch_fields(model))
    blocks = [
        BlockConfig(i, **{f: getattr(block.cfg, f) for f in BLOCK_FIELDS})
        for i, block in enumerate(model.blocks)
    ]
    return dataclasses.replace(backbone_config(model.cfg), blocks=tuple(blocks))


def new_backbone(cfg: BackboneConfig, d_vocab: int = 1, n_ctx: int = 1) -> HookedTransformer:
    """The one way to build a backbone module: an uninitialised HookedTransformer (weights are
    torch.empty) of `cfg`, a mixed backbone's own blocks included."""
    model = HookedTransformer(tl_config(cfg, d_vocab=d_vocab, n_ctx=n_ctx), move_to_device=False)
    if cfg.blocks:
        # TransformerLens builds uniform blocks; a mixed backbone's own blocks replace them here,
        # before any weight is in, and setup() registers their hook points under their names.
        for own in cfg.blocks:
            tl = tl_config(cfg.block(own.index), d_vocab=d_vocab, n_ctx=n_ctx)
            model.blocks[own.index] = TransformerBlock(tl, own.index)
        model.setup()
    return model


@dataclass(frozen=True)
class Backbone:
    """A backbone as data: its spec and its weights (TransformerLens names), no module.

    `state` holds every parameter of the module `build` makes: the blocks and final norm, and the
    token/position embeddings and unembedding (`d_vocab`, `n_ctx` give their sizes), which a DT
    does not use.
    """

    cfg: BackboneConfig
    state: dict[str, torch.Tensor]
    d_vocab: int = 1
    n_ctx: int = 1

    def build(self) -> HookedTransformer:
        """The HookedTransformer holding these weights."""
        model = new_backbone(self.cfg, d_vocab=self.d_vocab, n_ctx=self.n_ctx)
        load_params(model, self.state, source="backbone")
        return model


def state_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A module's parameters by name, detached (shared with the module, not copied)."""
    return {name: p.detach() for name, p in module.named_parameters()}


@torch.no_grad()
def init_gpt2_(model: HookedTransformer, std: float = 0.02) -> HookedTransformer:
    """HF GPT-2's initialisation: weights N(0, std), biases 0, norms 1, and the residual
    projections (attention W_O, MLP W_out) N(0, std / sqrt(2 n_layers))."""
    resid_std = std / math.sqrt(2 * model.cfg.n_layers)
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if ".ln" in name or name.startswith("ln_final"):
            p.fill_(1.0 if leaf == "w" else 0.0)
        elif leaf.lstrip("_").startswith("b_"):  # grouped-query keys/values: _b_K, _b_V
            p.zero_()
        elif leaf in ("W_O", "W_out"):
            p.normal_(0.0, resid_std)
        else:
            p.normal_(0.0, std)
    return model


def random_backbone(cfg: BackboneConfig, seed: int = 0) -> HookedTransformer:
    """A randomly initialised backbone module (HF GPT-2 init), reproducible from `seed`."""
    model = new_backbone(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        init_gpt2_(model)
    return model


def random_source(cfg: BackboneConfig, seed: int = 0) -> Backbone:
    """The `random` init as (spec, weights): `random_backbone`'s parameters."""
    return Backbone(cfg, state_of(random_backbone(cfg, seed)))


def save_backbone(model: HookedTransformer, path: str | os.PathLike, **meta: object) -> Path:
    """A backbone as one safetensors file; its config and `meta` go in the JSON header."""
    header = {
        "kind": "backbone",
        "backbone": dataclasses.asdict(backbone_config(model)),
        "d_vocab": model.cfg.d_vocab,
        "n_ctx": model.cfg.n_ctx,
        "meta": meta,
    }
    params = dict(model.named_parameters())
    return save_tensors(params, path, metadata={"dtlens": json.dumps(header)})


def read_header(path: str | os.PathLike) -> dict:
    """The dtlens JSON header of a safetensors file (backbone or DT checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise DtlensError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:
        raise DtlensError(f"{path}: not a safetensors file ({e})") from None
    if "dtlens" not in meta:
        raise DtlensError(f"{path}: safetensors file without a dtlens header")
    return json.loads(meta["dtlens"])


def read_backbone_spec(path: str | os.PathLike) -> BackboneConfig:
    """The BackboneConfig of a backbone file or DT checkpoint, from its header alone."""
    return _header_spec(read_header(path), path)


def _header_spec(header: dict, path: str | os.PathLike) -> BackboneConfig:
    if header["kind"] == "dt":
        return BackboneConfig(**header["config"]["backbone"])
    if header["kind"] != "backbone":
        raise DtlensError(f"{path}: unknown dtlens checkpoint kind {header['kind']!r}")
    return BackboneConfig(**header["backbone"])


def read_backbone(path: str | os.PathLike) -> Backbone:
    """The backbone of a file written by `save_backbone`, or of a DT checkpoint (its
    `backbone.*` tensors)."""
    header = read_header(path)
    cfg, tensors = _header_spec(header, path), load_tensors(path)
    if header["kind"] == "dt":
        state = {
            k.removeprefix("backbone."): v for k, v in tensors.items() if k.startswith("backbone.")
        }
        return Backbone(cfg, state)
    return Backbone(cfg, tensors, d_vocab=header["d_vocab"], n_ctx=header["n_ctx"])


def load_params(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy `tensors` into `module`'s parameters by name; names and shapes must match exactly."""
    params = dict(module.named_parameters())
    missing, unexpected = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
    if missing or unexpected:
        raise DtlensError(
            f"{source}: parameters do not match the model (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]})"
        )
    with torch.no_grad():
        for name, p in params.items():
            if p.shape != tensors[name].shape:
                raise DtlensError(
                    f"{source}: {name} has shape {tuple(tensors[name].shape)}, "
                    f"the model expects {tuple(p.shape)}"
                )
            p.copy_(tensors[name])


@contextmanager
def quiet_hf() -> Iterator[None]:
    """No transformers progress bars ("Loading weights", one per load) while inside: they would
    fill `reproduce`'s log; dtlens reports its own progress."""
    from transformers.utils import logging

    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()


def hf_config(name_or_path: str):
    """The HF config of a model in a local directory or the HF cache, offline; GPT-2 or ImageGPT."""
    from transformers import AutoConfig

    ref = HF_NAMES.get(name_or_path, name_or_path)
    try:
        config = AutoConfig.from_pretrained(ref, local_files_only=True)
    except OSError:
        raise DtlensError(
            f"{name_or_path}: no local copy found. Download {ref!r} on a machine with network "
            f"(huggingface-cli download {ref}) and pass its directory, or copy the HF cache into "
            f"$HF_HOME ({os.environ.get('HF_HOME', '~/.cache/huggingface')})"
        ) from None
    if config.model_type not in ("gpt2", "imagegpt"):
        raise DtlensError(
            f"{name_or_path}: unsupported architecture {config.model_type!r} "
            f"(supported: ['gpt2', 'imagegpt'])"
        )
    return config


def load_hf_pretrained(name_or_path: str):
    """Load an HF GPT-2 or ImageGPT model from a local directory or the HF cache, offline."""
    from transformers import GPT2Model, ImageGPTModel

    config = hf_config(name_or_path)
    model_cls = {"gpt2": GPT2Model, "imagegpt": ImageGPTModel}[config.model_type]
    with quiet_hf():
        return model_cls.from_pretrained(
            HF_NAMES.get(name_or_path, name_or_path), local_files_only=True
        )
