"""Weight change between two checkpoints (the paper's analysis 3), per parameter tensor.

For each tensor, a = before and b = after (float64):

- `l2` = ||a - b||, `norm_before` = ||a||, `norm_after` = ||b||, `dot` = <a, b>, `numel`, and
  the squares `l2_sq`, `norm_before_sq`, `norm_after_sq`, which with `dot` add up over tensors;
- `relative` = ||a - b|| / ||a||; for a tensor that is zero before (biases at init, flagged
  `zero_init`) it is the absolute change ||a - b||, never inf or NaN;
- `cosine` = <a, b> / (||a|| ||b||); 1 for equal tensors (zero ones included), else 0 if either
  is zero.

Any two modules or state dicts with the same parameter names and shapes compare (two DTs, two
bare TransformerLens backbones, two HF GPT-2s). Coordinates along `tensor`: `block` (-1 outside
the blocks), `kind` (attention, mlp, norm, embedding, head) and `part` (backbone, embeddings,
head) for a DT's names; any other name, a bare backbone's or an HF model's included, is
(-1, "other", "other"), so only DTs get per-block breakdowns. Skipped: the parameters a DT's
backbone never uses (token/position embeddings, unembedding), TransformerLens's attention buffers,
and the buffers of a module given as such (so a module compares with its own state dict).
`aggregate` combines tensors exactly: the result equals the statistics of the concatenated vectors.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import xarray as xr
from jaxtyping import Float
from torch import Tensor, nn

import dtlens
from dtlens.errors import DtlensError
from dtlens.model.backbones import UNUSED_BY_DT

SUMS = ("l2_sq", "norm_before_sq", "norm_after_sq", "dot")  # ||a - b||^2, ||a||^2, ||b||^2, <a, b>
ADDITIVE = (*SUMS, "numel")
BLOCK = re.compile(r"^backbone\.blocks\.(\d+)\.(attn|mlp|ln\d)\.")
SKIP = tuple(f"backbone.{prefix}" for prefix in UNUSED_BY_DT)
BUFFERS = re.compile(r"\.attn\.(mask|IGNORE|rotary_sin|rotary_cos)$")  # TransformerLens's
KINDS = ("attention", "mlp", "norm", "embedding", "head", "other")
SHOWN = 3  # mismatched names an error lists
StateDict = Mapping[str, Tensor]


def classify(name: str) -> tuple[int, str, str]:
    """(block, kind, part) of a DT parameter name; (-1, "other", "other") for any other name."""
    if m := BLOCK.match(name):
        kind = {"attn": "attention", "mlp": "mlp"}.get(m.group(2), "norm")
        return int(m.group(1)), kind, "backbone"
    if name.startswith("backbone.ln_final."):
        return -1, "norm", "backbone"
    if name.startswith("embed_ln."):
        return -1, "norm", "embeddings"
    if name.startswith("embed_"):
        return -1, "embedding", "embeddings"
    if name.startswith("predict_action."):
        return -1, "head", "head"
    return -1, "other", "other"


def _tensors(x: StateDict | nn.Module) -> tuple[dict[str, Tensor], set[str]]:
    """The named tensors of `x` (a module's parameters, tied ones under each name, or a state
    dict's entries) and the names known to be buffers (a module's)."""
    if isinstance(x, nn.Module):
        buffers = {n for n, _ in x.named_buffers(remove_duplicate=False)}
        return dict(x.named_parameters(remove_duplicate=False)), buffers
    return dict(x), set()


def _listed(names: Sequence[str]) -> str:
    more = f" (+{len(names) - SHOWN} more)" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def _check_same(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    """One error line naming the first few names found on one side only or differing in shape."""
    only_a, only_b = [k for k in a if k not in b], [k for k in b if k not in a]
    shapes = [
        f"{k}: shape {tuple(a[k].shape)} vs {tuple(b[k].shape)}"
        for k in a
        if k in b and a[k].shape != b[k].shape
    ]
    problems = [f"only in before: {_listed(only_a)}"] if only_a else []
    problems += [f"only in after: {_listed(only_b)}"] if only_b else []
    problems += [_listed(shapes)] if shapes else []
    if problems:
        raise DtlensError("the models have different parameters: " + "; ".join(problems))
    if not a:
        raise DtlensError("the models have no parameters to compare")


def _skipped(name: str) -> bool:
    return name.startswith(SKIP) or bool(BUFFERS.search(name))


def _with_ratios(ds: xr.Dataset) -> xr.Dataset:
    """Add l2, norms, relative, cosine and zero_init from the additive statistics."""
    l2, na, nb = (np.sqrt(ds[k]) for k in ("l2_sq", "norm_before_sq", "norm_after_sq"))
    zero = na == 0
    both = (na > 0) & (nb > 0)
    return ds.assign(
        l2=l2,
        norm_before=na,
        norm_after=nb,
        relative=xr.where(zero, l2, l2 / na.where(~zero, 1.0)),
        cosine=xr.where(l2 == 0, 1.0, xr.where(both, ds["dot"] / (na * nb).where(both, 1.0), 0.0)),
        zero_init=zero,
    )


def _sums(before: Tensor, after: Tensor) -> Float[Tensor, "4"]:
    """||after - before||^2, ||before||^2, ||after||^2 and <before, after>, in float64 (`SUMS`)."""
    x, y = before.detach().double().flatten(), after.detach().double().flatten()
    return torch.stack([(x - y) @ (x - y), x @ x, y @ y, x @ y])


@torch.no_grad()
def weight_change(before: StateDict | nn.Module, after: StateDict | nn.Module) -> xr.Dataset:
    """Per-tensor change from `before` to `after`: two modules or state dicts with the same
    parameter names and shapes (DTs, backbones, HF models, in any mix of module and state dict)."""
    (a, buffers_a), (b, buffers_b) = _tensors(before), _tensors(after)
    drop = buffers_a | buffers_b
    a, b = ({k: v for k, v in x.items() if k not in drop and not _skipped(k)} for x in (a, b))
    _check_same(a, b)
    sums = torch.stack([_sums(a[k], b[k]) for k in a])  # float64 copies of one tensor at a time
    block, kind, part = zip(*(classify(name) for name in a), strict=True)
    ds = xr.Dataset(
        {k: ("tensor", sums[:, i].cpu().numpy()) for i, k in enumerate(SUMS)}
        | {"numel": ("tensor", np.array([x.numel() for x in a.values()]))},
        coords={
            "tensor": list(a),
            "block": ("tensor", list(block)),
            "kind": ("tensor", list(kind)),
            "part": ("tensor", list(part)),
        },
        attrs={"dtlens_version": dtlens.__version__},
    )
    return _with_ratios(ds)


def aggregate(ds: xr.Dataset, by: str = "block") -> xr.Dataset:
    """Combine the tensors of each group of the coordinate `by` (block, kind or part): the
    statistics of each group's concatenated vectors."""
    return _with_ratios(ds[list(ADDITIVE)].groupby(by).sum()).assign_attrs(ds.attrs)
