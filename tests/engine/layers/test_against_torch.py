"""Embedding, GRU and TimeDistributed(Dense) against PyTorch, with PyTorch's weights mapped
into dlrun's layouts: outputs (float32 ``predict``) and the gradients of ``sum(y * c)``
with respect to the input and every weight (float64 plans).

PyTorch is not installed for the tests: its results are a fixture written by
``make_torch_refs.py`` (run with a Python that has PyTorch) and committed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import dlrun as dl
from dlrun.engine.core.graph import Parameter, Placeholder, apply
from dlrun.engine.core.plan import Plan
from dlrun.ops import Spec

L = dl.layers
REFS = Path(__file__).parent / "data" / "torch_refs.npz"
TOL = {"rtol": 1e-5, "atol": 1e-6}


@pytest.fixture(scope="module")
def torch_refs():
    with np.load(REFS) as refs:
        return {k: refs[k] for k in refs.files}


def outputs_and_grads(make, x, weights, c):
    """(y, dx or None, [dW...]) of ``make(dtype='float64')`` with ``weights``: the output
    for ``x`` and the gradients of sum(y * c), through a plan."""
    layer = make(dtype="float64")
    layer.ensure_built(x.shape[1:])
    layer.set_weights(weights)
    floating = x.dtype.kind == "f"
    xt = Parameter(x.copy(), "x") if floating else Placeholder(Spec(x.shape, np.int32))
    y = layer.call(xt, training=True)
    ct = Placeholder(Spec((c.size, 1), np.float64))
    loss = apply("sum", apply("matmul", apply("reshape", y, shape=(1, -1)), ct))
    plan = Plan([ct] + ([] if floating else [xt]), [y], layer.weights + [xt] * floating,
                loss=loss)
    plan.feed[ct][...] = c.reshape(-1, 1)
    if not floating:
        plan.feed[xt][...] = x
    plan.run()
    return (plan.value(y).copy(), plan.grad(xt).copy() if floating else None,
            [plan.grad(p).copy() for p in layer.weights])


def check(make, refs: dict, case: str, x, weights: list, torch_grads: list) -> None:
    """The float32 model's outputs and the float64 plan's gradients against PyTorch's."""
    model = dl.Sequential([make(input_shape=x.shape[1:])])
    model.set_weights(weights)
    np.testing.assert_allclose(model.predict(x), refs[f"{case}_y"], **TOL)
    y, dx, dws = outputs_and_grads(make, x, weights, refs[f"{case}_c"])
    np.testing.assert_allclose(y, refs[f"{case}_y"], **TOL)
    if dx is not None:
        np.testing.assert_allclose(dx, refs[f"{case}_dx"], **TOL)
    for got, want in zip(dws, torch_grads):
        np.testing.assert_allclose(got, want, **TOL)


def test_embedding(torch_refs):
    r = torch_refs
    x = r["embedding_x"].astype(np.int32)
    assert len(np.unique(x)) < x.size                       # a repeated index adds twice
    check(lambda **kw: L.Embedding(7, 3, **kw), r, "embedding", x, [r["embedding_weight"]],
          [r["embedding_dweight"]])


def zrh(a):
    """PyTorch's gate blocks (r, z, n) along axis 0 in Keras' order (z, r, h); its own
    inverse."""
    r, z, n = np.split(a, 3, axis=0)
    return np.concatenate([z, r, n], axis=0)


def test_gru(torch_refs):
    r = torch_refs
    # dlrun (Keras): W (in, 3u), U (u, 3u), b (2, 3u) = (input bias, recurrent bias)
    weights = [zrh(r["gru_weight_ih_l0"]).T, zrh(r["gru_weight_hh_l0"]).T,
               np.stack([zrh(r["gru_bias_ih_l0"]), zrh(r["gru_bias_hh_l0"])])]
    grads = [zrh(r["gru_dweight_ih_l0"]).T, zrh(r["gru_dweight_hh_l0"]).T,
             np.stack([zrh(r["gru_dbias_ih_l0"]), zrh(r["gru_dbias_hh_l0"])])]
    check(lambda **kw: L.GRU(4, return_sequences=True, **kw), r, "gru", r["gru_x"],
          weights, grads)


def test_time_distributed_dense(torch_refs):
    r = torch_refs
    dense = {"class_name": "Dense", "config": {"units": 2}}
    check(lambda **kw: L.TimeDistributed(dense, **kw), r, "linear", r["linear_x"],
          [r["linear_weight"].T, r["linear_bias"]], [r["linear_dweight"].T, r["linear_dbias"]])
