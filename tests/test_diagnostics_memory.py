"""Peak memory of the diagnostics does not grow with the number of layers they compare, and the
streamed paths give the numbers of the whole-array ones."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import xarray as xr

from dtlens.capture import load_capture, save_capture
from dtlens.diagnostics import cka as cka_module
from dtlens.diagnostics.analyses.cka import TYPES, VARIANTS, layer_cka, row_mask
from dtlens.diagnostics.cka import LazyLayers, cka_matrix
from dtlens.model.dt import TOKEN_TYPES

SAMPLES, STEPS, D = 40, 4, 24


def fake_capture(n_layers: int, seed: int) -> xr.Dataset:
    """A capture's layout (tokens, resid_post, valid, token_type / timestep) with random values;
    sample 0's first two steps are padding."""
    rs = np.random.RandomState(seed)
    positions = np.arange(3 * STEPS)
    valid = np.ones((SAMPLES, 3 * STEPS), bool)
    valid[0, :6] = False
    return xr.Dataset(
        {
            "tokens": (
                ("sample", "position", "d_model"),
                rs.randn(SAMPLES, 3 * STEPS, D).astype(np.float32),
            ),
            "resid_post": (
                ("sample", "layer", "position", "d_model"),
                rs.randn(SAMPLES, n_layers, 3 * STEPS, D).astype(np.float32),
            ),
            "valid": (("sample", "position"), valid),
        },
        coords={
            "sample": np.arange(SAMPLES),
            "layer": np.arange(n_layers),
            "position": positions,
            "token_type": ("position", np.array(TOKEN_TYPES)[positions % 3]),
            "timestep": ("position", positions // 3),
        },
        attrs={"probe_hash": "same", "samples": SAMPLES},
    )


@pytest.mark.slow
def test_lazy_layer_cka_equals_the_whole_array_path(tmp_path):
    """Captures read layer by layer from disk give the CKA of the in-memory stacks."""
    a, b = fake_capture(3, seed=0), fake_capture(3, seed=1)
    save_capture(a, tmp_path / "a.nc")
    save_capture(b, tmp_path / "b.nc")
    with load_capture(tmp_path / "a.nc") as la, load_capture(tmp_path / "b.nc") as lb:
        ds = layer_cka(la, lb, debiased=True, paper_variant=True)
    stack = {
        name: xr.concat([side["tokens"].expand_dims(layer=[-1]), side["resid_post"]], dim="layer")
        .transpose("layer", "sample", "position", "d_model")
        .values
        for name, side in (("a", a), ("b", b))
    }
    for variant in VARIANTS:
        for token_type in TYPES:
            mask = row_mask(a, variant, token_type)
            expected = cka_matrix(
                [x[mask] for x in stack["a"]],
                [y[mask] for y in stack["b"]],
                debiased=True,
            )
            got = ds["cka"].sel(variant=variant, token_type=token_type).values
            np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert np.isfinite(ds["cka"].sel(variant="paper_code", token_type="state")).all()


def test_lazy_layers_read_again_what_is_not_kept(monkeypatch):
    monkeypatch.setattr(cka_module, "LAYER_MEMORY", 2 * 10 * 3 * 8)  # two layers kept
    layers = [np.full((10, 3), float(i)) for i in range(4)]
    reads: list[int] = []
    lazy = LazyLayers(lambda i: reads.append(i) or layers[i], 4, (10, 3))
    assert [float(x[0, 0]) for x in lazy] == [0.0, 1.0, 2.0, 3.0]
    assert [float(x[0, 0]) for x in lazy] == [0.0, 1.0, 2.0, 3.0]
    assert reads == [0, 1, 2, 3, 2, 3]
    bad = LazyLayers(lambda i: np.zeros((9, 3)), 1, (10, 3))
    with pytest.raises(cka_module.DtlensError, match="shape"):
        bad[0]


@pytest.mark.slow
def test_layer_cka_peak_memory_does_not_grow_with_layers(tmp_path, monkeypatch):
    """Captures of 4 and 16 layers on disk: layer CKA reads them a layer at a time, keeping at
    most `LAYER_MEMORY` bytes of layers and `GRAM_MEMORY` of Grams; the whole stacks would be 4x
    larger at 16 layers."""
    rows = SAMPLES * 3 * STEPS
    monkeypatch.setattr(cka_module, "LAYER_MEMORY", 2 * rows * D * 4)
    monkeypatch.setattr(cka_module, "GRAM_MEMORY", 3 * 8 * (rows // 3) ** 2)

    def peak(n_layers: int) -> int:
        paths = []
        for seed in (0, 1):
            paths.append(
                save_capture(fake_capture(n_layers, seed), tmp_path / f"{n_layers}-{seed}.nc")
            )
        with load_capture(paths[0]) as a, load_capture(paths[1]) as b:
            tracemalloc.start()
            layer_cka(a, b)
            used = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        return used

    layer_bytes = SAMPLES * 3 * STEPS * D * 4
    small, large = peak(4), peak(16)
    assert large < small + 4 * layer_bytes  # a whole 16-layer stack would add 2 x 12 layers


@pytest.mark.slow
def test_attention_distance_layer_by_layer_equals_the_whole_capture(tiny_run):
    """The run-level distances, computed a layer at a time, are those of the whole pattern."""
    from dtlens.capture import capture
    from dtlens.diagnostics.analyses.attention import attention_distances
    from dtlens.diagnostics.attention import attention_distance

    ds = attention_distances(tiny_run, epochs=[0, 2], context_len=4)
    for epoch in (0, 2):
        cap = capture(tiny_run.load_model(epoch), tiny_run.windows(None, 4), ["pattern"])
        whole = attention_distance(cap["pattern"].values, query_mask=cap["valid"].values[:, None])
        got = ds["distance"].sel(epoch=epoch).values
        np.testing.assert_allclose(got, np.nanmean(whole, axis=0), rtol=1e-12)
